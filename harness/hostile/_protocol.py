"""The lines the guest program prints and the host's replies (``guest/main.c``).

Rules:

1. The guest prints, on the console and on the handshake port (its ``/dev/ttyS1``):
   ``HOSTILE-BEGIN <index> <name>``, ``HOSTILE-END <index> <name> <outcome> [detail]``,
   ``HOSTILE-FINISHED <count>`` and ``HOSTILE-ERROR <text>``. Index 0 is the baseline
   (no abuse, only the liveness check).
2. After every END line the guest waits for one word from the host: ``GO`` (run the next
   scenario) or ``STOP`` (leave now). The host checks the device server between the two.
3. The parser searches each line for a marker (a printk may share the line) and returns
   None for anything else.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["Outcome", "Begin", "End", "Finished", "GuestError", "Event", "parse_line", "GO", "STOP", "GUEST_OUTCOMES"]

GO = b"GO\n"
STOP = b"STOP\n"


class Outcome(enum.Enum):
    """What one scenario did to one device on one path."""

    PASS = "PASS"  # architected error behaviour, liveness check OK
    MISBEHAVED = "MISBEHAVED"  # alive, but the architected error behaviour was not seen
    DEVICE_DEAD = "DEVICE-DEAD"  # reset + one valid operation failed
    HANG = "HANG"  # no progress within the bound (guest alarm or host watchdog)
    SERVER_DIED = "SERVER-DIED"  # our device process exited
    VMM_DIED = "VMM-DIED"  # QEMU exited
    NOT_RUN = "NOT-RUN"  # never reached (the device did not work at all, too many restarts)
    SKIPPED = "SKIPPED"  # the path cannot run here (its QEMU is missing)


GUEST_OUTCOMES = frozenset({Outcome.PASS, Outcome.MISBEHAVED, Outcome.DEVICE_DEAD, Outcome.HANG})
"""The outcomes the guest itself reports; the host adds the others."""


@dataclass(frozen=True)
class Begin:
    """A scenario starts."""

    index: int
    name: str


@dataclass(frozen=True)
class End:
    """A scenario ended, as the guest saw it."""

    index: int
    name: str
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class Finished:
    """The guest ran every scenario it was asked to."""

    count: int


@dataclass(frozen=True)
class GuestError:
    """The guest program could not start (no device, no DMA range)."""

    text: str


Event = Begin | End | Finished | GuestError

_BEGIN = re.compile(r"HOSTILE-BEGIN (\d+) (\S+)")
_END = re.compile(r"HOSTILE-END (\d+) (\S+) (\S+)(?: (.*))?$")
_FINISHED = re.compile(r"HOSTILE-FINISHED (\d+)")
_ERROR = re.compile(r"HOSTILE-ERROR (.*)$")


def parse_line(line: str) -> Event | None:
    """The event a line reports, or None (rule 3). An END naming an outcome the guest does
    not report is a ``GuestError``."""
    line = line.rstrip("\r\n")
    if (m := _END.search(line)) is not None:
        try:
            outcome = Outcome(m.group(3))
        except ValueError:
            return GuestError(f"unknown outcome in {line!r}")
        if outcome not in GUEST_OUTCOMES:
            return GuestError(f"the guest cannot report {outcome.value}: {line!r}")
        return End(int(m.group(1)), m.group(2), outcome, (m.group(4) or "").strip())
    if (m := _BEGIN.search(line)) is not None:
        return Begin(int(m.group(1)), m.group(2))
    if (m := _FINISHED.search(line)) is not None:
        return Finished(int(m.group(1)))
    if (m := _ERROR.search(line)) is not None:
        return GuestError(m.group(1).strip())
    return None
