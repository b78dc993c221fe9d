"""Interrupt causes, masking, moderation and the delay timers (SDM §3.2.7, §3.4, §13.4.17–21).

Rules:

1. The interrupt condition is ``ICR & IMS != 0``. Reading ICR returns and clears every
   cause (SDM §13.4.17); writing ICR clears the bits written as 1; ICS sets causes; IMS
   sets mask bits; IMC clears them. Each of these re-evaluates the output at once.
2. Output: INTx follows the condition as a level; with MSI enabled (only when the VMM
   asked for the capability) one message is sent each time the condition rises.
3. Time is an argument. The unit keeps the last ``now`` the VMM gave to ``tick`` and
   arms absolute deadlines from it; ``next_deadline()`` tells the VMM when to call
   ``tick`` next. No clock is ever read here.
4. Moderation (``mitigation=True``):
   - ITR (256 ns units, 0 = off): after an assertion, the next one waits until
     ``last + ITR*256`` ns (SDM §13.4.18);
   - RDTR (1.024 µs units) restarts with every received packet; RADV starts with the
     first one and is not restarted; either expiring raises RXT0. RDTR = 0 raises RXT0
     immediately. Writing RDTR with FPD set flushes (SDM §3.2.7.1);
   - TIDV restarts with every written-back descriptor that has RS and IDE; TADV starts
     with the first; either raises TXDW. RS without IDE raises TXDW at once and cancels
     both (SDM §3.3.3.1 IDE, §3.4.1).
   With ``mitigation=False`` every cause is raised immediately (for VMMs without timers).
"""

from __future__ import annotations

from typing import Protocol

from .._errors import SnapshotError
from .._regs import RegisterFile
from .._state import check_bool, check_int
from .._trace import tracepoint
from . import regs as r

__all__ = ["InterruptUnit", "IrqOutput", "TIMER_NAMES"]

_tp_irq = tracepoint("e1000.irq")

ITR_UNIT_NS = 256
DELAY_UNIT_NS = 1024
TIMER_NAMES = ("itr", "rdtr", "radv", "tidv", "tadv")


class IrqOutput(Protocol):
    """What the unit drives: the PCI function's INTx pin and MSI."""

    def set_intx(self, asserted: bool) -> None:
        """Drive INTx."""
        ...

    def signal(self, vector: int) -> bool:
        """Send an MSI/MSI-X vector; ``False`` when neither is enabled."""
        ...


