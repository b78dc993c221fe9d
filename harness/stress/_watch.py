"""Deciding from the console whether a guest under load still makes progress.

Rules:

1. ``LoadWatch`` is fed every console line (from the launcher's reader thread) and is asked
   by the host's loop, under one lock. It knows when the load began (``STRESS-BEGIN``) and
   ended (``STRESS-END``), and per progress group (``io`` for a disk; ``tcp`` and ``icmp``
   for a NIC) when its counters last changed.
2. A hang is a progress group whose counters did not change for ``silence`` seconds while
   the load ran, or a console without any progress line for that long (the guest itself
   stopped). The clock starts at ``STRESS-BEGIN``, so boot time never counts.
3. The last progress lines are kept for the report: they say what the guest saw when it
   stopped (requests in flight, interrupts counted).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

__all__ = ["LoadWatch", "parse_progress", "BEGIN", "END", "PROGRESS"]

BEGIN = "STRESS-BEGIN"
END = "STRESS-END"
PROGRESS = "STRESS-PROGRESS"
_PAIR = re.compile(r"(\w+)=(\S+)")
_END_LINE = re.compile(re.escape(END) + r"\s*$")
_KEEP = 6


def parse_progress(line: str) -> dict[str, str] | None:
    """The ``key=value`` pairs of a ``STRESS-PROGRESS`` line, or None for another line."""
    at = line.find(PROGRESS)
    if at < 0:
        return None
    return dict(_PAIR.findall(line[at + len(PROGRESS):]))


class LoadWatch:
    """Progress of one guest's load (rules 1–3).

    Args:
        groups: the progress keys that must keep changing (``("io",)``, ``("tcp", "icmp")``).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, groups: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.groups = tuple(groups)
        self._clock = clock
        self._lock = threading.Lock()
        self.begun_at: float | None = None
        self.ended_at: float | None = None
        self._last_line: float | None = None
        self._values: dict[str, str] = {}
        self._changed: dict[str, float] = {}
        self._recent: deque[str] = deque(maxlen=_KEEP)
        self.progress_lines = 0

    def feed(self, line: str) -> None:
        """One console line."""
        now = self._clock()
        with self._lock:
            if self.begun_at is None:
                if BEGIN in line:
                    self.begun_at = self._last_line = now
                    self._changed = dict.fromkeys(self.groups, now)
                return
            if self.ended_at is not None:
                return
            if _END_LINE.search(line):
                self.ended_at = now
                return
            fields = parse_progress(line)
            if fields is None:
                return
            self.progress_lines += 1
            self._last_line = now
            self._recent.append(line[line.find(PROGRESS):])
            for group in self.groups:
                value = fields.get(group)
                if value is not None and value != self._values.get(group):
                    self._values[group] = value
                    self._changed[group] = now

    @property
    def running(self) -> bool:
        """Between ``STRESS-BEGIN`` and ``STRESS-END``."""
        with self._lock:
            return self.begun_at is not None and self.ended_at is None

    def stall(self, silence: float) -> str | None:
        """None while the load makes progress (or is not running), else what stopped (rule 2)."""
        now = self._clock()
        with self._lock:
            if self.begun_at is None or self.ended_at is not None:
                return None
            assert self._last_line is not None
            quiet = now - self._last_line
            if quiet > silence:
                return f"no progress line for {quiet:.0f} s (the guest stopped reporting)"
            for group in self.groups:
                still = now - self._changed[group]
                if still > silence:
                    return f"{group} counters unchanged for {still:.0f} s at {self._values.get(group, 'none')}"
            return None

    def recent(self) -> list[str]:
        """The last progress lines (rule 3)."""
        with self._lock:
            return list(self._recent)
