"""Fakes for the seam where a bench meets its guest (``bench.common.GuestSession``), so the
benches' failure paths can be tested without booting QEMU.

``FakeGuest`` plays console lines as a guest would print them and then ends its console
(QEMU exited) or goes silent (a hung job). ``fio_output`` and ``framed`` build those lines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence

from harness.guest import CHECK_MARKER, DONE_MARKER, parse_checks
from harness.qemu.launcher import BootResult

from .common import DONE_CHECK

__all__ = ["FakeGuest", "framed", "finished", "fio_output"]


class FakeGuest:
    """A ``GuestSession`` that plays ``lines``, then ``then``: ``"exit"`` (the console ends)
    or ``"hang"`` (nothing more comes; each read waits its whole timeout).

    Attributes:
        played: the lines read so far.
        finished: how often ``finish`` was called (QEMU ended).
    """

    def __init__(self, lines: Iterable[str], *, then: str = "exit", version: str = "7.2.99-fake",
                 exit_code: int = 0) -> None:
        self._lines = list(lines)
        self.played: list[str] = []
        self.then = then
        self.version = version
        self.exit_code = exit_code
        self.finished = 0

    @property
    def qemu_version(self) -> str:
        """The version this fake claims."""
        return self.version

    def read_line(self, timeout: float) -> str | None:
        """The next line; then EOFError (``exit``) or None after ``timeout`` s (``hang``)."""
        if self._lines:
            line = self._lines.pop(0)
            self.played.append(line)
            return line
        if self.then == "hang":
            time.sleep(timeout)
            return None
        raise EOFError("the fake console ended")

    def finish(self) -> BootResult:
        """What a launcher would report for the lines played so far."""
        self.finished += 1
        hung = self.then == "hang"
        return BootResult(log="\n".join(self.played), exit_code=-15 if hung else self.exit_code, elapsed=1.0,
                          checks=parse_checks(self.played), done=any(DONE_MARKER in x for x in self.played),
                          timed_out=hung)


def fio_output(direction: str = "read", *, iops: float = 1000.0, bw_bytes: int = 4_096_000, ios: int = 5000,
               error: int = 0, top_error: int | None = None, warning: str | None = None) -> list[str]:
    """The lines of ``fio --output-format=json`` for one job (as fio 3.33 prints them)."""
    other = "write" if direction == "read" else "read"
    doc: dict[str, object] = {"fio version": "fio-3.33", "jobs": [{
        "jobname": "job", "error": error,
        direction: {"iops": iops, "bw_bytes": bw_bytes, "total_ios": ios},
        other: {"iops": 0.0, "bw_bytes": 0, "total_ios": 0},
    }]}
    if top_error is not None:
        doc["error"] = top_error
    lines = [warning] if warning is not None else []
    return lines + json.dumps(doc, indent=2).splitlines()


def framed(side: str, job: str, run: int, output: Sequence[str], status: int = 0) -> list[str]:
    """One guest job as ``bench_job`` frames it."""
    return [f"BENCH-BEGIN {side} {job} {run}", *output, f"BENCH-END {side} {job} {run} {status}"]


def finished() -> list[str]:
    """What the guest prints after its last job: the done check and ``/init``'s marker."""
    return [f"{CHECK_MARKER} {DONE_CHECK} PASS", DONE_MARKER]
