"""What one stress run and one path came to, read from the guest's lines and the host's checks.

Rules:

1. fio's verdict comes from its own output: the exit status, the JSON's top-level ``error``
   and every job's ``error`` (84, EILSEQ, is a verification failure), and the
   verification messages fio printed beside the JSON (``verify failed``, ``bad magic``,
   ...). Each failed check or message is one verify error; a run whose fio output cannot
   be read has one too, so missing figures never pass.
2. A run passes when it did not hang, the load began and ended, no verify or data error
   was seen, the server is the same live process at the end of the load as at its start
   (and for vhost-user the front-end never left it), and no driver message says the
   guest gave up on or reset the device. Everything else is named in ``problems``.
3. A path's summary adds its runs up; it passes when every run passed and at least one ran.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FioOutcome", "parse_fio", "parse_ping", "RunResult", "PathSummary", "summarize", "VERIFY_MESSAGES"]

EILSEQ = 84
VERIFY_MESSAGES = re.compile(r"verify failed|bad magic|bad header|verify type mismatch|bad pattern|"
                             r"verify: bad|crc32c: verify|md5: verify", re.IGNORECASE)


@dataclass(frozen=True)
class FioOutcome:
    """fio's figures and errors for one run (rule 1)."""

    status: int | None
    error: int
    job_errors: tuple[int, ...]
    verify_messages: tuple[str, ...]
    read_bytes: int
    write_bytes: int
    read_ios: int
    write_ios: int
    runtime_ms: int
    readable: bool

    @property
    def verify_errors(self) -> int:
        """Failed checks: fio status, the error fields, verification messages, unreadable output."""
        errors = len(self.verify_messages) + sum(1 for e in (self.error, *self.job_errors) if e)
        if not self.readable or (self.status not in (0, None) and not errors):
            errors += 1
        return errors


def parse_fio(status_line: str | None, text: str) -> FioOutcome:
    """fio's outcome from its exit status (``STRESS-FIO-RC N``, None when absent) and the text
    between ``STRESS-FIO-BEGIN`` and ``STRESS-FIO-END`` (rule 1)."""
    status = None
    if status_line is not None:
        match = re.search(r"-?\d+", status_line)
        status = int(match.group()) if match else None
    data: Any = None
    rest = text
    start = text.find("{")
    if start >= 0:
        try:
            data, end = json.JSONDecoder().raw_decode(text[start:])
            rest = text[:start] + text[start + end:]
        except ValueError:
            data = None
    messages = tuple(line.strip() for line in rest.splitlines() if VERIFY_MESSAGES.search(line))
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list) or not jobs or not all(isinstance(j, dict) for j in jobs):
        return FioOutcome(status, 0, (), messages, 0, 0, 0, 0, 0, False)

    def total(direction: str, key: str) -> int:
        return sum(int(j.get(direction, {}).get(key, 0) or 0) for j in jobs)

    return FioOutcome(
        status=status,
        error=int(data.get("error", 0) or 0),
        job_errors=tuple(int(j.get("error", 0) or 0) for j in jobs),
        verify_messages=messages,
        read_bytes=total("read", "io_bytes"),
        write_bytes=total("write", "io_bytes"),
        read_ios=total("read", "total_ios"),
        write_ios=total("write", "total_ios"),
        runtime_ms=max(int(j.get("job_runtime", 0) or 0) for j in jobs),
        readable=True,
    )


