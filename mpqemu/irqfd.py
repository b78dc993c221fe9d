"""INTx over an irqfd and a resample fd, as QEMU's remote I/O hub drives them.

QEMU 7.2's proxy sends SET_IRQFD with two eventfds: ``fds[0]`` is an irqfd that KVM
(``KVM_IRQFD`` with ``KVM_IRQFD_FLAG_RESAMPLE``) turns into an asserted level on the
device's GSI; ``fds[1]`` is the resample fd that KVM signals when the guest EOIs that GSI,
after de-asserting it. ``hw/remote/iohub.c`` follows the line like this, and so does
``IrqfdLevelSink``:

1. A rising level writes the irqfd once. While the level stays high nothing more is sent.
2. When the resample fd fires (the guest's EOI), it is drained, and if the level is still
   high the irqfd is written again (the interrupt re-asserts, as a level-triggered line
   would).
3. A falling level sends nothing: KVM already de-asserted the GSI at EOI.

The sink owns both descriptors and closes them in ``close``; a write or read that fails
(the peer closed its end, a non-eventfd descriptor) is logged, never raised.

``IntxPort`` is the ``LevelSink`` installed as ``function.intx``: it remembers the
device's level and forwards it to the current ``IrqfdLevelSink``, so a sink that arrives
(or is replaced) while the line is high starts asserted.
"""

from __future__ import annotations

import logging
import os

from devmodels import LevelSink, NullLevelSink
from devmodels.fds import close_fds
from devmodels.trace import tracepoint

__all__ = ["IrqfdLevelSink", "IntxPort", "is_eventfd"]

_log = logging.getLogger("devmodels.mpqemu")
_tp_intx = tracepoint("mpqemu.intx")


def is_eventfd(fd: int) -> bool:
    """Whether ``fd`` is an eventfd (by its ``/proc/self/fd`` link; true if /proc is absent)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except FileNotFoundError:
        return not os.path.isdir("/proc/self/fd")
    except OSError:
        return False


class IrqfdLevelSink:
    """A level-triggered line carried by an irqfd plus a resample fd (rules 1–3).

    Args:
        irqfd: the eventfd to write when the line asserts; the sink takes ownership.
        resamplefd: the eventfd the peer signals at EOI; the sink takes ownership.

    Attributes:
        level: the line's current level.
        signals: how many times the irqfd was written.
        resamples: how many resample events were handled.
    """

    def __init__(self, irqfd: int, resamplefd: int) -> None:
        self.irqfd = irqfd
        self.resamplefd = resamplefd
        self.level = False
        self.signals = 0
        self.resamples = 0
        self.closed = False
        for fd in (irqfd, resamplefd):
            try:
                os.set_blocking(fd, False)
            except OSError as exc:
                _log.error("irqfd: cannot make fd %d non-blocking: %s", fd, exc)

    def set_level(self, asserted: bool) -> None:
        """Follow the device's INTx level; a rising edge writes the irqfd (rule 1)."""
        asserted = bool(asserted)
        rising = asserted and not self.level
        self.level = asserted
        if _tp_intx.on:
            _tp_intx.emit(level=asserted)
        if rising:
            self._signal()

    def on_resample(self) -> None:
        """The resample fd is readable: drain it and re-assert if still high (rule 2)."""
        if self.closed:
            return
        try:
            os.eventfd_read(self.resamplefd)
        except BlockingIOError:
            return  # spurious wake-up: nothing to drain
        except OSError as exc:
            _log.error("irqfd: reading resample fd %d failed: %s", self.resamplefd, exc)
            return
        self.resamples += 1
        if self.level:
            self._signal()

    def _signal(self) -> None:
        if self.closed:
            return
        try:
            os.eventfd_write(self.irqfd, 1)
        except OSError as exc:
            _log.error("irqfd: writing irqfd %d failed: %s", self.irqfd, exc)
            return
        self.signals += 1

    def close(self) -> None:
        """Close both descriptors (idempotent)."""
        if self.closed:
            return
        self.closed = True
        close_fds((self.irqfd, self.resamplefd))

    def __repr__(self) -> str:
        return f"IrqfdLevelSink(irqfd={self.irqfd}, resamplefd={self.resamplefd}, level={self.level})"


class IntxPort:
    """The function's ``intx``: keeps the level and forwards it to ``target``."""

    def __init__(self) -> None:
        self.level = False
        self.target: LevelSink = NullLevelSink()

    def set_level(self, asserted: bool) -> None:
        """The device drove its INTx pin."""
        self.level = bool(asserted)
        self.target.set_level(self.level)

    def attach(self, target: LevelSink) -> None:
        """Forward to ``target`` from now on, telling it the current level."""
        self.target = target
        if self.level:
            target.set_level(True)

    def detach(self) -> None:
        """Stop forwarding (the level is still tracked)."""
        self.target = NullLevelSink()
