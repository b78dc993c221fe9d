"""``bench/e1000.py``: the per-run figures, the bench end to end with fake guests and a fake
sink at its boot seam (ratios with run counts; a run without a figure fails naming the job
and the mode), and the per-access benchmark against the real server process (no guest, no
root)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import common
from bench import e1000 as b
from bench.testing import FakeGuest, finished, framed

PARAMS = b.Params(runs=3, count=2000, mib=20)


def _run(job: str, output: list[str], status: int = 0) -> common.Run:
    return common.Run("ours", job, 0, status, tuple(output), 1.0)


def test_echo_and_tcp_figures_come_from_their_own_run() -> None:
    figure = b.figure(PARAMS)
    assert figure(_run("echo", ["PING 10.0.3.1", "ECHO 1000000000 2000000000 2000"])) == common.Figure(2000.0, 2000)
    tcp = figure(_run("tcp", ["TCP 3000000000 4000000000 12"]))
    assert tcp.value == pytest.approx((20 << 20) / 1e6) and tcp.extra == {"retrans": 12}


@pytest.mark.parametrize(("job", "output", "status", "words"), [
    ("echo", ["ECHO 1000000000 2000000000 1990"], 1, "10 of 2000 echo requests unanswered"),
    ("echo", ["ping: sendto: Network unreachable"], 2, "no ECHO line"),
    ("echo", ["ECHO 5 5 2000"], 0, "clock"),
    ("tcp", ["TCP 3000000000 4000000000 0"], 1, "nc exited with status 1"),
    ("tcp", [], 0, "no TCP line"),
])
def test_a_run_without_a_figure_is_refused(job: str, output: list[str], status: int, words: str) -> None:
    with pytest.raises(common.RunFailed, match=words):
        b.figure(PARAMS)(_run(job, output, status))


def _guest(modes: tuple[str, ...], params: b.Params, broken: dict[str, tuple[str, int, list[str], int]]) -> list[str]:
    rate = {"ours": 2_000_000_000, "peer": 100_000_000, "peer-polled": 1_000_000_000}  # ns per echo run
    lines = [f"DEVMODELS-CHECK bench.ping.{m} PASS" for m in modes] + ["DEVMODELS-CHECK bench.bound PASS"]
    for side, job, run in params.plan(*modes).keys:
        bad = broken.get(side)
        if bad is not None and (job, run) == bad[:2]:
            lines += framed(side, job, run, bad[2], bad[3])
        elif job == "echo":
            lines += framed(side, job, run, [f"ECHO 0 {rate[side] + run} {params.count}"])
        else:
            lines += framed(side, job, run, ["TCP 0 1000000000 0"])
    return [*lines, *finished()]


def _boot(broken: dict[str, tuple[str, int, list[str], int]] | None = None, sink_bytes: int | None = None,
          booted: list[tuple[str, ...]] | None = None, counters: bool = False,
          ) -> Callable[..., contextlib.AbstractContextManager[b.Booted]]:
    @contextlib.contextmanager
    def boot(modes: tuple[str, ...], config: common.GuestConfig, params: b.Params, work: Path,
             image: Any) -> Iterator[b.Booted]:
        assert image == "image"
        if booted is not None:
            booted.append(modes)

        def received(mode: str) -> Callable[[int, float], list[dict[str, Any]]]:
            speed = {"ours": 2, "peer": 1, "peer-polled": 1}[mode]  # ours sends twice as fast

            def wait(count: int, timeout: float) -> list[dict[str, Any]]:
                size = sink_bytes if sink_bytes is not None else params.mib << 20
                return [{"bytes": size, "first_ns": 0, "eof_ns": 1_000_000_000 // speed, "seq": i}
                        for i in range(count)]
            return wait

        sampler = _Counters() if counters else None
        yield b.Booted(FakeGuest(_guest(modes, params, broken or {})), {m: received(m) for m in modes}, sampler)
    return boot


class _Counters:
    """Our server's messages and CPU and QEMU's CPU, as the vfio-user boot samples them: per
    run ours takes 16 messages and 1 ms of server CPU per echo, QEMU 2 ms per echo for ours and
    0.5 ms for the peer."""

    def __init__(self) -> None:
        self.t = {"ours": 0.0, "peer": 0.0}
        self.lost = None

    def __call__(self, side: str, job: str, run: int, edge: str) -> dict[str, float] | None:
        if edge == "end":
            self.t[side] += 1.0
        n = self.t[side] * 2000  # echoes so far (count 2000 per run; tcp runs count alike)
        if side == "ours":
            return {"messages": 16 * n, "bar_reads": 8 * n, "bar_writes": 8 * n, "cpu_ns": 1e6 * n,
                    "qemu_cpu_ns": 2e6 * n}
        return {"qemu_cpu_ns": 5e5 * n}


def _main(argv: list[str], boot: Callable[..., Any]) -> int:
    return b.main(["--access", "0", "--runs", "3", *argv], boot=boot, image=lambda config: "image")


def test_over_vfio_user_ours_and_peer_share_one_guest_with_cpu_per_echo(capsys: pytest.CaptureFixture[str]) -> None:
    booted: list[tuple[str, ...]] = []
    assert _main(["--json", "--path", "vfio-user"], _boot(booted=booted, counters=True)) == 0
    s = json.loads(capsys.readouterr().out)
    assert booted == [("ours", "peer")]  # peer-polled is the proxy path's; one guest carries both NICs
    assert "ratio_polled" not in s and s["ratio"] == pytest.approx(0.05, rel=1e-5) and s["ratio_runs"] == 3
    assert s["ours_messages_per_echo"] == pytest.approx(16.0) and s["ours_messages_per_echo_runs"] == 3
    assert s["ours_server_cpu_us_per_echo"] == pytest.approx(1000.0)
    assert s["ours_qemu_cpu_us_per_echo"] == pytest.approx(2000.0)
    assert s["ours_host_cpu_us_per_echo"] == pytest.approx(3000.0)
    assert s["peer_qemu_cpu_us_per_echo"] == pytest.approx(500.0) and "peer_server_cpu_us_per_echo" not in s
    assert s["peer_host_cpu_us_per_echo"] == pytest.approx(500.0)  # QEMU's own device: QEMU is the host's cost
    assert _main(["--path", "vfio-user"], _boot(counters=True)) == 0
    text = capsys.readouterr().out
    assert "path vfio-user" in text and "host CPU us/echo" in text and "ours/peer: echo 0.050 (3 runs)" in text


def test_the_proxy_path_boots_each_mode_alone(capsys: pytest.CaptureFixture[str]) -> None:
    booted: list[tuple[str, ...]] = []
    assert _main(["--json"], _boot(booted=booted)) == 0
    assert booted == [("ours",), ("peer",), ("peer-polled",)]


def test_ratios_with_run_counts_and_the_qemu_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["--json"], _boot()) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["ours_pps"] == pytest.approx(1000.0, rel=1e-6) and s["peer_pps"] == pytest.approx(20000.0, rel=1e-5)
    assert s["ratio"] == pytest.approx(0.05, rel=1e-5) and s["ratio_runs"] == 3
    assert s["mbps_ratio"] == pytest.approx(2.0) and s["mbps_ratio_runs"] == 3
    assert s["ratio_polled"] == pytest.approx(0.5, rel=1e-5) and s["mbps_ratio_polled_runs"] == 3
    assert len(s["modes"]["ours"]["pps_runs"]) == 3 and s["guest"]["qemu"] == "7.2.99-fake"
    assert _main([], _boot()) == 0
    text = capsys.readouterr().out
    assert "guest: QEMU 7.2.99-fake, TCG -smp 1,maxcpus=2, path proxy; barriers kept" in text
    assert "ours/peer: echo 0.050 (3 runs)  TCP 2.000 (3 runs)" in text


def test_one_mode_alone_prints_no_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["--json", "--modes", "peer"], _boot()) == 0
    s = json.loads(capsys.readouterr().out)
    assert "ratio" not in s and s["peer_pps"] == pytest.approx(20000.0, rel=1e-5)


def test_an_unanswered_echo_fails_naming_job_and_mode(capsys: pytest.CaptureFixture[str]) -> None:
    broken = {"ours": ("echo", 1, ["ECHO 0 1000 1999"], 0)}
    assert _main(["--json"], _boot(broken)) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert (doc["job"], doc["side"], doc["run"]) == ("echo", "ours", 1) and "ratio" not in doc
    assert "guest job echo on ours (run 2 of 3): no figure: 1 of 2000 echo requests unanswered" in err


def test_a_short_tcp_stream_fails_naming_job_and_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["--json", "--modes", "peer"], _boot(sink_bytes=1000)) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["job"], doc["side"], doc["run"]) == ("tcp", "peer", 0)
    assert "the sink received 1000 of 20971520 bytes" in doc["reason"]


def test_bad_arguments_are_refused() -> None:
    for argv in (["--modes", "nope"], ["--qemu", "11.1"], ["--count", "0"]):
        with pytest.raises(SystemExit) as exc:
            _main(argv, _boot())
        assert exc.value.code == 2


def test_tso_packet_is_what_linux_hands_the_driver() -> None:
    packet = b._tso_packet()
    assert len(packet) == b._TSO_HDR + b._TSO_PAYLOAD
    assert packet[12:14] == b"\x08\x00" and packet[14] == 0x45 and packet[23] == 6
    assert packet[16:18] == b"\x00\x00"  # IPv4 total length left for the device


def test_guest_script_frames_its_jobs_and_reads_its_parameters_from_the_command_line() -> None:
    script = b.guest_script()
    for key in ("dmbench.runs", "dmbench.count", "dmbench.mib", "dmbench.sides"):
        assert key in script
    assert "bench_job $side echo $i echo_run $(host_of $side)" in script
    assert "bench_job $side tcp $i tcp_run $(host_of $side)" in script
    for mode, (bdf, net) in b.NICS.items():  # each NIC by its PCI function, on its own subnet
        assert f"{mode}) echo {bdf} {net} e1000 ;;" in script
    # the shell's own escapes survive (sed back-references, awk's newline)
    assert r"nsecs.*/\1/p" in script and r'printf "%d\n"' in script and "\x01" not in script
    assert 'echo "ECHO $t0 $t1' in script and 'echo "TCP $t0 $t1' in script


@pytest.mark.parametrize("posted", ["on", "off"])
def test_access_latency_drives_the_real_server(posted: str) -> None:
    # Also checks the device cut every TSO packet into the right number of frames (it
    # raises SystemExit otherwise).
    figures = b.access_latency(5, [f"posted={posted}"])
    assert set(figures) == {"read_status", "write_imc", "write_tdt_tso64k"}
    assert all(value > 0 for value in figures.values())
