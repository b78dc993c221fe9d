"""``bench/common.py``: guest jobs under deadlines and their failures (named by job, side and
run), fio's error fields, equal run counts, per-run counter pairing, the guest options, and
the exit status. Fake guests (``bench.testing``); the counters come from real processes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from bench import common as c
from bench.testing import FakeGuest, finished, fio_output, framed

PLAN = c.Plan.interleaved(("ours", "peer"), ("randread-4k-qd32", "seqwrite-1m"), 2)
QUICK = c.Deadlines(start=0.3, job=0.3, gap=0.3, finish=0.3)


def _job_output(side: str, job: str, run: int) -> list[str]:
    spec = c.FIO_JOBS[job]
    return fio_output(spec.direction, iops=100.0 * (run + 1) + (50 if side == "ours" else 0),
                      bw_bytes=1_000_000 * (run + 1), ios=1000 * (run + 1))


def _lines(plan: c.Plan = PLAN, *, upto: int | None = None, override: Mapping[c.Key, list[str]] | None = None,
           tail: bool = True) -> list[str]:
    lines = []
    for i, key in enumerate(plan.keys):
        if upto is not None and i == upto:
            return lines
        lines += (override or {}).get(key) or framed(*key, _job_output(*key))
    return lines + (finished() if tail else [])


def _watch(guest: FakeGuest, **kwargs: object) -> c.GuestRuns:
    return c.watch(guest, PLAN, c.fio_figure, QUICK, **kwargs)  # type: ignore[arg-type]


# --- watch: the good path -----------------------------------------------------------------

def test_every_planned_run_gives_its_figure_in_run_order() -> None:
    guest = FakeGuest(_lines())
    runs = _watch(guest)
    assert guest.finished == 1
    assert runs.values("ours", "randread-4k-qd32") == [150.0, 250.0]
    assert runs.values("peer", "seqwrite-1m") == [1.0, 2.0]
    assert runs.qemu_version == "7.2.99-fake" and runs.result.done


def test_fio_warnings_before_and_text_after_the_json_are_tolerated() -> None:
    run = c.Run("ours", "seqread-1m", 0, 0, ("fio: warning", *fio_output("read", bw_bytes=5_000_000), "trailer"), 1.0)
    assert c.fio_figure(run) == c.Figure(5.0, 5000.0)


# --- watch: failures name the job, the side and the run -----------------------------------

def _failure(guest: FakeGuest, **kwargs: object) -> c.BenchFailure:
    with pytest.raises(c.BenchFailure) as exc:
        _watch(guest, **kwargs)
    assert guest.finished == 1, "QEMU must be ended on every path"
    return exc.value


def test_a_hung_job_is_named_and_qemu_is_killed(tmp_path: Path) -> None:
    lines = _lines(upto=5) + ["BENCH-BEGIN peer seqwrite-1m 0", "fio: still running"]
    (tmp_path / "peer.log").write_text("vhost vring error\n")
    t0 = time.monotonic()
    failure = _failure(FakeGuest(lines, then="hang"), logs={"peer": tmp_path / "peer.log"})
    assert time.monotonic() - t0 < 5.0
    assert (failure.job, failure.side, failure.run) == ("seqwrite-1m", "peer", 0)
    assert "hung" in failure.reason
    assert failure.describe().startswith("guest job seqwrite-1m on peer (run 1 of 2): hung")
    assert "fio: still running" in failure.detail  # the console tail goes with it, and the servers'
    assert "--- peer server log (peer.log) ---\nvhost vring error" in failure.detail


def test_qemu_exiting_during_a_job_names_that_job() -> None:
    failure = _failure(FakeGuest(_lines(upto=2) + ["BENCH-BEGIN ours randread-4k-qd32 1"]))
    assert (failure.job, failure.side, failure.run) == ("randread-4k-qd32", "ours", 1)
    assert "QEMU exited" in failure.reason


def test_a_guest_that_stops_between_jobs_names_the_first_missing_one() -> None:
    failure = _failure(FakeGuest(_lines(upto=3)))
    assert (failure.job, failure.side, failure.run) == ("randread-4k-qd32", "peer", 1)
    assert "never ran" in failure.reason and "5 of 8 runs missing" in failure.reason


def test_a_guest_silent_between_jobs_times_out_on_the_next_one() -> None:
    failure = _failure(FakeGuest(_lines(upto=4), then="hang"))
    assert (failure.job, failure.side, failure.run) == ("seqwrite-1m", "ours", 0)
    assert "did not start" in failure.reason


def test_a_guest_that_never_reaches_its_first_job() -> None:
    failure = _failure(FakeGuest(["Booting..."], then="hang"))
    assert (failure.job, failure.side) == ("randread-4k-qd32", "ours")
    assert "first job" in failure.reason


@pytest.mark.parametrize(("output", "status", "words"), [
    (fio_output("read", error=5), 1, "job job error 5 (Input/output error)"),
    (fio_output("read", top_error=28), 0, "error 28 (No space left on device)"),
    (fio_output("read"), 1, "fio exited with status 1"),
    (["fio: failed to open /dev/vdb"], 1, "fio printed no JSON"),
    (fio_output("read", iops=0.0, ios=0), 0, "fio completed no read I/O"),
    (fio_output("write"), 0, "fio completed no read I/O"),  # figures in the wrong direction only
])
def test_a_run_without_a_figure_fails_the_bench(output: list[str], status: int, words: str) -> None:
    key = ("peer", "randread-4k-qd32", 1)
    failure = _failure(FakeGuest(_lines(override={key: framed(*key, output, status)})))
    assert (failure.job, failure.side, failure.run) == ("randread-4k-qd32", "peer", 1)
    assert failure.reason.startswith("no figure: ") and words in failure.reason


def test_a_guest_that_does_not_report_done_fails() -> None:
    failure = _failure(FakeGuest(_lines(tail=False)))
    assert failure.job is None and "did not finish" in failure.reason


def test_a_failed_bench_check_stops_the_guest_at_once() -> None:
    failure = _failure(FakeGuest(["DEVMODELS-CHECK init.modules FAIL optional missing",
                                  "DEVMODELS-CHECK bench.disks FAIL ours= peer=/dev/vda", *_lines()]))
    assert failure.reason == "guest check bench.disks failed: ours= peer=/dev/vda"


@pytest.mark.parametrize(("lines", "words"), [
    (["BENCH-BEGIN ours randread-4k-qd32 7"], "did not plan"),
    (framed("ours", "randread-4k-qd32", 0, _job_output("ours", "randread-4k-qd32", 0)) * 2, "twice"),
    (["BENCH-BEGIN ours randread-4k-qd32 0", "BENCH-BEGIN peer randread-4k-qd32 0"], "no BENCH-END"),
    (["BENCH-END ours randread-4k-qd32 0 0"], "without its BENCH-BEGIN"),
])
def test_console_framing_that_does_not_match_the_plan_fails(lines: list[str], words: str) -> None:
    assert words in _failure(FakeGuest([*lines, *_lines()])).reason


def test_a_dead_server_fails_the_job_on_its_side(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("starting\nTraceback: boom\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"])
    lines = _lines(upto=1) + ["BENCH-BEGIN peer randread-4k-qd32 0"]
    guest = FakeGuest(lines, then="hang")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    try:
        with pytest.raises(c.BenchFailure) as exc:
            c.watch(guest, PLAN, c.fio_figure, c.Deadlines(start=60, job=60), poll=0.05,
                    health=c.processes_alive({"ours": alive, "peer": proc}, {"peer": log}))
    finally:
        c.end_process(alive)
        proc.wait(30)
    assert time.monotonic() - t0 < 30
    failure = exc.value
    assert (failure.job, failure.side, failure.run) == ("randread-4k-qd32", "peer", 0)
    assert failure.reason == "the peer server exited with status 3: starting | Traceback: boom"


def test_a_server_exiting_after_the_last_job_is_no_failure() -> None:
    # Servers may leave once the guest is done (QEMU powering off closes their sockets).
    guest = FakeGuest(_lines())

    def health() -> tuple[str, str] | None:
        return ("ours", "the ours server exited") if any("bench.done" in line for line in guest.played) else None

    assert c.watch(guest, PLAN, c.fio_figure, QUICK, health=health).figures


# --- counters: paired per run ----------------------------------------------------------------

def test_a_lost_sample_costs_only_its_own_run() -> None:
    LOST = {("ours", "randread-4k-qd32", 0, "end"), ("peer", "seqwrite-1m", 1, "begin")}

    class Sampler:
        lost = None

        def __init__(self) -> None:
            self.calls: list[tuple[str, str, int, str]] = []

        def __call__(self, side: str, job: str, run: int, edge: str) -> Mapping[str, float] | None:
            self.calls.append((side, job, run, edge))
            if (side, job, run, edge) in LOST:
                return None  # this signal's answer never came
            return {"messages": 10.0 * len(self.calls), "cpu_ns": 1000.0 * len(self.calls)}

    sampler = Sampler()
    runs = _watch(FakeGuest(_lines()), sampler=sampler)
    lost = {("ours", "randread-4k-qd32", 0), ("peer", "seqwrite-1m", 1)}
    assert set(runs.counters) == set(PLAN.keys) - lost
    # every other run's deltas are its own: its begin and end are consecutive samples
    assert all(delta == {"messages": 10.0, "cpu_ns": 1000.0} for delta in runs.counters.values())
    value = c.per_io(runs, "ours", "randread-4k-qd32", ("messages",))
    assert value == c.PerIo(10.0 / 2000, 1, 2)
    assert value.text(4) == "0.0050 (1/2 runs)"
    assert c.per_io(runs, "ours", "randread-4k-qd32", ("nope",)) is None


def test_mpqemu_stats_pairs_each_signal_with_its_own_line(tmp_path: Path) -> None:
    import socket

    ours, theirs = socket.socketpair()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "devmodels", "mpqemu", "--fd", str(ours.fileno()),
                                   "--device", "testdev"], pass_fds=[ours.fileno()], stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, env=c.python_env())
    ours.close()
    try:
        stats = c.MpqemuStats(server.pid, log, timeout=30.0)
        deadline = time.monotonic() + 30
        while not _catches_sigusr1(server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        samples = [stats("ours", "job", 0, edge) for edge in ("begin", "end", "begin")]
        assert all(s is not None and "messages" in s and "cpu_ns" in s for s in samples)
        assert stats.sent == 3 and stats.lost is None
        assert stats("peer", "job", 0, "begin") is None and stats.sent == 3  # not our side: no signal
    finally:
        theirs.close()
        c.end_process(server)


def _catches_sigusr1(pid: int) -> bool:
    """Whether ``pid`` has its SIGUSR1 handler in place (SigCgt): before that, the signal kills."""
    import signal

    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(mask >> (signal.SIGUSR1 - 1) & 1)


def test_mpqemu_stats_gives_up_for_good_when_a_line_does_not_come(tmp_path: Path) -> None:
    # A process that ignores SIGUSR1 never answers: that sample and every later one are None.
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGUSR1, "
                             "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        stats = c.MpqemuStats(proc.pid, tmp_path / "none.log", timeout=0.2)
        assert stats("ours", "job", 0, "begin") is None
        assert stats.lost is not None and "SIGUSR1 number 1" in stats.lost
        t0 = time.monotonic()
        assert stats("ours", "job", 0, "end") is None and time.monotonic() - t0 < 0.1
    finally:
        c.end_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def test_cpu_ns_of_a_process_and_of_none() -> None:
    import os

    assert (c.cpu_ns(os.getpid()) or 0) > 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    assert c.cpu_ns(proc.pid) is None
    assert c.ProcessCpu({"ours": os.getpid()})("ours", "j", 0, "begin") is not None
    assert c.ProcessCpu({"ours": os.getpid()})("peer", "j", 0, "begin") is None


# --- comparisons and output -----------------------------------------------------------------

def test_compare_refuses_unequal_run_counts() -> None:
    with pytest.raises(c.BenchFailure, match="unequal run counts, ours 3 and peer 2"):
        c.compare([1.0, 2.0, 3.0], [1.0, 2.0], what="randread-4k-qd32")
    with pytest.raises(c.BenchFailure, match="no runs"):
        c.compare([], [], what="x")
    with pytest.raises(c.BenchFailure, match="median is 0"):
        c.compare([1.0], [0.0], what="x")
    got = c.compare([1.0, 3.0, 2.0], [4.0, 4.0, 5.0], what="x")
    assert got == c.Comparison(2.0, 4.0, 0.5, 3)
    assert got.fields("seqread_ratio") == {"ours": 2.0, "peer": 4.0, "seqread_ratio": 0.5, "seqread_ratio_runs": 3}
    assert got.text() == "0.50 (3 runs)" and c.compare([1.0], [2.0], what="x").text() == "0.50 (1 run)"


def test_fio_summary_refuses_a_plan_with_unequal_sides() -> None:
    plan = c.Plan((("ours", "seqread-1m", 0), ("ours", "seqread-1m", 1), ("peer", "seqread-1m", 0)))
    runs = c.watch(FakeGuest([*sum((framed(*k, _job_output(*k)) for k in plan.keys), []), *finished()]),
                   plan, c.fio_figure, QUICK)
    with pytest.raises(c.BenchFailure, match="unequal run counts, ours 2 and peer 1"):
        c.fio_summary(runs, ["seqread-1m"])


def test_fio_summary_puts_run_counts_beside_ratios() -> None:
    runs = _watch(FakeGuest(_lines()))
    field = c.PerIoField("x_per_io", "x/IO", "ours", ("messages",))
    summary = c.fio_summary(runs, ["randread-4k-qd32", "seqwrite-1m"], [field])
    assert summary["ratio"] == pytest.approx(200.0 / 150.0) and summary["ratio_runs"] == 2
    assert summary["jobs"]["seqwrite-1m"]["ratio_runs"] == 2
    assert summary["jobs"]["seqwrite-1m"]["x_per_io"] is None and summary["jobs"]["seqwrite-1m"]["x_per_io_runs"] == 0
    c.check_ratios(summary)
    table = c.fio_table(summary["jobs"], "QSD", [field])
    assert table[0].split()[:7] == ["job", "metric", "devmodels", "QSD", "ratio", "runs", "x/IO"]
    assert table[1].split()[4:] == ["1.33", "2", "-", "(0/2)"]


@pytest.mark.parametrize("summary", [
    {"ratio": None, "ratio_runs": 3},
    {"ratio": 1.0},
    {"jobs": {"seqread-1m": {"ratio": 1.0, "ratio_runs": None}}},
    {"mbps_ratio_polled": 2.0, "ratio_polled": 1.0, "ratio_polled_runs": 1},
])
def test_a_summary_with_a_null_or_uncounted_ratio_is_refused(summary: dict[str, object]) -> None:
    with pytest.raises(c.BenchFailure, match="bench bug"):
        c.check_ratios(summary)


def test_run_main_prints_figures_or_fails_with_exit_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    def good() -> tuple[dict[str, object], list[str]]:
        return {"ratio": 1.5, "ratio_runs": 3}, ["ratio 1.50 (3 runs)"]

    assert c.run_main("x", False, good) == 0
    first, load = capsys.readouterr().out.splitlines()
    assert first == "ratio 1.50 (3 runs)" and load.startswith("host load (1-minute average): ")
    assert c.run_main("x", True, good) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc.pop("host_load").keys() == {"before", "after", "cpus"}  # beside every figure: the machine is shared
    assert doc == {"ratio": 1.5, "ratio_runs": 3}

    def bad() -> tuple[dict[str, object], list[str]]:
        raise c.BenchFailure("hung", job="seqread-1m", side="ours", run=0, runs=3, detail="serial tail")

    assert c.run_main("x", True, bad) == 1
    out, err = capsys.readouterr()
    assert "bench x: FAILED: guest job seqread-1m on ours (run 1 of 3): hung" in err and "serial tail" in err
    doc = json.loads(out)
    assert (doc["job"], doc["side"], doc["run"]) == ("seqread-1m", "ours", 0) and "ratio" not in doc

    def null_ratio() -> tuple[dict[str, object], list[str]]:
        return {"ratio": None, "ratio_runs": 0}, []

    assert c.run_main("x", True, null_ratio) == 1
    assert "ratio" not in json.loads(capsys.readouterr().out)


# --- the guest configuration ----------------------------------------------------------------

PATHS = (c.Attachment("proxy", ("7.2",), "x-pci-proxy-dev"), c.Attachment("vfio-user", ("11.1",), "later"))


def _config(*argv: str) -> c.GuestConfig:
    parser = argparse.ArgumentParser()
    c.add_guest_options(parser, PATHS)
    return c.guest_config(parser, parser.parse_args(list(argv)), PATHS)


def test_the_default_guest_keeps_its_barriers_under_qemu_7_2() -> None:
    config = _config()
    assert (config.path, config.qemu.label, config.smp, config.maxcpus) == ("proxy", "7.2", 1, 2)
    assert config.barriers_kept and config.cpus() == "1,maxcpus=2"
    assert config.qemu_args() == ["-smp", "maxcpus=2"]
    assert "maxcpus > 1" in config.barriers() and "-smp 1,maxcpus=2" in config.describe("7.2.22")
    two = _config("--smp", "2")
    assert two.cpus() == "2" and two.qemu_args() == [] and two.barriers() == "kept: 2 vCPUs under QEMU 7.2 TCG"
    later = _config("--path", "vfio-user")
    assert (later.qemu.label, later.smp, later.maxcpus, later.barriers_kept) == ("11.1", 1, 1, True)
    assert later.as_json("11.1.3")["qemu"] == "11.1.3"


@pytest.mark.parametrize("argv", [["--path", "proxy", "--qemu", "11.1"], ["--maxcpus", "1"], ["--smp", "0"],
                                  ["--smp", "2", "--maxcpus", "1"]])
def test_guest_configurations_that_cannot_work_are_refused(argv: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _config(*argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_dropped_barriers_only_when_asked_and_said() -> None:
    config = _config("--maxcpus", "1", "--allow-dropped-barriers")
    assert not config.barriers_kept and config.barriers().startswith("DROPPED")
    assert config.as_json("7.2.22")["barriers_kept"] is False


# --- the launcher adapter, over the real launcher and a stand-in process -------------------

def _launcher(tmp_path: Path, script: str) -> c.LauncherSession:
    from harness.qemu.launcher import QemuLauncher

    for name in ("vmlinuz", "initrd"):
        (tmp_path / name).write_bytes(b"")
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    return c.LauncherSession(QemuLauncher(tmp_path / "vmlinuz", tmp_path / "initrd", qemu=str(fake)).start())


def test_launcher_session_reads_lines_then_the_end_of_the_console(tmp_path: Path) -> None:
    session = _launcher(tmp_path, "echo one; echo two; exit 0\n")
    assert [session.read_line(10.0), session.read_line(10.0)] == ["one", "two"]
    with pytest.raises(EOFError):
        session.read_line(10.0)
    assert session.finish().exit_code == 0 and session.qemu_version == "?"


def test_launcher_session_times_out_on_silence_and_finish_ends_the_process(tmp_path: Path) -> None:
    session = _launcher(tmp_path, "echo started; exec sleep 60\n")
    assert session.read_line(10.0) == "started"
    t0 = time.monotonic()
    assert session.read_line(0.3) is None
    assert 0.25 < time.monotonic() - t0 < 5.0
    result = session.finish()
    assert result.exit_code is not None and result.exit_code < 0 and result.log == "started"
