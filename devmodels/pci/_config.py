"""A PCI configuration space: bytes with per-bit access masks (PCI 3.0 §6.1).

Rules:

1. Every byte has three masks: ``writable`` (RW bits), ``w1c`` (write-1-to-clear bits) and
   implicitly read-only for the rest. A guest write changes only RW bits to the written
   value and clears only the W1C bits it writes as 1; RO bits never change.
2. Device code sets RO fields with ``set_*`` (which ignore the masks); guest accesses go
   through ``read``/``write`` only.
3. Accesses past the end read as zero and are dropped (bounded, never an exception).
"""

from __future__ import annotations

from .defs import PCI_CONFIG_SPACE_SIZE, PCI_EXP_CONFIG_SPACE_SIZE
from .._errors import UsageError

__all__ = ["ConfigSpace"]


class ConfigSpace:
    """Configuration space bytes and masks.

    Args:
        size: 256 (conventional) or 4096 (PCI Express extended).
    """

    __slots__ = ("size", "data", "writable", "w1c")

    def __init__(self, size: int = PCI_CONFIG_SPACE_SIZE) -> None:
        if size not in (PCI_CONFIG_SPACE_SIZE, PCI_EXP_CONFIG_SPACE_SIZE):
            raise UsageError(f"config space size must be 256 or 4096, got {size}")
        self.size = size
        self.data = bytearray(size)
        self.writable = bytearray(size)
        self.w1c = bytearray(size)

    # -- guest side -----------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read; bytes past the end read as zero."""
        if offset < 0 or size <= 0:
            return 0
        end = min(offset + size, self.size)
        if offset >= end:
            return 0
        return int.from_bytes(self.data[offset:end], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write, applied through the masks (rule 1)."""
        if offset < 0 or size <= 0:
            return
        data, writable, w1c = self.data, self.writable, self.w1c
        for i in range(size):
            pos = offset + i
            if pos >= self.size:
                break
            byte = (value >> (8 * i)) & 0xFF
            rw = writable[pos]
            new = (data[pos] & ~rw) | (byte & rw)
            new &= ~(byte & w1c[pos])
            data[pos] = new & 0xFF

    # -- device side ----------------------------------------------------------------------

    def get(self, offset: int, size: int) -> int:
        """Read a field (device side; same as ``read``)."""
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        """Set a field regardless of masks (device side)."""
        self._check(offset, size)
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_writable(self, offset: int, size: int, mask: int) -> None:
        """Set which bits of a field the guest may write."""
        self._check(offset, size)
        self.writable[offset : offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_w1c(self, offset: int, size: int, mask: int) -> None:
        """Set which bits of a field the guest clears by writing 1."""
        self._check(offset, size)
        self.w1c[offset : offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_bits(self, offset: int, size: int, bits: int, on: bool) -> None:
        """Set or clear ``bits`` of a field (device side)."""
        value = self.get(offset, size)
        self.set(offset, size, value | bits if on else value & ~bits)

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size <= 0 or offset + size > self.size:
            raise UsageError(f"config field [{offset:#x}, +{size}) is outside {self.size} bytes")
