"""The MSI capability (PCI 3.0 §6.8.1): 32/64-bit address, 1–32 vectors, per-vector masking.

Rules:

1. The guest programs it through config space only; this object reads the fields back
   from the ``ConfigSpace`` whenever it delivers, so there is no shadow state to drift.
2. ``notify(vector)`` delivers ``data | vector`` (low bits replaced per the enabled count)
   to the address, unless the vector is masked, in which case its pending bit is set and
   the message is sent when the guest unmasks it (§6.8.3.4).
3. Vectors at or above the enabled count are dropped with a trace event.
"""

from __future__ import annotations

from ._caps import CapabilityList
from ._config import ConfigSpace
from .defs import (
    PCI_CAP_ID_MSI,
    PCI_MSI_ADDRESS_LO,
    PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_64BIT,
    PCI_MSI_FLAGS_ENABLE,
    PCI_MSI_FLAGS_MASKBIT,
    PCI_MSI_FLAGS_QSIZE,
)
from .._errors import UsageError
from .._irq import MsiSink
from .._trace import tracepoint

__all__ = ["MsiCapability"]

_tp_drop = tracepoint("pci.msi_dropped")


class MsiCapability:
    """An MSI capability living in a function's config space.

    Args:
        config: the function's config space.
        caps: its capability list (the structure is allocated there).
        vectors: how many vectors the function asks for (1, 2, 4, 8, 16 or 32).
        is_64bit: offer a 64-bit message address.
        per_vector_mask: offer the Mask and Pending bits.
    """

    def __init__(
        self,
        config: ConfigSpace,
        caps: CapabilityList,
        vectors: int = 1,
        *,
        is_64bit: bool = True,
        per_vector_mask: bool = True,
    ) -> None:
        if vectors not in (1, 2, 4, 8, 16, 32):
            raise UsageError(f"MSI vector count must be a power of two up to 32, got {vectors}")
        self.vectors = vectors
        self.is_64bit = is_64bit
        self.per_vector_mask = per_vector_mask
        length = 10 + (4 if is_64bit else 0) + (10 if per_vector_mask else 0)
        self.offset = caps.add(PCI_CAP_ID_MSI, length)
        self._config = config
        base = self.offset
        control = (vectors.bit_length() - 1) << 1
        control |= PCI_MSI_FLAGS_64BIT if is_64bit else 0
        control |= PCI_MSI_FLAGS_MASKBIT if per_vector_mask else 0
        config.set(base + PCI_MSI_FLAGS, 2, control)
        config.set_writable(base + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
        config.set_writable(base + PCI_MSI_ADDRESS_LO, 4, 0xFFFF_FFFC)
        if is_64bit:
            config.set_writable(base + 8, 4, 0xFFFF_FFFF)
        self._data_offset = base + (12 if is_64bit else 8)
        config.set_writable(self._data_offset, 2, 0xFFFF)
        self._mask_offset = self._data_offset + 4
        self._pending_offset = self._mask_offset + 4
        if per_vector_mask:
            config.set_writable(self._mask_offset, 4, (1 << vectors) - 1 if vectors < 32 else 0xFFFF_FFFF)
        self.length = length

    # -- views of the config fields -------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """MSI Enable."""
        return bool(self._config.get(self.offset + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE)

    @property
    def enabled_vectors(self) -> int:
        """How many vectors the guest enabled (Multiple Message Enable, capped at capable)."""
        mme = (self._config.get(self.offset + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_QSIZE) >> 4
        return min(1 << mme, self.vectors)

    @property
    def address(self) -> int:
        """The message address."""
        lo = self._config.get(self.offset + PCI_MSI_ADDRESS_LO, 4)
        hi = self._config.get(self.offset + 8, 4) if self.is_64bit else 0
        return (hi << 32) | lo

    def message(self, vector: int) -> tuple[int, int]:
        """The (address, data) the function sends for ``vector``."""
        count = self.enabled_vectors
        data = self._config.get(self._data_offset, 2)
        return self.address, (data & ~(count - 1)) | (vector & (count - 1))

    def masked(self, vector: int) -> bool:
        """Whether ``vector`` is masked."""
        if not self.per_vector_mask:
            return False
        return bool(self._config.get(self._mask_offset, 4) >> vector & 1)

    def pending(self, vector: int) -> bool:
        """Whether ``vector`` is pending."""
        if not self.per_vector_mask:
            return False
        return bool(self._config.get(self._pending_offset, 4) >> vector & 1)

    # -- behaviour ------------------------------------------------------------------------

    def covers(self, offset: int, size: int) -> bool:
        """Whether a config access touches this capability."""
        return offset < self.offset + self.length and self.offset < offset + size

    def notify(self, vector: int, sink: MsiSink) -> bool:
        """Signal ``vector``; returns whether MSI is enabled (and so handled the request)."""
        if not self.enabled:
            return False
        if not 0 <= vector < self.enabled_vectors:
            if _tp_drop.on:
                _tp_drop.emit(vector=vector, enabled=self.enabled_vectors)
            return True
        if self.masked(vector):
            self._config.set_bits(self._pending_offset, 4, 1 << vector, True)
            return True
        sink.deliver_msi(*self.message(vector))
        return True

    def after_config_write(self, sink: MsiSink) -> None:
        """Deliver vectors the guest just unmasked that were pending (§6.8.3.4)."""
        if not (self.per_vector_mask and self.enabled):
            return
        pending = self._config.get(self._pending_offset, 4)
        if not pending:
            return
        mask = self._config.get(self._mask_offset, 4)
        for vector in range(self.enabled_vectors):
            bit = 1 << vector
            if pending & bit and not mask & bit:
                pending &= ~bit
                self._config.set(self._pending_offset, 4, pending)
                sink.deliver_msi(*self.message(vector))
