"""``bench/ahci.py``: the guest script, parsing fio's JSON and the server's counters, medians
and ratios, and the host-driven mode against the real server process (no guest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import ahci as b


def _fio(side: str, iops: float, bw: int, ios: int) -> str:
    other = "write" if side == "read" else "read"
    return json.dumps({"jobs": [{side: {"iops": iops, "bw_bytes": bw, "total_ios": ios},
                                 other: {"iops": 0.0, "bw_bytes": 0, "total_ios": 0}}]}, indent=1)


def test_guest_script_finds_disks_by_pci_function_and_runs_every_job() -> None:
    script = b.guest_script()
    assert f"disk_at {b.OURS_BDF}" in script and f"disk_at {b.PEER_BDF}" in script
    assert "/ata*)" in script  # the disk's path goes through an ATA port of that function
    for job, (args, _, _) in b.JOBS.items():
        assert f"--name={job}" in script and args in script
    assert "--ioengine=libaio --direct=1" in script


def test_parse_results_reads_the_metric_of_each_block() -> None:
    log = "\n".join([
        "BENCH-BEGIN ours randread-4k-qd32 0",
        "fio: some warning",
        _fio("read", 2000.5, 8_000_000, 20005),
        "BENCH-END ours randread-4k-qd32 0\r",
        "BENCH-BEGIN peer seqwrite-1m 0",
        _fio("write", 900.0, 950_000_000, 9000),
        "BENCH-END peer seqwrite-1m 0",
        "BENCH-BEGIN peer seqread-1m 0",
        "not json {",
        "BENCH-END peer seqread-1m 0",
        "BENCH-BEGIN broken",
        "BENCH-END ours randread-4k-qd32 1",
    ])
    out = b.parse_results(log)
    assert out["randread-4k-qd32"]["ours"] == [{"value": 2000.5, "ios": 20005.0}]
    assert out["seqwrite-1m"]["peer"] == [{"value": 950.0, "ios": 9000.0}]
    assert out["seqread-1m"] == {"ours": [], "peer": []}


def test_counters_between_marks_become_per_run_deltas() -> None:
    log = "\n".join([
        "mpqemu stats: messages=10 bar_reads=4 bar_writes=6 inline_reads=0",
        "noise",
        "mpqemu stats: messages=40 bar_reads=14 bar_writes=26 inline_reads=10",
    ])
    stats = b.parse_stats(log)
    assert stats[1] == {"messages": 40, "bar_reads": 14, "bar_writes": 26, "inline_reads": 10}
    marks = [("randread-4k-qd32", "begin", 1_000_000), ("randread-4k-qd32", "end", 3_000_000)]
    deltas = b._accesses(marks, stats)
    assert deltas == {"randread-4k-qd32": [
        {"messages": 30, "bar_reads": 10, "bar_writes": 20, "inline_reads": 10, "cpu_ns": 2_000_000}]}


def test_summarize_medians_ratios_and_accesses_per_io() -> None:
    raw = {
        "results": {
            "randread-4k-qd32": {
                "ours": [{"value": 100.0, "ios": 10.0}, {"value": 300.0, "ios": 30.0}, {"value": 200.0, "ios": 20.0}],
                "peer": [{"value": 400.0, "ios": 40.0}, {"value": 400.0, "ios": 40.0}, {"value": 500.0, "ios": 50.0}],
            },
            "seqread-1m": {"ours": [{"value": 50.0, "ios": 5.0}], "peer": []},
            "seqwrite-1m": {"ours": [], "peer": []},
        },
        "accesses": {"randread-4k-qd32": [{"bar_reads": 5, "bar_writes": 25, "cpu_ns": 2_000_000}]},
        "disks": "ours=/dev/sda",
    }
    s = b.summarize(raw)
    assert (s["ours_iops"], s["peer_iops"], s["ratio"]) == (200.0, 400.0, 0.5)
    assert s["ours_seqread_mbps"] == 50.0 and s["seqread_ratio"] is None and s["peer_seqwrite_mbps"] is None
    row = s["jobs"]["randread-4k-qd32"]
    assert row["ours_accesses_per_io"] == 3.0 and row["ours_server_cpu_us_per_io"] == 200.0
    assert "seqwrite-1m" not in s["jobs"]


@pytest.mark.parametrize("argv", [["--jobs", "nope"], ["--runs", "0"], ["--jobs", ""]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        b.main(argv)
    assert exc.value.code == 2


def test_host_mode_drives_the_real_server(tmp_path: Path) -> None:
    out = b.run_host(seconds=0.5, size_mb=8, workdir=tmp_path, think_us=0.0)
    assert out["ios"] > 0 and out["iops"] > 0
    # each command is issued with PxSACT then PxCI; completions need a handful more
    assert 2.0 < out["accesses_per_io"] < 10.0
    assert {"W PxSACT", "W PxCI", "R IS"} <= set(out["round_trips"])
