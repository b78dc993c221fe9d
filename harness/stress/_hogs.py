"""Host processes the stress mode starts and watches: CPU hogs, and the identity of a server.

Rules:

1. ``CpuHogs`` starts ``count`` busy processes (``sha256sum /dev/zero``: all CPU, no I/O, no
   memory) and ends exactly those, by PID (SIGTERM, then SIGKILL), however the run ends.
   ``alive()`` says whether all of them still ran, so a run can show that the host really
   stayed busy.
2. ``ProcessIdentity`` names one process by PID and start time (``/proc/PID/stat`` field 22):
   a process that died, or a PID reused by another process (a restart), no longer matches.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from devmodels import HostError, UsageError

__all__ = ["CpuHogs", "ProcessIdentity", "HOG_ARGV"]

HOG_ARGV = ("sha256sum", "/dev/zero")
"""One CPU hog: hashes zeros until it is ended."""


class CpuHogs:
    """``count`` CPU hogs for the duration of a ``with`` block (rule 1).

    Raises:
        UsageError: a negative count.
        HostError: a hog could not be started.
    """

    def __init__(self, count: int = 2) -> None:
        if count < 0:
            raise UsageError(f"the number of CPU hogs must not be negative, not {count}")
        self.count = count
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        """The hogs' PIDs."""
        return [p.pid for p in self._procs]

    def start(self) -> CpuHogs:
        """Start the hogs."""
        for _ in range(self.count):
            try:
                proc = subprocess.Popen(HOG_ARGV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            except OSError as exc:
                self.stop()
                raise HostError(f"cannot start a CPU hog ({' '.join(HOG_ARGV)}): {exc}") from exc
            self._procs.append(proc)
        return self

    def alive(self) -> bool:
        """Whether every hog still runs."""
        return all(p.poll() is None for p in self._procs)

    def stop(self) -> None:
        """End the hogs by PID (idempotent)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)

    def __enter__(self) -> CpuHogs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcessIdentity:
    """One process, by PID and start time (rule 2).

    Raises:
        HostError: no such process.
    """

    def __init__(self, pid: int) -> None:
        start = _start_time(pid)
        if start is None:
            raise HostError(f"process {pid} does not exist")
        self.pid = pid
        self.start_time = start

    def same(self) -> bool:
        """Whether the process still runs and is the same process (not dead, not a new one
        under the same PID). A zombie counts as dead."""
        stat = _stat_fields(self.pid)
        return stat is not None and stat[0] != "Z" and int(stat[19]) == self.start_time

    def __repr__(self) -> str:
        return f"ProcessIdentity(pid={self.pid}, start_time={self.start_time})"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    _, _, rest = text.rpartition(")")  # the command name may hold spaces and parentheses
    fields = rest.split()
    return fields if len(fields) > 19 else None


def _start_time(pid: int) -> int | None:
    stat = _stat_fields(pid)
    return int(stat[19]) if stat is not None else None