_PING = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def parse_ping(line: str) -> tuple[int, int] | None:
    """(transmitted, received) from busybox ping's summary, or None."""
    match = _PING.search(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class RunResult:
    """One guest's run on one path (rule 2).

    ``bytes_moved`` is fio's bytes read and written for a disk, the bytes the TCP streams
    carried both ways for a NIC; ``mb_per_s`` divides it by the load's seconds; ``iops`` is
    fio's I/Os per second (disks); ``tcp_tx_mb_per_s`` and ``tcp_rx_mb_per_s`` the streams'
    own rates (NICs). ``ping`` is (sent, received) of the flood.
    """

    path: str
    run: int
    hung: bool = False
    hang: str = ""
    began: bool = False
    ended: bool = False
    seconds: float = 0.0
    boot_seconds: float = 0.0
    load_seconds: float = 0.0
    bytes_moved: int = 0
    mb_per_s: float = 0.0
    iops: float = 0.0
    tcp_tx_mb_per_s: float = 0.0
    tcp_rx_mb_per_s: float = 0.0
    ping: tuple[int, int] | None = None
    verify_errors: int = 0
    data_errors: int = 0
    server_pid: int | None = None
    server_same: bool = False
    server_detail: str = ""
    fallback: str = ""
    layout: str = ""
    driver_messages: list[str] = field(default_factory=list)
    hogs: bool = True
    problems: list[str] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Rule 2."""
        return not self.problems

    def judge(self) -> None:
        """Fill ``problems`` from the fields (rule 2)."""
        problems = []
        if self.hung:
            problems.append(f"hang: {self.hang}")
        elif not self.began:
            problems.append("the load never began")
        elif not self.ended:
            problems.append("the load never ended")
        if self.verify_errors:
            problems.append(f"{self.verify_errors} verify error(s)")
        if self.data_errors:
            problems.append(f"{self.data_errors} data error(s)")
        if not self.server_same:
            problems.append(f"server: {self.server_detail or 'not the same live process'}")
        if self.fallback:
            problems.append(f"vhost-user: {self.fallback}")
        if self.driver_messages:
            problems.append(f"{len(self.driver_messages)} driver message(s): {self.driver_messages[0]}")
        if not self.hogs:
            problems.append("a CPU hog ended early")
        if self.began and self.ended and not self.bytes_moved:
            problems.append("no data moved")
        self.problems = problems + [p for p in self.problems if p not in problems]

    def as_json(self) -> dict[str, object]:
        """Every field, and ``passed``."""
        out = asdict(self)
        out["passed"] = self.passed
        out["seconds"] = round(self.seconds, 1)
        out["load_seconds"] = round(self.load_seconds, 1)
        out["boot_seconds"] = round(self.boot_seconds, 1)
        for key in ("mb_per_s", "iops", "tcp_tx_mb_per_s", "tcp_rx_mb_per_s"):
            out[key] = round(float(out[key]), 2)
        return out


@dataclass(frozen=True)
class PathSummary:
    """The runs of one path added up (rule 3)."""

    path: str
    kind: str
    attachment: str
    qemu: str
    guest_cpus: str
    runs: int
    passed_runs: int
    hangs: int
    verify_errors: int
    data_errors: int
    bytes_moved: int
    mb_per_s: float
    iops: float
    tcp_tx_mb_per_s: float
    tcp_rx_mb_per_s: float
    ping_sent: int
    ping_received: int
    server_deaths: int
    fallbacks: int
    driver_messages: int
    seconds: float

    @property
    def passed(self) -> bool:
        """Rule 3."""
        return self.runs > 0 and self.passed_runs == self.runs

    @property
    def ping_loss(self) -> float | None:
        """Percent of the flood's echoes unanswered, None without a flood."""
        if not self.ping_sent:
            return None
        return 100.0 * (self.ping_sent - self.ping_received) / self.ping_sent

    def as_json(self) -> dict[str, object]:
        """Every field, ``ping_loss`` and ``passed``."""
        out = asdict(self)
        out["ping_loss"] = None if self.ping_loss is None else round(self.ping_loss, 3)
        out["passed"] = self.passed
        for key in ("mb_per_s", "iops", "tcp_tx_mb_per_s", "tcp_rx_mb_per_s", "seconds"):
            out[key] = round(float(out[key]), 2)
        return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(path: str, kind: str, attachment: str, qemu: str, guest_cpus: str,
              runs: Sequence[RunResult]) -> PathSummary:
    """Rule 3: counts add up; rates are the mean over the runs whose load ended."""
    finished = [r for r in runs if r.ended]
    pings = [r.ping for r in runs if r.ping is not None]
    return PathSummary(
        path=path, kind=kind, attachment=attachment, qemu=qemu, guest_cpus=guest_cpus,
        runs=len(runs),
        passed_runs=sum(r.passed for r in runs),
        hangs=sum(r.hung for r in runs),
        verify_errors=sum(r.verify_errors for r in runs),
        data_errors=sum(r.data_errors for r in runs),
        bytes_moved=sum(r.bytes_moved for r in runs),
        mb_per_s=_mean([r.mb_per_s for r in finished]),
        iops=_mean([r.iops for r in finished]),
        tcp_tx_mb_per_s=_mean([r.tcp_tx_mb_per_s for r in finished]),
        tcp_rx_mb_per_s=_mean([r.tcp_rx_mb_per_s for r in finished]),
        ping_sent=sum(p[0] for p in pings),
        ping_received=sum(p[1] for p in pings),
        server_deaths=sum(not r.server_same for r in runs),
        fallbacks=sum(bool(r.fallback) for r in runs),
        driver_messages=sum(len(r.driver_messages) for r in runs),
        seconds=sum(r.seconds for r in runs),
    )
