"""The MSI-X capability, table and PBA (PCI 3.0 §6.8.2).

Rules:

1. The capability (Message Control: Enable, Function Mask) is in config space; the table
   (16 bytes a vector) and the Pending Bit Array live in a BAR, reached through
   ``table_read``/``table_write``/``pba_read`` by the owning ``PciFunction``.
2. A vector is delivered when MSI-X is enabled, the function is not masked and the vector's
   Mask bit is clear; otherwise its pending bit is set and the message goes out when the
   mask that held it is cleared (§6.8.2.9).
3. Only the architected bits are writable: address (low two bits RO zero), data, and bit 0
   of Vector Control. PBA writes are ignored. Table and PBA accesses of any size/offset
   inside the structures are bounded; outside them, reads are zero.
4. After reset every vector is masked (§6.8.2.9: Mask bit's default value is 1).
"""

from __future__ import annotations

import struct

from ._caps import CapabilityList
from ._config import ConfigSpace
from .defs import (
    PCI_CAP_ID_MSIX,
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_MSIX_PBA,
    PCI_MSIX_TABLE,
)
from .._errors import SnapshotError, UsageError
from .._irq import MsiSink

__all__ = ["MsixCapability"]

_ENTRY = struct.Struct("<IIII")
_ENTRY_WRITABLE = _ENTRY.pack(0xFFFF_FFFC, 0xFFFF_FFFF, 0xFFFF_FFFF, PCI_MSIX_ENTRY_CTRL_MASKBIT)


