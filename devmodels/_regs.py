"""Register files as tables (QEMU ``macreg_readops``/``mac_reg_access`` as Python data).

Rules:

1. A device declares its registers once as ``Reg`` rows: name (the datasheet mnemonic),
   offset, size, access kind, implemented-bits mask, reset value, and optional hooks.
2. Dispatch is one dict lookup by offset, then the access check. There is no if/switch
   chain per register.
3. Access kinds: RO (writes ignored), RW (only ``mask`` bits change), W1C (writing 1 clears),
   RC (read clears), RC_W1C (read clears, and writing 1 clears: interrupt cause registers
   such as the e1000's ICR), WO (reads 0), W1S (writing 1 sets). A hook runs after the
   access rule (``on_write`` gets the value the rule produced; ``on_read`` sees the stored
   value before a read clears it); the table stays the truth about the access kind.
4. An access that hits no register start, or a narrower/wider access than the register
   allows (unless ``partial``), goes to one ``_unimplemented`` path: reads return 0, writes
   are dropped, and it is logged once per offset (vm-superio ``_ => 0``).
5. Registers that repeat are rows named ``NAME[i]`` (the e1000's RAL[n]/RAH[n] x16,
   MTA[n] x128); ``Reg.array`` makes such rows from one line.
6. Hooks are attached by register name: ``check_hook_names`` at import time turns a name
   that is not in the table into an error, so a misspelt key cannot drop a hook silently.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._errors import UsageError
from ._trace import tracepoint

__all__ = ["Access", "Reg", "RegisterFile", "check_hook_names"]

_log = logging.getLogger("devmodels.regs")


class Access(enum.Enum):
    """How guest accesses change a register."""

    RO = "ro"
    RW = "rw"
    W1C = "w1c"
    W1S = "w1s"
    RC = "rc"
    RC_W1C = "rc_w1c"
    WO = "wo"


ReadHook = Callable[[int], int]  # (stored value) -> value the guest sees
WriteHook = Callable[[int, int], int]  # (old, new after access rules) -> value to store


@dataclass(frozen=True)
class Reg:
    """One register row.

    Attributes:
        name: datasheet mnemonic, used in traces.
        offset: byte offset in the register window.
        size: width in bytes (1/2/4/8).
        access: the access kind.
        mask: implemented/writable bits.
        reset: value after reset.
        on_read: replaces the stored value seen by the guest.
        on_write: called with (old, new) after the access rules; returns the value to store
            (side effects such as starting DMA go here). For WO registers ``new`` is the
            written value under ``mask``.
        partial: narrower accesses are allowed (byte lanes inside the register).
    """

    name: str
    offset: int
    size: int = 4
    access: Access = Access.RW
    mask: int = 0xFFFF_FFFF
    reset: int = 0
    on_read: ReadHook | None = None
    on_write: WriteHook | None = None
    partial: bool = False

    @staticmethod
    def array(name: str, offset: int, count: int, stride: int = 4, **kwargs: object) -> list[Reg]:
        """``count`` registers ``name[i]`` every ``stride`` bytes from ``offset``."""
        return [Reg(f"{name}[{i}]", offset + i * stride, **kwargs) for i in range(count)]  # type: ignore[arg-type]


class RegisterFile:
    """Stored values for a table of ``Reg`` rows, with table-driven dispatch.

    Args:
        regs: the rows (offsets must not overlap).
        device: device name for traces.
    """

    def __init__(self, regs: Iterable[Reg], device: str) -> None:
        self.device = device
        self._regs: dict[int, Reg] = {}
        self._by_name: dict[str, Reg] = {}
        self.values: dict[int, int] = {}
        self._logged: set[tuple[str, int]] = set()
        covered: dict[int, str] = {}
        for reg in regs:
            if reg.size not in (1, 2, 4, 8):
                raise UsageError(f"{device}: register {reg.name} has size {reg.size}")
            for byte in range(reg.offset, reg.offset + reg.size):
                if byte in covered:
                    raise UsageError(f"{device}: register {reg.name} overlaps {covered[byte]}")
                covered[byte] = reg.name
            self._regs[reg.offset] = reg
            self._by_name[reg.name] = reg
        self._covered = covered
        self._tp_read = tracepoint(f"{device}.reg_read")
        self._tp_write = tracepoint(f"{device}.reg_write")
        self._tp_unimpl = tracepoint(f"{device}.unimplemented")
        self.reset()

    def reset(self) -> None:
        """Every register to its reset value."""
        self.values = {offset: reg.reset for offset, reg in self._regs.items()}

    def reg(self, name: str) -> Reg:
        """The row called ``name``."""
        return self._by_name[name]

    def __getitem__(self, name: str) -> int:
        return self.values[self._by_name[name].offset]

    def __setitem__(self, name: str, value: int) -> None:
        reg = self._by_name[name]
        self.values[reg.offset] = value & ((1 << (8 * reg.size)) - 1)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def registers(self) -> tuple[Reg, ...]:
        """All rows in offset order."""
        return tuple(self._regs[o] for o in sorted(self._regs))

    # -- guest accesses -------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read (rules 2–4)."""
        reg, shift = self._lookup(offset, size)
        if reg is None:
            return self._unimplemented(offset, size, "read")
        stored = self.values[reg.offset]
        if reg.access is Access.WO:
            value = 0
        elif reg.on_read is not None:
            value = reg.on_read(stored)
        else:
            value = stored
        if reg.access is Access.RC or reg.access is Access.RC_W1C:
            self.values[reg.offset] = 0
        if self._tp_read.on:
            self._tp_read.emit(reg=reg.name, value=value)
        return (value >> (8 * shift)) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write (rules 2–4)."""
        reg, shift = self._lookup(offset, size)
        if reg is None:
            self._unimplemented(offset, size, "write")
            return
        if self._tp_write.on:
            self._tp_write.emit(reg=reg.name, value=value)
        old = self.values[reg.offset]
        lane = ((1 << (8 * size)) - 1) << (8 * shift)
        written = (value << (8 * shift)) & lane
        mask = reg.mask & lane
        access = reg.access
        if access is Access.RO or access is Access.RC:
            new = old
        elif access is Access.W1C or access is Access.RC_W1C:
            new = old & ~(written & mask)
        elif access is Access.W1S:
            new = old | (written & mask)
        else:  # RW, WO
            new = (old & ~mask) | (written & mask)
        if reg.on_write is not None:
            new = reg.on_write(old, new)
        self.values[reg.offset] = new & ((1 << (8 * reg.size)) - 1)

    def _lookup(self, offset: int, size: int) -> tuple[Reg | None, int]:
        reg = self._regs.get(offset)
        if reg is not None:
            if size == reg.size or (reg.partial and size < reg.size):
                return reg, 0
            return None, 0
        name = self._covered.get(offset)
        if name is None:
            return None, 0
        reg = self._by_name[name]
        shift = offset - reg.offset
        if reg.partial and shift + size <= reg.size:
            return reg, shift
        return None, 0

    def _unimplemented(self, offset: int, size: int, op: str) -> int:
        key = (op, offset)
        if key not in self._logged and len(self._logged) < 4096:
            self._logged.add(key)
            _log.info("%s: unimplemented %s of %d bytes at %#x", self.device, op, size, offset)
        if self._tp_unimpl.on:
            self._tp_unimpl.emit(op=op, offset=offset, size=size)
        return 0


def check_hook_names(names: Iterable[str], hooks: Iterable[str], device: str) -> None:
    """Every register name ``hooks`` attaches to is a row of the table (rule 6).

    Raises:
        UsageError: naming the hook keys that match no register.
    """
    unknown = sorted(set(hooks) - set(names))
    if unknown:
        raise UsageError(f"{device}: hooks for registers not in the table: {', '.join(unknown)}")
