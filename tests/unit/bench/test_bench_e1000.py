"""``bench/e1000.py``: parsing the guest's lines, medians and ratios, and the per-access
benchmark against the real server process (no guest, no root)."""

from __future__ import annotations

import pytest

from bench import e1000 as b


def test_parse_log_reads_bench_lines_only() -> None:
    log = "\n".join([
        "noise BENCH ping 0 1 2 3",
        "BENCH ping 0 1000000000 2000000000 2000\r",
        "BENCH tcp 0 3000000000 4000000000 0 12",
        "BENCH tcp 1 3000000000 4000000000 0",
        "BENCH ping 1 x 2 3",
        "BENCH udp 0 1 2 3",
    ])
    assert b.parse_log(log) == {
        "ping": [{"run": 0, "t0": 1_000_000_000, "t1": 2_000_000_000, "received": 2000}],
        "tcp": [{"run": 0, "t0": 3_000_000_000, "t1": 4_000_000_000, "rc": 0, "retrans": 12}],
    }


def test_summarize_medians_and_ratios() -> None:
    modes = {
        "ours": {"pps_runs": [200.0, 240.0, 100.0], "mbps_runs": [10.0, 12.0, 11.0]},
        "peer": {"pps_runs": [4000.0, 4200.0, 3800.0], "mbps_runs": [5.0, 5.5, 6.0]},
    }
    s = b.summarize(modes)
    assert (s["ours_pps"], s["peer_pps"], s["ours_mbps"], s["peer_mbps"]) == (200.0, 4000.0, 11.0, 5.5)
    assert s["ratio"] == pytest.approx(0.05) and s["mbps_ratio"] == pytest.approx(2.0)
    assert s["peer_polled_pps"] is None and s["ratio_polled"] is None


def test_tso_packet_is_what_linux_hands_the_driver() -> None:
    packet = b._tso_packet()
    assert len(packet) == b._TSO_HDR + b._TSO_PAYLOAD
    assert packet[12:14] == b"\x08\x00" and packet[14] == 0x45 and packet[23] == 6
    assert packet[16:18] == b"\x00\x00"  # IPv4 total length left for the device


def test_guest_script_reads_its_parameters_from_the_command_line() -> None:
    script = b.guest_script()
    for key in ("dmbench.runs", "dmbench.count", "dmbench.mib"):
        assert key in script
    assert "BENCH ping" in script and "BENCH tcp" in script


@pytest.mark.parametrize("posted", ["on", "off"])
def test_access_latency_drives_the_real_server(posted: str) -> None:
    # Also checks the device cut every TSO packet into the right number of frames (it
    # raises SystemExit otherwise).
    figures = b.access_latency(5, [f"posted={posted}"])
    assert set(figures) == {"read_status", "write_imc", "write_tdt_tso64k"}
    assert all(value > 0 for value in figures.values())