class InterruptUnit:
    """ICR/IMS logic plus the moderation timers (rules 1–4).

    Args:
        regs: the device's register file (ICR, IMS, ITR, RDTR, RADV, TIDV, TADV live there).
        output: the PCI function.
        mitigation: honour ITR and the delay timers.
    """

    def __init__(self, regs: RegisterFile, output: IrqOutput, mitigation: bool = True) -> None:
        self.regs = regs
        self.output = output
        self.mitigation = mitigation
        self.now = 0
        self.asserted = False
        self.last_assert: int | None = None
        self.deadlines: dict[str, int] = {}

    def reset(self) -> None:
        """Deassert and cancel every timer (device reset)."""
        self.deadlines.clear()
        self.last_assert = None
        if self.asserted:
            self.asserted = False
            self.output.set_intx(False)

    # -- causes --------------------------------------------------------------------------

    def raise_cause(self, bits: int) -> None:
        """Set ICR bits and re-evaluate the output."""
        if bits:
            self.regs["ICR"] = self.regs["ICR"] | (bits & r.ICR_MASK)
            self.update()

    def read_icr(self, stored: int) -> int:
        """ICR read hook: return the causes and clear them (rule 1)."""
        self.regs["ICR"] = 0
        self.update()
        return stored

    def update(self) -> None:
        """Drive the output from ``ICR & IMS`` and ITR (rules 2, 4)."""
        pending = self.regs["ICR"] & self.regs["IMS"]
        if not pending:
            self.deadlines.pop("itr", None)
            if self.asserted:
                self.asserted = False
                self.output.set_intx(False)
            return
        if self.asserted:
            return
        itr = self.regs["ITR"] & 0xFFFF
        if self.mitigation and itr and self.last_assert is not None:
            due = self.last_assert + itr * ITR_UNIT_NS
            if self.now < due:
                self.deadlines["itr"] = due
                return
        self.deadlines.pop("itr", None)
        self.asserted = True
        self.last_assert = self.now
        if _tp_irq.on:
            _tp_irq.emit(icr=self.regs["ICR"], ims=self.regs["IMS"], now=self.now)
        if not self.output.signal(0):
            self.output.set_intx(True)

    # -- delay timers --------------------------------------------------------------------

    def rx_packet(self) -> None:
        """A received packet was written back (RDTR/RADV, rule 4)."""
        rdtr = self.regs["RDTR"] & 0xFFFF
        if not self.mitigation or rdtr == 0:
            self.deadlines.pop("rdtr", None)
            self.deadlines.pop("radv", None)
            self.raise_cause(r.ICR_RXT0)
            return
        self.deadlines["rdtr"] = self.now + rdtr * DELAY_UNIT_NS
        radv = self.regs["RADV"] & 0xFFFF
        if radv and "radv" not in self.deadlines:
            self.deadlines["radv"] = self.now + radv * DELAY_UNIT_NS

    def rx_flush(self) -> None:
        """RDTR.FPD: report pending receive work now."""
        if "rdtr" in self.deadlines or "radv" in self.deadlines:
            self.deadlines.pop("rdtr", None)
            self.deadlines.pop("radv", None)
            self.raise_cause(r.ICR_RXT0)

    def tx_writeback(self, delayed: bool) -> None:
        """A descriptor with RS was written back; ``delayed`` is its IDE bit (rule 4)."""
        tidv = self.regs["TIDV"] & 0xFFFF
        if not delayed or not self.mitigation or tidv == 0:
            self.deadlines.pop("tidv", None)
            self.deadlines.pop("tadv", None)
            self.raise_cause(r.ICR_TXDW)
            return
        self.deadlines["tidv"] = self.now + tidv * DELAY_UNIT_NS
        tadv = self.regs["TADV"] & 0xFFFF
        if tadv and "tadv" not in self.deadlines:
            self.deadlines["tadv"] = self.now + tadv * DELAY_UNIT_NS

    # -- time ----------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        """The earliest armed deadline (absolute ns), or ``None``."""
        return min(self.deadlines.values()) if self.deadlines else None

    def tick(self, now_ns: int) -> None:
        """Advance time to ``now_ns`` and fire what expired (time never runs backwards)."""
        if now_ns > self.now:
            self.now = now_ns
        now = self.now
        expired = {name for name, due in self.deadlines.items() if due <= now}
        if not expired:
            return
        if expired & {"rdtr", "radv"}:
            self.deadlines.pop("rdtr", None)
            self.deadlines.pop("radv", None)
            self.raise_cause(r.ICR_RXT0)
        if expired & {"tidv", "tadv"}:
            self.deadlines.pop("tidv", None)
            self.deadlines.pop("tadv", None)
            self.raise_cause(r.ICR_TXDW)
        if "itr" in expired:
            self.deadlines.pop("itr", None)
            self.update()

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self) -> tuple[int, bool, int, tuple[int, ...]]:
        """(now, asserted, last_assert or -1, deadlines per ``TIMER_NAMES`` or -1)."""
        last = -1 if self.last_assert is None else self.last_assert
        return self.now, self.asserted, last, tuple(self.deadlines.get(n, -1) for n in TIMER_NAMES)

    @staticmethod
    def check_snapshot(now: object, asserted: object, last: object, deadlines: object) -> None:
        """Validate an interrupt-unit snapshot.

        Raises:
            SnapshotError: a field is out of range.
        """
        check_int("irq.now", now, 0, (1 << 63) - 1)
        check_bool("irq.asserted", asserted)
        check_int("irq.last_assert", last, -1, (1 << 63) - 1)
        if not isinstance(deadlines, tuple) or len(deadlines) != len(TIMER_NAMES):
            raise SnapshotError("irq.deadlines", f"expected {len(TIMER_NAMES)} integers")
        for name, value in zip(TIMER_NAMES, deadlines, strict=True):
            check_int(f"irq.deadlines.{name}", value, -1, (1 << 63) - 1)

    def load(self, now: int, asserted: bool, last: int, deadlines: tuple[int, ...]) -> None:
        """Apply a checked snapshot (the output pin is re-driven by the caller)."""
        self.now = now
        self.asserted = asserted
        self.last_assert = None if last < 0 else last
        self.deadlines = {n: d for n, d in zip(TIMER_NAMES, deadlines, strict=True) if d >= 0}
