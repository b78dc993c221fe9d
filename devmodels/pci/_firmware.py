"""Enumerate bus 0 and assign BARs the way firmware does (SeaBIOS ``pci_bios_init``).

Only config cycles are used, through a ``ConfigAccess`` (the legacy ports of a machine or
any other path), so this is exactly what a guest would see. Steps per function:

1. Read the vendor ID; 0xFFFF means no function. Check the multi-function bit for fn > 0.
2. Size each BAR (PCI 3.0 §6.2.5.1): with decode off, write all-ones, read back, restore.
   The size is the two's complement of the read-back address bits; 64-bit BARs combine
   both dwords.
3. Assign naturally aligned addresses from the I/O, 32-bit and 64-bit windows, largest
   first (fewest holes), then enable I/O, memory and bus-master decode as needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .defs import (
    PCI_BASE_ADDRESS_0,
    PCI_BASE_ADDRESS_MEM_PREFETCH,
    PCI_BASE_ADDRESS_MEM_TYPE_64,
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_CLASS_PROG,
    PCI_COMMAND,
    PCI_COMMAND_IO,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_DEVICE_ID,
    PCI_HEADER_TYPE,
    PCI_HEADER_TYPE_MULTI_FUNCTION,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_NUM_BARS,
    PCI_VENDOR_ID,
)
from .._errors import UsageError
from ._address import DevFn

__all__ = ["ConfigAccess", "BarInfo", "FunctionInfo", "Window", "enumerate_bus0"]


class ConfigAccess(Protocol):
    """Config cycles to (bus, devfn)."""

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        """Read config space."""
        ...

    def config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        """Write config space."""
        ...


@dataclass
class Window:
    """An address window to allocate BARs from."""

    base: int
    size: int
    next: int = -1

    def allocate(self, size: int) -> int | None:
        """A naturally aligned block of ``size`` bytes, or ``None`` when full."""
        if self.next < 0:
            self.next = self.base
        address = (self.next + size - 1) & ~(size - 1)
        if address + size > self.base + self.size:
            return None
        self.next = address + size
        return address


@dataclass(frozen=True)
class BarInfo:
    """A sized and assigned BAR."""

    index: int
    kind: str  # "io", "mem32", "mem64"
    prefetchable: bool
    size: int
    address: int | None


@dataclass
class FunctionInfo:
    """A function found on bus 0."""

    devfn: DevFn
    vendor_id: int
    device_id: int
    class_code: int
    interrupt_pin: int
    interrupt_line: int
    bars: list[BarInfo] = field(default_factory=list)

    @property
    def bdf(self) -> str:
        """``00:DD.F``."""
        return f"00:{self.devfn >> 3:02x}.{self.devfn & 7}"


def _size_bar(cfg: ConfigAccess, at: int, index: int) -> tuple[BarInfo | None, int]:
    """Size BAR ``index``; returns (info, how many BAR slots it used)."""
    offset = PCI_BASE_ADDRESS_0 + 4 * index
    original = cfg.config_read(0, at, offset, 4)
    cfg.config_write(0, at, offset, 4, 0xFFFF_FFFF)
    probe = cfg.config_read(0, at, offset, 4)
    cfg.config_write(0, at, offset, 4, original)
    if probe == 0:
        return None, 1
    # The size is the lowest writable address bit (Linux ``pci_size``): unlike ``~mask + 1``
    # it is a power of two even if a function implements a non-contiguous mask, and a BAR
    # whose address bits are all read-only (only its type bits read back) is no BAR.
    if original & PCI_BASE_ADDRESS_SPACE_IO:
        mask = probe & 0xFFFF_FFFC
        return (BarInfo(index, "io", False, mask & -mask, None) if mask else None), 1
    prefetchable = bool(original & PCI_BASE_ADDRESS_MEM_PREFETCH)
    if original & PCI_BASE_ADDRESS_MEM_TYPE_64 and index < PCI_NUM_BARS - 1:
        upper_original = cfg.config_read(0, at, offset + 4, 4)
        cfg.config_write(0, at, offset + 4, 4, 0xFFFF_FFFF)
        upper = cfg.config_read(0, at, offset + 4, 4)
        cfg.config_write(0, at, offset + 4, 4, upper_original)
        mask = (upper << 32) | (probe & 0xFFFF_FFF0)
        return (BarInfo(index, "mem64", prefetchable, mask & -mask, None) if mask else None), 2
    mask = probe & 0xFFFF_FFF0
    return (BarInfo(index, "mem32", prefetchable, mask & -mask, None) if mask else None), 1


def enumerate_bus0(
    cfg: ConfigAccess,
    *,
    io: Window,
    mem32: Window,
    mem64: Window | None = None,
    irq_of_pin: dict[tuple[int, int], int] | None = None,
) -> list[FunctionInfo]:
    """Find every function on bus 0, assign its BARs and enable its decode.

    Args:
        cfg: the config-cycle path.
        io, mem32, mem64: the windows to allocate from (64-bit BARs fall back to mem32).
        irq_of_pin: (slot, pin) -> IRQ number written to Interrupt Line.

    Raises:
        UsageError: a window is too small for the BARs found.
    """
    found: list[FunctionInfo] = []
    for device in range(32):
        for function in range(8):
            at = device << 3 | function
            vendor = cfg.config_read(0, at, PCI_VENDOR_ID, 2)
            if vendor == 0xFFFF:
                if function == 0:
                    break
                continue
            info = FunctionInfo(
                devfn=DevFn(at),
                vendor_id=vendor,
                device_id=cfg.config_read(0, at, PCI_DEVICE_ID, 2),
                class_code=cfg.config_read(0, at, PCI_CLASS_PROG, 4) & 0xFF_FFFF,
                interrupt_pin=cfg.config_read(0, at, PCI_INTERRUPT_PIN, 1),
                interrupt_line=0xFF,
            )
            command = cfg.config_read(0, at, PCI_COMMAND, 2)
            cfg.config_write(0, at, PCI_COMMAND, 2, command & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY))
            index = 0
            while index < PCI_NUM_BARS:
                bar, used = _size_bar(cfg, at, index)
                if bar is not None:
                    info.bars.append(bar)
                index += used
            found.append(info)
            if function == 0 and not cfg.config_read(0, at, PCI_HEADER_TYPE, 1) & PCI_HEADER_TYPE_MULTI_FUNCTION:
                break
    _assign(cfg, found, io, mem32, mem64)
    for info in found:
        if irq_of_pin and info.interrupt_pin:
            line = irq_of_pin.get((info.devfn >> 3, info.interrupt_pin), 0xFF)
            cfg.config_write(0, info.devfn, PCI_INTERRUPT_LINE, 1, line)
            info.interrupt_line = line
    return found


def _assign(cfg: ConfigAccess, found: list[FunctionInfo], io: Window, mem32: Window, mem64: Window | None) -> None:
    requests = [(bar.size, info, i) for info in found for i, bar in enumerate(info.bars)]
    requests.sort(key=lambda r: -r[0])
    for _, info, i in requests:
        bar = info.bars[i]
        if bar.kind == "io":
            address = io.allocate(bar.size)
        elif bar.kind == "mem64" and mem64 is not None:
            address = mem64.allocate(bar.size)
        else:
            address = mem32.allocate(bar.size)
        if address is None:
            raise UsageError(f"{info.bdf} BAR{bar.index} ({bar.size:#x} bytes, {bar.kind}) does not fit its window")
        offset = PCI_BASE_ADDRESS_0 + 4 * bar.index
        cfg.config_write(0, info.devfn, offset, 4, address & 0xFFFF_FFFF)
        if bar.kind == "mem64":
            cfg.config_write(0, info.devfn, offset + 4, 4, address >> 32)
        info.bars[i] = BarInfo(bar.index, bar.kind, bar.prefetchable, bar.size, address)
    for info in found:
        command = cfg.config_read(0, info.devfn, PCI_COMMAND, 2)
        if any(b.kind == "io" for b in info.bars):
            command |= PCI_COMMAND_IO
        if any(b.kind != "io" for b in info.bars):
            command |= PCI_COMMAND_MEMORY
        if info.bars:
            command |= PCI_COMMAND_MASTER
        cfg.config_write(0, info.devfn, PCI_COMMAND, 2, command)
        info.bars.sort(key=lambda b: b.index)