class MsixCapability:
    """MSI-X for a function.

    Args:
        config: the function's config space.
        caps: its capability list.
        vectors: table size (1–2048).
        bar: the BAR index holding table and PBA.
        table_offset: offset of the table in that BAR (8-byte aligned).
        pba_offset: offset of the PBA in that BAR (8-byte aligned).
    """

    def __init__(
        self,
        config: ConfigSpace,
        caps: CapabilityList,
        vectors: int,
        bar: int,
        table_offset: int = 0,
        pba_offset: int | None = None,
    ) -> None:
        if not 1 <= vectors <= 2048:
            raise UsageError(f"MSI-X table size must be 1..2048, got {vectors}")
        if not 0 <= bar <= 5:
            raise UsageError(f"MSI-X BAR index must be 0..5, got {bar}")
        table_len = vectors * PCI_MSIX_ENTRY_SIZE
        if pba_offset is None:
            pba_offset = (table_offset + table_len + 7) & ~7
        pba_len = ((vectors + 63) // 64) * 8
        if table_offset % 8 or pba_offset % 8:
            raise UsageError("MSI-X table and PBA offsets must be 8-byte aligned")
        if table_offset < pba_offset + pba_len and pba_offset < table_offset + table_len:
            raise UsageError("MSI-X table and PBA overlap")
        self.vectors = vectors
        self.bar = bar
        self.table_offset = table_offset
        self.table_len = table_len
        self.pba_offset = pba_offset
        self.pba_len = pba_len
        self.offset = caps.add(PCI_CAP_ID_MSIX, 12)
        self._config = config
        config.set(self.offset + PCI_MSIX_FLAGS, 2, vectors - 1)
        config.set_writable(self.offset + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
        config.set(self.offset + PCI_MSIX_TABLE, 4, table_offset | bar)
        config.set(self.offset + PCI_MSIX_PBA, 4, pba_offset | bar)
        self.table = bytearray(table_len)
        self.pba = bytearray(pba_len)
        self.reset()

    @property
    def end(self) -> int:
        """One past the highest BAR offset used by table or PBA."""
        return max(self.table_offset + self.table_len, self.pba_offset + self.pba_len)

    def reset(self) -> None:
        """All vectors masked, nothing pending, table cleared (config is reset by the function)."""
        for vector in range(self.vectors):
            _ENTRY.pack_into(self.table, vector * PCI_MSIX_ENTRY_SIZE, 0, 0, 0, PCI_MSIX_ENTRY_CTRL_MASKBIT)
        self.pba[:] = bytes(self.pba_len)

    # -- config-space views ---------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """MSI-X Enable."""
        return bool(self._config.get(self.offset + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_ENABLE)

    @property
    def function_masked(self) -> bool:
        """Function Mask."""
        return bool(self._config.get(self.offset + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_MASKALL)

    def covers(self, offset: int, size: int) -> bool:
        """Whether a config access touches this capability."""
        return offset < self.offset + 12 and self.offset < offset + size

    # -- table ----------------------------------------------------------------------------

    def entry(self, vector: int) -> tuple[int, int, bool]:
        """(address, data, masked) of a vector."""
        lo, hi, data, ctrl = _ENTRY.unpack_from(self.table, vector * PCI_MSIX_ENTRY_SIZE)
        return (hi << 32) | lo, data, bool(ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def pending(self, vector: int) -> bool:
        """Whether ``vector``'s pending bit is set."""
        return bool(self.pba[vector // 8] >> (vector % 8) & 1)

    def _set_pending(self, vector: int, on: bool) -> None:
        if on:
            self.pba[vector // 8] |= 1 << (vector % 8)
        else:
            self.pba[vector // 8] &= ~(1 << (vector % 8)) & 0xFF

    def in_table(self, offset: int, size: int) -> bool:
        """Whether a BAR access falls in the table."""
        return self.table_offset <= offset and offset + size <= self.table_offset + self.table_len

    def in_pba(self, offset: int, size: int) -> bool:
        """Whether a BAR access falls in the PBA."""
        return self.pba_offset <= offset and offset + size <= self.pba_offset + self.pba_len

    def table_read(self, offset: int, size: int) -> int:
        """A guest read at ``offset`` inside the table."""
        start = offset - self.table_offset
        return int.from_bytes(self.table[start : start + size], "little")

    def table_write(self, offset: int, size: int, value: int, sink: MsiSink) -> None:
        """A guest write inside the table (rule 3), then delivery of what it unmasked."""
        start = offset - self.table_offset
        for i in range(size):
            pos = start + i
            mask = _ENTRY_WRITABLE[pos % PCI_MSIX_ENTRY_SIZE]
            byte = (value >> (8 * i)) & 0xFF
            self.table[pos] = (self.table[pos] & ~mask) | (byte & mask)
        first = start // PCI_MSIX_ENTRY_SIZE
        last = (start + size - 1) // PCI_MSIX_ENTRY_SIZE
        if (start + size - 1) % PCI_MSIX_ENTRY_SIZE >= PCI_MSIX_ENTRY_VECTOR_CTRL or first != last:
            for vector in range(first, last + 1):
                self._flush(vector, sink)

    def pba_read(self, offset: int, size: int) -> int:
        """A guest read at ``offset`` inside the PBA."""
        start = offset - self.pba_offset
        return int.from_bytes(self.pba[start : start + size], "little")

    # -- delivery -------------------------------------------------------------------------

    def notify(self, vector: int, sink: MsiSink) -> bool:
        """Signal ``vector``; returns whether MSI-X is enabled (and so handled it)."""
        if not self.enabled:
            return False
        if not 0 <= vector < self.vectors:
            return True
        address, data, masked = self.entry(vector)
        if masked or self.function_masked:
            self._set_pending(vector, True)
        else:
            sink.deliver_msi(address, data)
        return True

    def _flush(self, vector: int, sink: MsiSink) -> None:
        if not self.pending(vector) or not self.enabled or self.function_masked:
            return
        address, data, masked = self.entry(vector)
        if not masked:
            self._set_pending(vector, False)
            sink.deliver_msi(address, data)

    def after_config_write(self, sink: MsiSink) -> None:
        """Deliver what a cleared Function Mask released."""
        if self.enabled and not self.function_masked and any(self.pba):
            for vector in range(self.vectors):
                self._flush(vector, sink)

    # -- snapshot -------------------------------------------------------------------------

    def check_state(self, table: bytes, pba: bytes) -> None:
        """Validate a snapshot's table and PBA.

        Raises:
            SnapshotError: wrong sizes or bits set that are not architected.
        """
        if len(table) != self.table_len:
            raise SnapshotError("msix.table", f"expected {self.table_len} bytes, got {len(table)}")
        if len(pba) != self.pba_len:
            raise SnapshotError("msix.pba", f"expected {self.pba_len} bytes, got {len(pba)}")
        for vector in range(self.vectors):
            lo, _, _, ctrl = _ENTRY.unpack_from(table, vector * PCI_MSIX_ENTRY_SIZE)
            if lo & 0b11 or ctrl & ~PCI_MSIX_ENTRY_CTRL_MASKBIT:
                raise SnapshotError("msix.table", f"vector {vector} has reserved bits set")
        if int.from_bytes(pba, "little") >> self.vectors:
            raise SnapshotError("msix.pba", "pending bits set beyond the table size")

    def load_state(self, table: bytes, pba: bytes) -> None:
        """Apply a validated snapshot."""
        self.table[:] = table
        self.pba[:] = pba
