"""Address spaces (MMIO and port I/O) and the device interface they dispatch to.

Rules (vm-device ``bus/mod.rs``, QEMU ``MemoryRegionOps``):

1. A device implements ``BusDevice``: ``read(offset, size) -> int`` and
   ``write(offset, size, value)``. It sees offsets inside its own range, never absolute
   addresses, and only naturally aligned accesses of 1, 2, 4 or 8 bytes.
2. ``Bus`` is a sorted range map. Registering a range that overlaps another is a
   ``UsageError``. Dispatch is one ``bisect``.
3. Unaligned, odd-sized or oversized accesses are split here, once, for every device: each
   piece is the largest naturally aligned access that fits inside one mapping (or one gap),
   so a split access is equivalent to the same bytes accessed one at a time.
4. Unmapped reads return all-ones and unmapped writes are dropped, as on a real bus, with a
   ``bus.unmapped`` trace event.
5. Re-entrancy guard: while a device's handler runs, a second access to that same device
   through this bus (a DMA loop back into its own registers, the QEMU CVE-2021-3929 class) is
   not dispatched; it behaves like an unmapped access and emits ``bus.reentrant``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ._errors import UsageError
from ._trace import tracepoint

__all__ = ["BusDevice", "Bus", "BusMapping", "MMIO_LIMIT", "PIO_LIMIT"]

MMIO_LIMIT = 1 << 64
PIO_LIMIT = 1 << 16

_ACCESS_SIZES = (8, 4, 2, 1)

_tp_unmapped = tracepoint("bus.unmapped")
_tp_reentrant = tracepoint("bus.reentrant")
_tp_access = tracepoint("bus.access")


@runtime_checkable
class BusDevice(Protocol):
    """What a bus dispatches to: register reads and writes at offsets in the device's range."""

    def read(self, offset: int, size: int) -> int:
        """Return the value of ``size`` bytes (1/2/4/8) at ``offset``, little-endian."""
        ...

    def write(self, offset: int, size: int, value: int) -> None:
        """Store ``value`` (``size`` bytes, 1/2/4/8) at ``offset``."""
        ...


@dataclass(eq=False)
class BusMapping:
    """One registered range of a bus."""

    base: int
    length: int
    device: BusDevice
    name: str
    active: bool = field(default=False, repr=False)

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.base + self.length


