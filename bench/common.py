"""What the benchmarks share: guest jobs under deadlines, fio figures, paired runs and
counters, the guest options, and the output.

Rules:

1. A guest job is framed on the console by ``bench_job`` (in ``GUEST_FUNCTIONS``):
   ``BENCH-BEGIN SIDE JOB RUN``, the job's output, ``BENCH-END SIDE JOB RUN STATUS``.
   ``watch`` expects every (side, job, run) of its ``Plan`` exactly once, each within its
   deadline. A job that hangs, a run without a figure, a failed ``bench.*`` check, a guest
   that stops early or does not finish (its ``bench.done`` check and ``DEVMODELS-DONE``)
   stops QEMU at once and raises ``BenchFailure`` naming the job, the side and the run.
2. A figure comes from one run's own output (the bench's ``figure`` callback; ``fio_figure``
   for fio: exit status 0, the JSON's ``error`` and every job's ``error`` 0, at least one
   I/O done). A run without a figure fails the bench; it is never left out of a median.
3. Ratios compare equal numbers of runs per side (``compare`` refuses anything else), and the
   run count stands beside every ratio: key ``K`` with ``K_runs`` in JSON, ``(N runs)`` in text.
4. Counters (server messages, server CPU, the QEMU process's CPU) are sampled at the BEGIN
   and END of each run and kept by (side, job, run): a lost sample costs that run its
   per-I/O figure and never shifts another run's. Per-I/O figures say how many runs they
   cover. ``Samplers`` joins several samplers (one per server, one for QEMU).
5. A guest bench takes ``--path`` (how our device reaches the guest), ``--qemu``, ``--smp``
   and ``--maxcpus`` (``add_guest_options``), refuses combinations that cannot work, and by
   default boots a guest whose memory barriers hold. QEMU 7.2's TCG translates a guest whose
   ``maxcpus`` is 1 without CF_PARALLEL and so drops its memory barriers (fixed in 8.1, "tcg:
   Do not elide memory barriers for !CF_PARALLEL in system mode"), which lets event-idx
   drivers lose interrupts. Under 7.2 the default is therefore ``-smp 1,maxcpus=2``: the
   barriers are kept (TCG emits its ``mb`` ops) and the guest still runs on one vCPU, as the
   figures so far were measured; ``--smp 2`` runs two. The output names the QEMU version and
   the configuration.
6. Exit status 0 with figures; 1 on ``BenchFailure``: stderr says what failed and where, and
   with ``--json`` stdout holds ``{"error", "job", "side", "run"}`` and no ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.guest import DONE_MARKER, parse_check_line
from harness.processes import end_process as _end_process
from harness.qemu.binaries import QemuBinary, qemu_binary
from harness.qemu.launcher import BootResult

if TYPE_CHECKING:
    from harness.qemu.launcher import QemuLauncher

__all__ = [
    "DONE_CHECK", "FIO_JOBS", "GUEST_FUNCTIONS", "HEADLINE_JOB", "Attachment", "BenchFailure", "Booted", "Comparison",
    "Deadlines", "Figure", "FioJob", "GuestConfig", "GuestRuns", "GuestSession", "Health", "Key", "LauncherSession",
    "MpqemuStats", "PerIo", "PerIoField", "Plan", "ProcessCpu", "Run", "RunFailed", "Sampler", "Samplers", "add_guest_options",
    "check_ratios", "compare", "cpu_ns", "end_process", "fio_append", "fio_deadlines", "fio_figure", "fio_guest_loop",
    "fio_summary", "fio_table", "fmt", "guest_config", "make_image", "need", "parse_mpqemu_stats", "per_io",
    "processes_alive", "python_env", "run_main", "runs_text", "watch", "workdir",
]

DONE_CHECK = "bench.done"
_BEGIN = re.compile(r"BENCH-BEGIN (\S+) (\S+) (\d+)\s*$")
_END = re.compile(r"BENCH-END (\S+) (\S+) (\d+) (-?\d+)\s*$")

GUEST_FUNCTIONS = r"""
bench_job() {  # SIDE JOB RUN CMD [ARGS...]: run CMD framed for the host (bench.common rule 1)
    _b_side=$1; _b_job=$2; _b_run=$3; shift 3
    echo "BENCH-BEGIN $_b_side $_b_job $_b_run"
    "$@"
    _b_rc=$?
    echo "BENCH-END $_b_side $_b_job $_b_run $_b_rc"
}
"""
"""Shell functions for a guest script: ``bench_job SIDE JOB RUN CMD [ARGS...]``."""


# --- failures -------------------------------------------------------------------------------

class BenchFailure(Exception):
    """The bench has no trustworthy figure (rule 1): which job, on which side, in which run.

    Attributes:
        reason: what went wrong.
        job, side, run: where (None when it is not about one job); ``run`` counts from 0.
        runs: the runs planned for that job and side, for "run 2 of 3".
        detail: more for a human (the end of the console), printed on stderr only.
    """

    def __init__(self, reason: str, *, job: str | None = None, side: str | None = None, run: int | None = None,
                 runs: int | None = None, detail: str = "") -> None:
        self.reason, self.job, self.side, self.run, self.runs = reason, job, side, run, runs
        self.detail = detail
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line: ``guest job JOB on SIDE (run R of N): REASON``."""
        where = []
        if self.job is not None:
            where.append(f"guest job {self.job}")
        if self.side is not None:
            where.append(f"on {self.side}")
        if self.run is not None:
            where.append(f"(run {self.run + 1}" + (f" of {self.runs})" if self.runs else ")"))
        return (" ".join(where) + ": " if where else "") + self.reason

    def with_detail(self, detail: str) -> BenchFailure:
        """Attach ``detail`` and return self."""
        self.detail = detail
        return self

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` form (rule 6)."""
        return {"error": self.describe(), "reason": self.reason, "job": self.job, "side": self.side,
                "run": self.run}


class RunFailed(Exception):
    """Raised by a ``figure`` callback: this run produced no figure (the message says why)."""


# --- guest jobs -----------------------------------------------------------------------------

Key = tuple[str, str, int]  # (side, job, run)


@dataclass(frozen=True)
class Plan:
    """Every (side, job, run) a guest must run, in the order it runs them."""

    keys: tuple[Key, ...]

    @classmethod
    def interleaved(cls, sides: Sequence[str], jobs: Sequence[str], runs: int) -> Plan:
        """Each job ``runs`` times, the sides taking turns within a run (the disk benches)."""
        return cls(tuple((side, job, run) for job in jobs for run in range(runs) for side in sides))

    def runs_of(self, side: str, job: str) -> list[Key]:
        """The keys of one job on one side, in run order."""
        return [k for k in self.keys if k[0] == side and k[1] == job]


@dataclass(frozen=True)
class Run:
    """One finished guest job: its key, exit status, output lines and host-side duration."""

    side: str
    job: str
    index: int
    status: int
    output: tuple[str, ...]
    seconds: float

    @property
    def text(self) -> str:
        """The output, lines joined with newlines."""
        return "\n".join(self.output)


@dataclass(frozen=True)
class Figure:
    """A run's figure: ``value`` (IOPS, MB/s, round trips/s), ``ios`` (units of work done, for
    per-I/O counters) and any raw numbers worth keeping."""

    value: float
    ios: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Deadlines:
    """Seconds the guest may take: to its first job (boot), per job (``per_job`` overrides
    ``job`` by name), between jobs, and from its last job to the end of the console."""

    start: float
    job: float
    gap: float = 60.0
    finish: float = 60.0
    per_job: Mapping[str, float] = field(default_factory=dict)

    def for_job(self, job: str) -> float:
        """The deadline of one run of ``job``."""
        return self.per_job.get(job, self.job)


class GuestSession(Protocol):
    """A booted guest as ``watch`` sees it: the seam where tests put a fake guest."""

    @property
    def qemu_version(self) -> str:
        """The version of the QEMU running the guest."""

    def read_line(self, timeout: float) -> str | None:
        """The next console line; None when none came within ``timeout`` s.

        Raises:
            EOFError: the console ended (QEMU exited).
        """

    def finish(self) -> BootResult:
        """End QEMU if it still runs and return what the boot produced."""


class LauncherSession:
    """``GuestSession`` over a started ``harness.qemu.launcher.QemuLauncher``."""

    def __init__(self, launcher: QemuLauncher) -> None:
        self.launcher = launcher

    @property
    def qemu_version(self) -> str:
        """``QemuLauncher.qemu_version``."""
        return self.launcher.qemu_version

    def read_line(self, timeout: float) -> str | None:
        """See ``GuestSession.read_line``."""
        deadline = time.monotonic() + timeout
        for line in self.launcher.lines(timeout):
            return line
        # lines() gives up early only when the console has ended; a timeout takes its full time.
        if time.monotonic() < deadline:
            raise EOFError("the console ended")
        return None

    def finish(self) -> BootResult:
        """See ``GuestSession.finish``."""
        self.launcher.stop()
        return self.launcher.result()


class Sampler(Protocol):
    """Counters of what serves a side, sampled at each BENCH-BEGIN/END (rule 4).

    Attributes:
        lost: None, or why samples stopped coming (said in the bench's output).
    """

    lost: str | None

    def __call__(self, side: str, job: str, run: int, edge: str) -> Mapping[str, float] | None:
        """Counters now for ``side`` at ``edge`` (``"begin"`` or ``"end"``) of a run, or None."""


@dataclass(frozen=True)
class GuestRuns:
    """What ``watch`` returns: a figure for every key of the plan, counter deltas by key
    (where both samples came), the boot result and the QEMU version."""

    plan: Plan
    figures: Mapping[Key, Figure]
    counters: Mapping[Key, Mapping[str, float]]
    result: BootResult
    qemu_version: str

    def values(self, side: str, job: str) -> list[float]:
        """The figures of one job on one side, in run order."""
        return [self.figures[key].value for key in self.plan.runs_of(side, job)]


@dataclass
class _Open:
    key: Key
    started: float
    lines: list[str]
    begin: Mapping[str, float] | None


Health = Callable[[], tuple[str, str] | None]
"""Polled while jobs run: None, or (side, why) when what serves that side has died."""


@dataclass
class Booted:
    """A booted guest (``session``), the sampler of the counters (the servers' and QEMU's),
    the servers' health, and their logs by side: what a disk bench's ``boot`` yields."""

    session: GuestSession
    sampler: Sampler | None = None
    health: Health | None = None
    logs: dict[str, Path] = field(default_factory=dict)


def processes_alive(processes: Mapping[str, subprocess.Popen[bytes]],
                    logs: Mapping[str, Path] | None = None) -> Health:
    """A ``Health`` that reports the first server process (by side) that has exited, with the
    end of its log."""
    def check() -> tuple[str, str] | None:
        for side, proc in processes.items():
            if proc.poll() is not None:
                log = (logs or {}).get(side)
                tail = ""
                if log is not None:
                    with contextlib.suppress(OSError):
                        tail = ": " + _tail(log.read_text(errors="replace").splitlines())
                return side, f"the {side} server exited with status {proc.returncode}{tail}"
        return None
    return check


class _Watch:
    """The state of one ``watch``: the open job, the figures and counters so far, the deadline."""

    def __init__(self, plan: Plan, figure: Callable[[Run], Figure], deadlines: Deadlines, sampler: Sampler | None,
                 clock: Callable[[], float]) -> None:
        self.plan, self.figure, self.deadlines, self.sampler, self.clock = plan, figure, deadlines, sampler, clock
        self.planned = set(plan.keys)
        self.figures: dict[Key, Figure] = {}
        self.counters: dict[Key, Mapping[str, float]] = {}
        self.current: _Open | None = None
        self.powering_off = False  # DEVMODELS-DONE seen
        self.deadline = clock() + deadlines.start

    def at(self, key: Key, reason: str) -> BenchFailure:
        side, job, run = key
        return BenchFailure(reason, job=job, side=side, run=run, runs=len(self.plan.runs_of(side, job)))

    def here(self, reason: str, side: str | None = None) -> BenchFailure:
        """A failure at the open job if there is one (or on ``side``)."""
        if self.current is not None:
            return self.at(self.current.key, reason)
        return BenchFailure(reason, side=side)

    def missing(self) -> list[Key]:
        return [k for k in self.plan.keys if k not in self.figures]

    def line(self, line: str) -> BenchFailure | None:
        """Take one console line; a failure when it shows one."""
        check = parse_check_line(line)
        if check is not None:
            if not check.passed and check.name.startswith("bench."):
                return self.here(f"guest check {check.name} failed: {check.detail}")
            return None
        if DONE_MARKER in line:
            self.powering_off = True
            self.deadline = self.clock() + 15.0
            return None
        begin = _BEGIN.search(line)
        if begin is not None:
            return self.begin((begin[1], begin[2], int(begin[3])), line)
        end = _END.search(line)
        if end is not None:
            return self.end((end[1], end[2], int(end[3])), int(end[4]))
        if self.current is not None:
            self.current.lines.append(line)
        return None

    def begin(self, key: Key, line: str) -> BenchFailure | None:
        if self.current is not None:
            return self.at(self.current.key, f"no BENCH-END before the next job began ({line.strip()})")
        if key not in self.planned:
            return self.at(key, "the guest ran a job the bench did not plan (guest script and bench disagree)")
        if key in self.figures:
            return self.at(key, "the guest ran this job twice")
        sample = self.sampler(*key, "begin") if self.sampler is not None else None
        self.current = _Open(key, self.clock(), [], sample)
        self.deadline = self.clock() + self.deadlines.for_job(key[1])
        return None

    def end(self, key: Key, status: int) -> BenchFailure | None:
        current = self.current
        if current is None or key != current.key:
            return self.at(key, "BENCH-END without its BENCH-BEGIN")
        sample = self.sampler(*key, "end") if self.sampler is not None else None
        if current.begin is not None and sample is not None:
            self.counters[key] = {k: sample[k] - v for k, v in current.begin.items() if k in sample}
        run = Run(*key, status=status, output=tuple(current.lines), seconds=self.clock() - current.started)
        self.current = None
        try:
            self.figures[key] = self.figure(run)
        except RunFailed as exc:
            return self.at(key, f"no figure: {exc}")
        self.deadline = self.clock() + (self.deadlines.gap if self.missing() else self.deadlines.finish)
        return None

    def timed_out(self) -> BenchFailure:
        d, left = self.deadlines, self.missing()
        if self.current is not None:
            return self.at(self.current.key,
                           f"hung: no BENCH-END within {d.for_job(self.current.key[1]):g} s; QEMU killed")
        if not left:
            return BenchFailure(f"the guest did not finish within {d.finish:g} s of its last job; QEMU killed")
        if len(left) == len(self.plan.keys):
            return self.at(left[0], f"the guest did not reach its first job within {d.start:g} s; QEMU killed")
        return self.at(left[0], f"did not start within {d.gap:g} s of the previous job; QEMU killed")


def _detail(result: BootResult, logs: Mapping[str, Path] | None, lines: int = 20) -> str:
    """The boot's summary and the last ``lines`` of each server log."""
    parts = [result.summary()]
    for side, path in (logs or {}).items():
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            tail = [f"(unreadable: {exc})"]
        parts.append(f"--- {side} server log ({path.name}) ---\n" + "\n".join(tail))
    return "\n".join(parts)


def watch(session: GuestSession, plan: Plan, figure: Callable[[Run], Figure], deadlines: Deadlines, *,
          sampler: Sampler | None = None, health: Health | None = None, logs: Mapping[str, Path] | None = None,
          poll: float = 1.0, clock: Callable[[], float] = time.monotonic) -> GuestRuns:
    """Follow a booted guest through ``plan`` (rules 1, 2, 4); QEMU is ended on every path.

    ``health`` is polled every ``poll`` s until the last job has ended. A failure's detail
    holds the end of the console and of each server's log in ``logs`` (by side).

    Raises:
        BenchFailure: a job hung or failed, a run had no figure, a ``bench.*`` check failed,
            a server died, the guest stopped early or did not finish.
    """
    state = _Watch(plan, figure, deadlines, sampler, clock)
    failure: BenchFailure | None = None
    try:
        while failure is None:
            if health is not None and (state.current is not None or state.missing()):
                dead = health()
                if dead is not None:
                    failure = state.here(dead[1], dead[0])
                    break
            remaining = state.deadline - clock()
            try:
                line = session.read_line(max(min(remaining, poll), 0.0))
            except EOFError:
                if state.current is not None:
                    failure = state.here("the guest stopped during this run (QEMU exited)")
                break
            if line is not None:
                failure = state.line(line.rstrip("\r"))
            elif clock() >= state.deadline:
                if not state.powering_off:  # else it finished but did not power off: the result says so
                    failure = state.timed_out()
                break
    finally:
        result = session.finish()
    if failure is not None:
        raise failure.with_detail(_detail(result, logs))
    left = state.missing()
    if left:
        raise state.at(left[0], f"never ran: the guest stopped first ({len(left)} of {len(plan.keys)} runs "
                                f"missing; QEMU exit status {result.exit_code})").with_detail(_detail(result, logs))
    done = result.checks.get(DONE_CHECK)
    if done is None or not done[0] or not result.done:
        raise BenchFailure(f"the guest did not finish: {DONE_CHECK} {'missing' if done is None else 'failed'}, "
                           f"{DONE_MARKER} {'seen' if result.done else 'missing'}", detail=_detail(result, logs))
    return GuestRuns(plan, state.figures, state.counters, result, session.qemu_version)


# --- fio --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FioJob:
    """One fio workload: its arguments, the metric (``"iops"`` or ``"MB/s"``, 10**6 bytes) and
    the direction whose figures count."""

    args: str
    metric: str
    direction: str


FIO_JOBS: dict[str, FioJob] = {
    "randread-4k-qd32": FioJob("--rw=randread --bs=4k --iodepth=32 --norandommap --randrepeat=0", "iops", "read"),
    "seqread-1m": FioJob("--rw=read --bs=1M --iodepth=8", "MB/s", "read"),
    "seqwrite-1m": FioJob("--rw=write --bs=1M --iodepth=8", "MB/s", "write"),
}
"""The disk benches' jobs, libaio O_DIRECT in the guest; the first is the headline."""


def fio_guest_loop() -> str:
    """Guest shell that runs the selected ``FIO_JOBS`` on ``$ours`` and ``$peer`` in turns;
    its parameters come from the kernel command line (``fio_append``)."""
    lines = [
        "runs=$(cmdline_value dmbench.runs); runtime=$(cmdline_value dmbench.runtime)",
        "size=$(cmdline_value dmbench.size); jobs=$(cmdline_value dmbench.jobs)",
        'common="--ioengine=libaio --direct=1 --time_based --runtime=$runtime --size=${size}M --output-format=json"',
    ]
    for name, job in FIO_JOBS.items():
        lines += [
            f'case ",$jobs," in *",{name},"*)',
            "    i=0",
            "    while [ $i -lt $runs ]; do",
            "        for side in ours peer; do",
            "            eval dev=\\$$side",
            f"            bench_job $side {name} $i /usr/bin/fio --name={name} --filename=$dev $common {job.args} 2>&1",
            "        done",
            "        i=$((i + 1))",
            "    done ;;",
            "esac",
        ]
    return "\n".join(lines) + "\n"


def fio_append(*, runs: int, runtime: int, size_mb: int, jobs: Sequence[str]) -> list[str]:
    """Kernel command-line words for ``fio_guest_loop``."""
    return [f"dmbench.runs={runs}", f"dmbench.runtime={runtime}", f"dmbench.size={size_mb}",
            f"dmbench.jobs={','.join(jobs)}"]


def fio_deadlines(runtime: int) -> Deadlines:
    """Generous bounds for ``fio_guest_loop``: TCG and a loaded host stretch fio's start-up."""
    return Deadlines(start=300.0, job=2.0 * runtime + 90.0, gap=60.0, finish=60.0)


def _fio_json(output: Sequence[str]) -> Any:
    """The JSON document fio printed (warnings may come before it, text after it)."""
    first = next((i for i, line in enumerate(output) if line.strip() == "{"), None)
    text = "\n".join(output if first is None else output[first:])
    start = text.find("{")
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _tail(output: Sequence[str], count: int = 2) -> str:
    lines = [line.strip() for line in output if line.strip()]
    return " | ".join(lines[-count:])[-300:] or "(no output)"


def _errno_text(code: object) -> str:
    return f"{code} ({os.strerror(code)})" if isinstance(code, int) and code > 0 else str(code)


def fio_figure(run: Run, job: FioJob | None = None) -> Figure:
    """The figure of one fio run (rule 2): ``job``'s metric, or ``FIO_JOBS[run.job]``'s.

    Raises:
        RunFailed: no JSON, a nonzero ``error`` (top level or any job), a nonzero exit
            status, or no I/O done.
    """
    job = job if job is not None else FIO_JOBS[run.job]
    data = _fio_json(run.output)
    if data is None:
        raise RunFailed(f"fio printed no JSON (exit status {run.status}): {_tail(run.output)}")
    errors = []
    if data.get("error"):
        errors.append(f"error {_errno_text(data['error'])}")
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs or not all(isinstance(j, dict) for j in jobs):
        raise RunFailed(f"fio's JSON has no job (exit status {run.status}): {_tail(run.output)}")
    for entry in jobs:
        if entry.get("error"):
            errors.append(f"job {entry.get('jobname', '?')} error {_errno_text(entry['error'])}")
    if errors:
        raise RunFailed(f"fio reported {'; '.join(errors)} (exit status {run.status})")
    if run.status != 0:
        raise RunFailed(f"fio exited with status {run.status}: {_tail(run.output)}")
    stats = jobs[0].get(job.direction)
    if not isinstance(stats, dict):
        raise RunFailed(f"fio's JSON has no {job.direction} figures")
    ios = float(stats.get("total_ios", 0))
    value = float(stats.get("iops", 0.0)) if job.metric == "iops" else float(stats.get("bw_bytes", 0)) / 1e6
    if ios <= 0 or value <= 0:
        raise RunFailed(f"fio completed no {job.direction} I/O")
    return Figure(value, ios)


HEADLINE_JOB = "randread-4k-qd32"


@dataclass(frozen=True)
class PerIoField:
    """A per-I/O column of the disk benches: JSON key, table header, side, counters summed,
    scale (``1e-3`` turns ns into us) and digits shown."""

    key: str
    header: str
    side: str
    counters: tuple[str, ...]
    scale: float = 1.0
    digits: int = 2


def fio_summary(runs: GuestRuns, jobs: Sequence[str], fields: Sequence[PerIoField] = ()) -> dict[str, Any]:
    """Per job: the medians and ratio with its run count, every run, and the per-I/O
    ``fields``; the headline (``ours_iops``, ``peer_iops``, ``ratio`` and the ``fields`` of
    that job) when 4k randread ran.

    Raises:
        BenchFailure: unequal run counts (``compare``).
    """
    rows: dict[str, Any] = {}
    for job in jobs:
        ours, peer = runs.values("ours", job), runs.values("peer", job)
        row: dict[str, Any] = {"metric": FIO_JOBS[job].metric, **compare(ours, peer, what=job).fields(),
                               "ours_runs": ours, "peer_runs": peer}
        for f in fields:
            value = per_io(runs, f.side, job, f.counters, f.scale)
            row[f.key] = None if value is None else value.median
            row[f"{f.key}_runs"] = 0 if value is None else value.runs
        rows[job] = row
    out: dict[str, Any] = {}
    if HEADLINE_JOB in rows:
        head = rows[HEADLINE_JOB]
        out.update(ours_iops=head["ours"], peer_iops=head["peer"], ratio=head["ratio"], ratio_runs=head["ratio_runs"])
        for f in fields:  # the headline's per-I/O figures beside its ratio (socket messages, CPU)
            out[f.key], out[f"{f.key}_runs"] = head[f.key], head[f"{f.key}_runs"]
    out["jobs"] = rows
    return out


def fio_table(rows: Mapping[str, Mapping[str, Any]], peer_name: str, fields: Sequence[PerIoField] = ()) -> list[str]:
    """``fio_summary``'s jobs as a table: medians, ratio, runs and the per-I/O columns."""
    head = f"{'job':<18} {'metric':<6} {'devmodels':>10} {peer_name:>10} {'ratio':>6} {'runs':>4}"
    lines = [head + "".join(f" {f.header:>{max(len(f.header), 8)}}" for f in fields)]
    for job, row in rows.items():
        line = (f"{job:<18} {row['metric']:<6} {fmt(row['ours']):>10} {fmt(row['peer']):>10} "
                f"{row['ratio']:>6.2f} {row['ratio_runs']:>4}")
        for f in fields:
            value, count = row[f.key], row[f"{f.key}_runs"]
            cell = fmt(value, f.digits) + ("" if count == row["ratio_runs"] else f" ({count}/{row['ratio_runs']})")
            line += f" {cell:>{max(len(f.header), 8)}}"
        lines.append(line)
    return lines


# --- counters -----------------------------------------------------------------------------

def cpu_ns(pid: int) -> int | None:
    """User + system CPU time of process ``pid`` (all its threads) from /proc; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class ProcessCpu:
    """A ``Sampler``: ``cpu_ns`` of the process that serves each side, under ``key``
    (``"cpu_ns"`` for a server; ``"qemu_cpu_ns"`` for the QEMU that runs both sides' guest)."""

    def __init__(self, pids: Mapping[str, int], key: str = "cpu_ns") -> None:
        self.pids = dict(pids)
        self.key = key
        self.lost: str | None = None

    def __call__(self, side: str, job: str, run: int, edge: str) -> Mapping[str, float] | None:
        pid = self.pids.get(side)
        ns = cpu_ns(pid) if pid is not None else None
        return None if ns is None else {self.key: float(ns)}


class Samplers:
    """A ``Sampler`` made of several: each sample is the union of theirs (None when none
    answered); ``lost`` is the first of theirs that is set."""

    def __init__(self, *samplers: Sampler) -> None:
        self.samplers = samplers
        self.lost: str | None = None

    def __call__(self, side: str, job: str, run: int, edge: str) -> Mapping[str, float] | None:
        out: dict[str, float] = {}
        answered = False
        for sampler in self.samplers:
            sample = sampler(side, job, run, edge)
            if sample is not None:
                answered = True
                out.update(sample)
        self.lost = next((s.lost for s in self.samplers if s.lost is not None), None)
        return out if answered else None


_STATS = re.compile(r"(\S+) stats: (.*)")


def parse_mpqemu_stats(text: str, prefix: str = "mpqemu") -> list[dict[str, int]]:
    """The ``PREFIX stats:`` lines (one per SIGUSR1) of a server log, in order
    (``mpqemu`` for ``devmodels mpqemu``, ``vfio-user`` for ``devmodels vfio-user``)."""
    out = []
    for match in _STATS.finditer(text):
        if match.group(1) != prefix:
            continue
        fields = {}
        for word in match.group(2).split():
            name, _, value = word.partition("=")
            if value.isdigit():
                fields[name] = int(value)
        out.append(fields)
    return out


class MpqemuStats:
    """A ``Sampler`` for our server on one side: SIGUSR1, then wait for the ``PREFIX stats:``
    line it answers with (in ``log``; ``prefix`` is ``mpqemu`` for ``devmodels mpqemu``,
    ``vfio-user`` for ``devmodels vfio-user``), plus its ``cpu_ns``.

    One signal is outstanding at a time, so the N-th line answers the N-th signal. If a line
    does not come within ``timeout`` s, that sample and every later one are None (``lost``
    says why): a late line can never be taken for another run's (rule 4).
    """

    def __init__(self, pid: int, log: Path, *, side: str = "ours", timeout: float = 5.0,
                 prefix: str = "mpqemu") -> None:
        self.pid, self.log, self.side, self.timeout, self.prefix = pid, log, side, timeout, prefix
        self.sent = 0
        self.lost: str | None = None
        self._lines: list[dict[str, int]] = []
        self._offset = 0
        self._partial = ""

    def _read(self) -> None:
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        complete, _, self._partial = text.rpartition("\n")
        self._lines += parse_mpqemu_stats(complete, self.prefix)

    def __call__(self, side: str, job: str, run: int, edge: str) -> Mapping[str, float] | None:
        if side != self.side or self.lost is not None:
            return None
        try:
            os.kill(self.pid, signal.SIGUSR1)
        except ProcessLookupError:
            self.lost = "the server exited"
            return None
        self.sent += 1
        deadline = time.monotonic() + self.timeout
        self._read()
        while len(self._lines) < self.sent:
            if time.monotonic() > deadline:
                self.lost = f"no stats line within {self.timeout:.0f} s of SIGUSR1 number {self.sent}"
                return None
            time.sleep(0.002)
            self._read()
        sample: dict[str, float] = {k: float(v) for k, v in self._lines[self.sent - 1].items()}
        ns = cpu_ns(self.pid)
        if ns is not None:
            sample["cpu_ns"] = float(ns)
        return sample


@dataclass(frozen=True)
class PerIo:
    """A counter per unit of work: the median over ``runs`` paired runs of ``of`` planned."""

    median: float
    runs: int
    of: int

    def text(self, digits: int = 2) -> str:
        """``1.50`` or ``1.50 (2/3 runs)`` when some runs lost their counters."""
        return f"{self.median:.{digits}f}" + ("" if self.runs == self.of else f" ({self.runs}/{self.of} runs)")


def per_io(runs: GuestRuns, side: str, job: str, counters: Sequence[str], scale: float = 1.0) -> PerIo | None:
    """The sum of ``counters`` per ``Figure.ios`` times ``scale``, each run with its own deltas
    (rule 4); None when no run of that job and side has them."""
    keys = runs.plan.runs_of(side, job)
    values = []
    for key in keys:
        delta, ios = runs.counters.get(key), runs.figures[key].ios
        if delta is not None and ios and all(name in delta for name in counters):
            values.append(scale * sum(delta[name] for name in counters) / ios)
    return PerIo(statistics.median(values), len(values), len(keys)) if values else None


# --- comparisons and output ---------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """Medians of equally many runs per side and their ratio, ours / peer (rule 3)."""

    ours: float
    peer: float
    ratio: float
    runs: int

    def fields(self, ratio_key: str = "ratio", ours_key: str = "ours", peer_key: str = "peer") -> dict[str, Any]:
        """JSON fields: the medians, the ratio and the run count beside it."""
        return {ours_key: self.ours, peer_key: self.peer, ratio_key: self.ratio, f"{ratio_key}_runs": self.runs}

    def text(self, digits: int = 2) -> str:
        """``1.19 (3 runs)``."""
        return f"{self.ratio:.{digits}f} ({runs_text(self.runs)})"


def runs_text(count: int) -> str:
    """``1 run``, ``3 runs``."""
    return f"{count} run{'' if count == 1 else 's'}"


def compare(ours: Sequence[float], peer: Sequence[float], *, what: str) -> Comparison:
    """Compare the runs of two sides (rule 3).

    Raises:
        BenchFailure: unequal run counts, no runs, or a peer median of zero.
    """
    if len(ours) != len(peer):
        raise BenchFailure(f"{what}: unequal run counts, ours {len(ours)} and peer {len(peer)}; not compared")
    if not ours:
        raise BenchFailure(f"{what}: no runs to compare")
    a, b = statistics.median(ours), statistics.median(peer)
    if b <= 0:
        raise BenchFailure(f"{what}: the peer's median is {b}; no ratio")
    return Comparison(a, b, a / b, len(ours))


def fmt(value: float | None, digits: int = 0) -> str:
    """A figure for a table; ``-`` for None (never a ratio: those are never None)."""
    return "-" if value is None else f"{value:.{digits}f}"


def check_ratios(summary: Mapping[str, Any], where: str = "") -> None:
    """Refuse a summary that holds a ratio that is None or has no ``_runs`` beside it (rule 3).

    Raises:
        BenchFailure: what is missing, with its place in the summary.
    """
    for key, value in summary.items():
        if isinstance(value, Mapping):
            check_ratios(value, f"{where}{key}.")
        elif "ratio" in key.split("_") and not key.endswith("_runs"):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise BenchFailure(f"bench bug: {where}{key} is {value!r}")
            if not isinstance(summary.get(f"{key}_runs"), int):
                raise BenchFailure(f"bench bug: {where}{key} has no {key}_runs beside it")


def run_main(bench: str, json_mode: bool, body: Callable[[], tuple[dict[str, Any], list[str]]],
             config: GuestConfig | None = None) -> int:
    """Run ``body`` (which returns the JSON summary and the text lines) and print (rule 6),
    with the host's load average before and after (``host_load``: benches share machines)."""
    before = os.getloadavg()[0]
    try:
        summary, lines = body()
        check_ratios(summary)
        after = os.getloadavg()[0]
        summary["host_load"] = {"before": before, "after": after, "cpus": os.cpu_count()}
        lines = [*lines, f"host load (1-minute average): {before:.2f} before, {after:.2f} after, "
                         f"{os.cpu_count()} CPUs"]
    except BenchFailure as failure:
        where = f" [{config.describe()}]" if config is not None else ""
        print(f"bench {bench}: FAILED{where}: {failure.describe()}", file=sys.stderr)
        if failure.detail:
            print(failure.detail, file=sys.stderr)
        if json_mode:
            extra = {"guest": config.as_json()} if config is not None else {}
            print(json.dumps({**failure.as_json(), **extra}))
        return 1
    print(json.dumps(summary) if json_mode else "\n".join(lines))
    return 0


# --- the guest's configuration -------------------------------------------------------------

@dataclass(frozen=True)
class Attachment:
    """A ``--path``: how our device reaches the guest, the QEMU versions it works with (the
    first is the default) and a few words about it."""

    name: str
    qemus: tuple[str, ...]
    about: str


@dataclass(frozen=True)
class GuestConfig:
    """The path, QEMU and vCPUs a bench boots its guests with (rule 5): ``smp`` online vCPUs
    of ``maxcpus``."""

    path: str
    qemu: QemuBinary
    smp: int
    maxcpus: int

    @property
    def barriers_kept(self) -> bool:
        """False for QEMU 7.2 TCG with ``maxcpus`` 1: it then translates the guest without
        CF_PARALLEL and elides its memory barriers (fixed in 8.1)."""
        return not (self.qemu.label == "7.2" and self.maxcpus == 1)

    def cpus(self) -> str:
        """The ``-smp`` value: ``2``, or ``1,maxcpus=2``."""
        return str(self.smp) if self.maxcpus == self.smp else f"{self.smp},maxcpus={self.maxcpus}"

    def qemu_args(self) -> list[str]:
        """QEMU arguments beyond the launcher's ``-smp SMP`` (QEMU merges ``-smp`` options)."""
        return [] if self.maxcpus == self.smp else ["-smp", f"maxcpus={self.maxcpus}"]

    def barriers(self) -> str:
        """Which configuration keeps the guest's memory barriers, or that none does."""
        if not self.barriers_kept:
            return ("DROPPED: QEMU 7.2 TCG with one vCPU elides guest memory barriers; "
                    "event-idx drivers can lose interrupts")
        if self.qemu.label != "7.2":
            return f"kept: QEMU {self.qemu.label} TCG emits them with any vCPU count"
        if self.smp > 1:
            return f"kept: {self.smp} vCPUs under QEMU 7.2 TCG"
        return f"kept: QEMU 7.2 TCG emits them when maxcpus > 1 ({self.smp} vCPU online of {self.maxcpus})"

    def describe(self, version: str | None = None) -> str:
        """``QEMU 7.2.22, TCG -smp 1,maxcpus=2, path vhost-user; barriers kept: ...``."""
        return (f"QEMU {version or self.qemu.version()}, TCG -smp {self.cpus()}, path {self.path}; "
                f"barriers {self.barriers()}")

    def as_json(self, version: str | None = None) -> dict[str, Any]:
        """The ``guest`` object of a bench's JSON."""
        return {"path": self.path, "qemu": version or self.qemu.version(), "qemu_label": self.qemu.label,
                "smp": self.smp, "maxcpus": self.maxcpus, "barriers_kept": self.barriers_kept,
                "barriers": self.barriers()}


def add_guest_options(parser: argparse.ArgumentParser, paths: Sequence[Attachment]) -> None:
    """``--path``, ``--qemu``, ``--smp``, ``--maxcpus`` and ``--allow-dropped-barriers`` (rule 5)."""
    about = "; ".join(f"{p.name}: {p.about} (QEMU {', '.join(p.qemus)})" for p in paths)
    parser.add_argument("--path", choices=[p.name for p in paths], default=paths[0].name,
                        help=f"how our device reaches the guest (default {paths[0].name}); {about}")
    parser.add_argument("--qemu", choices=("7.2", "11.1"), default=None,
                        help="which QEMU boots the guest (default: the path's first)")
    parser.add_argument("--smp", type=int, default=None, help="guest vCPUs online (default 1)")
    parser.add_argument("--maxcpus", type=int, default=None,
                        help="guest vCPUs possible (default: 2 under QEMU 7.2, whose TCG elides the guest's memory "
                             "barriers when it is 1; else --smp)")
    parser.add_argument("--allow-dropped-barriers", action="store_true",
                        help="allow --maxcpus 1 under QEMU 7.2 (for comparisons; the output says the barriers dropped)")


def guest_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 paths: Sequence[Attachment]) -> GuestConfig:
    """The configuration ``add_guest_options`` asked for; ``parser.error`` on one that cannot work."""
    path = next(p for p in paths if p.name == args.path)
    label = args.qemu if args.qemu is not None else path.qemus[0]
    if label not in path.qemus:
        parser.error(f"--path {path.name} works with QEMU {' or '.join(path.qemus)} only ({path.about})")
    smp = args.smp if args.smp is not None else 1
    maxcpus = args.maxcpus if args.maxcpus is not None else (max(smp, 2) if label == "7.2" else smp)
    if smp <= 0 or maxcpus < smp:
        parser.error("--smp must be positive and --maxcpus at least --smp")
    config = GuestConfig(path.name, qemu_binary(label), smp, maxcpus)
    if not config.barriers_kept and not args.allow_dropped_barriers:
        parser.error("--smp 1 --maxcpus 1 under QEMU 7.2: TCG then elides the guest's memory barriers (event-idx "
                     "drivers lose interrupts); add --allow-dropped-barriers to run it anyway")
    return config


# --- host processes and files --------------------------------------------------------------

def need(tool: str, bench: str, package: str) -> str:
    """The path of ``tool``; SystemExit naming the package that has it."""
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench {bench}: {tool} not found (apt-get install {package})")
    return path


def end_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """End a process we started, by its PID: ``harness.processes.end_process`` with the
    benches' longer ``grace``."""
    _end_process(proc, grace)


def python_env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH (for ``python -m devmodels mpqemu``)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def make_image(path: Path, size_mb: int) -> None:
    """A raw disk image of ``size_mb`` MiB of random data, on disk."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def workdir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (created) if given, else a temporary directory removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)