class Bus:
    """An address space: MMIO (64-bit) or port I/O (16-bit).

    Args:
        name: used in trace events and errors ("mmio", "pio").
        limit: one past the highest address.
    """

    def __init__(self, name: str = "mmio", limit: int = MMIO_LIMIT) -> None:
        self.name = name
        self.limit = limit
        self._maps: list[BusMapping] = []
        self._bases: list[int] = []

    # -- registration ---------------------------------------------------------------------

    def register(self, base: int, length: int, device: BusDevice, name: str = "") -> BusMapping:
        """Map ``device`` at ``[base, base+length)``.

        Raises:
            UsageError: the range is empty, leaves the address space, or overlaps a mapping.
        """
        if length <= 0:
            raise UsageError(f"{self.name}: mapping length must be positive, got {length}")
        if base < 0 or base + length > self.limit:
            raise UsageError(
                f"{self.name}: [{base:#x}, +{length:#x}) is outside the address space"
            )
        i = bisect.bisect_left(self._bases, base)
        for j in (i - 1, i):
            if 0 <= j < len(self._maps):
                other = self._maps[j]
                if other.base < base + length and base < other.end:
                    raise UsageError(
                        f"{self.name}: {name or device!r} at [{base:#x}, +{length:#x}) "
                        f"overlaps {other.name} at [{other.base:#x}, +{other.length:#x})"
                    )
        mapping = BusMapping(base, length, device, name or type(device).__name__)
        self._maps.insert(i, mapping)
        self._bases.insert(i, base)
        return mapping

    def unregister(self, mapping: BusMapping) -> None:
        """Remove a mapping returned by ``register``.

        Raises:
            UsageError: it is not registered here.
        """
        try:
            i = self._maps.index(mapping)
        except ValueError:
            raise UsageError(f"{self.name}: {mapping!r} is not registered") from None
        del self._maps[i]
        del self._bases[i]

    @property
    def mappings(self) -> tuple[BusMapping, ...]:
        """The mappings in address order."""
        return tuple(self._maps)

    def find(self, addr: int) -> BusMapping | None:
        """The mapping containing ``addr``, or ``None``."""
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            mapping = self._maps[i]
            if addr < mapping.end:
                return mapping
        return None

    # -- dispatch -------------------------------------------------------------------------

    def read(self, addr: int, size: int) -> int:
        """Read ``size`` bytes at ``addr`` as a little-endian integer.

        Raises:
            UsageError: ``size`` is not positive or the access leaves the address space.
        """
        self._check(addr, size)
        mapping = self.find(addr)
        if (
            mapping is not None
            and size in _ACCESS_SIZES
            and addr % size == 0
            and addr + size <= mapping.end
        ):
            return self._read_one(mapping, addr, size)
        value = 0
        for pos, piece, piece_map in self._split(addr, size):
            part = (
                self._read_one(piece_map, pos, piece)
                if piece_map is not None
                else self._unmapped_read(pos, piece)
            )
            value |= part << (8 * (pos - addr))
        return value

    def write(self, addr: int, size: int, value: int) -> None:
        """Write the low ``size`` bytes of ``value`` at ``addr``, little-endian.

        Raises:
            UsageError: ``size`` is not positive or the access leaves the address space.
        """
        self._check(addr, size)
        value &= (1 << (8 * size)) - 1
        mapping = self.find(addr)
        if (
            mapping is not None
            and size in _ACCESS_SIZES
            and addr % size == 0
            and addr + size <= mapping.end
        ):
            self._write_one(mapping, addr, size, value)
            return
        for pos, piece, piece_map in self._split(addr, size):
            part = (value >> (8 * (pos - addr))) & ((1 << (8 * piece)) - 1)
            if piece_map is not None:
                self._write_one(piece_map, pos, piece, part)
            elif _tp_unmapped.on:
                _tp_unmapped.emit(bus=self.name, op="write", addr=pos, size=piece, value=part)

    def read_bytes(self, addr: int, length: int) -> bytes:
        """Read ``length`` bytes (any length), split as rule 3 says."""
        return self.read(addr, length).to_bytes(length, "little") if length else b""

    def write_bytes(self, addr: int, data: bytes) -> None:
        """Write ``data`` (any length), split as rule 3 says."""
        if data:
            self.write(addr, len(data), int.from_bytes(data, "little"))

    # -- internals ------------------------------------------------------------------------

    def _check(self, addr: int, size: int) -> None:
        if size <= 0:
            raise UsageError(f"{self.name}: access size must be positive, got {size}")
        if addr < 0 or addr + size > self.limit:
            raise UsageError(f"{self.name}: access [{addr:#x}, +{size}) leaves the address space")

    def _split(self, addr: int, size: int) -> list[tuple[int, int, BusMapping | None]]:
        pieces = []
        pos, end = addr, addr + size
        while pos < end:
            mapping = self.find(pos)
            if mapping is not None:
                limit = min(end, mapping.end)
            else:
                i = bisect.bisect_right(self._bases, pos)
                limit = min(end, self._bases[i]) if i < len(self._bases) else end
            piece = next(s for s in _ACCESS_SIZES if pos % s == 0 and pos + s <= limit)
            pieces.append((pos, piece, mapping))
            pos += piece
        return pieces

    def _unmapped_read(self, addr: int, size: int) -> int:
        if _tp_unmapped.on:
            _tp_unmapped.emit(bus=self.name, op="read", addr=addr, size=size)
        return (1 << (8 * size)) - 1

    def _read_one(self, mapping: BusMapping, addr: int, size: int) -> int:
        if mapping.active:
            if _tp_reentrant.on:
                _tp_reentrant.emit(bus=self.name, op="read", device=mapping.name, addr=addr)
            return (1 << (8 * size)) - 1
        mapping.active = True
        try:
            value = mapping.device.read(addr - mapping.base, size)
        finally:
            mapping.active = False
        if _tp_access.on:
            _tp_access.emit(bus=self.name, op="read", device=mapping.name, addr=addr, size=size, value=value)
        return value & ((1 << (8 * size)) - 1)

    def _write_one(self, mapping: BusMapping, addr: int, size: int, value: int) -> None:
        if mapping.active:
            if _tp_reentrant.on:
                _tp_reentrant.emit(bus=self.name, op="write", device=mapping.name, addr=addr)
            return
        if _tp_access.on:
            _tp_access.emit(bus=self.name, op="write", device=mapping.name, addr=addr, size=size, value=value)
        mapping.active = True
        try:
            mapping.device.write(addr - mapping.base, size, value)
        finally:
            mapping.active = False

    def __repr__(self) -> str:
        return f"Bus({self.name!r}, {len(self._maps)} mappings)"
