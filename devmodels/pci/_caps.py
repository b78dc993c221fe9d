"""The capability list builder (PCI 3.0 §6.7).

Rules: capabilities are placed from 0x40 upward, dword aligned, in the order they are
added; each new one is linked at the end of the list; the first sets Capabilities Pointer
(0x34) and Status.CAP_LIST. The ID and next-pointer bytes are read-only to the guest.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._config import ConfigSpace
from .defs import PCI_CAPABILITY_LIST, PCI_CONFIG_SPACE_SIZE, PCI_STATUS, PCI_STATUS_CAP_LIST
from .._errors import UsageError

__all__ = ["CapabilityList"]

_FIRST_CAP = 0x40


class CapabilityList:
    """Allocates capability structures in a config space and links them."""

    def __init__(self, config: ConfigSpace) -> None:
        self._config = config
        self._next_free = _FIRST_CAP
        self._entries: list[tuple[int, int, int]] = []  # (cap_id, offset, length)

    def add(self, cap_id: int, length: int, offset: int | None = None) -> int:
        """Reserve ``length`` bytes for capability ``cap_id``; return its offset.

        Raises:
            UsageError: it does not fit in the conventional 256 bytes or overlaps another.
        """
        if length < 2:
            raise UsageError("a capability needs at least its ID and next pointer")
        if offset is None:
            offset = self._next_free
        if offset % 4 or offset < _FIRST_CAP or offset + length > PCI_CONFIG_SPACE_SIZE:
            raise UsageError(f"capability {cap_id:#x} at {offset:#x}+{length} does not fit")
        for _, other, other_len in self._entries:
            if offset < other + other_len and other < offset + length:
                raise UsageError(f"capability {cap_id:#x} at {offset:#x} overlaps one at {other:#x}")
        config = self._config
        config.set(offset, 1, cap_id)
        config.set(offset + 1, 1, 0)
        if self._entries:
            config.set(self._entries[-1][1] + 1, 1, offset)
        else:
            config.set(PCI_CAPABILITY_LIST, 1, offset)
            config.set_bits(PCI_STATUS, 2, PCI_STATUS_CAP_LIST, True)
        self._entries.append((cap_id, offset, length))
        self._next_free = max(self._next_free, (offset + length + 3) & ~3)
        return offset

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """``(cap_id, offset, length)`` in list order."""
        return iter(list(self._entries))

    def find(self, cap_id: int) -> int | None:
        """The offset of the first capability with ``cap_id``, or ``None``."""
        for cid, offset, _ in self._entries:
            if cid == cap_id:
                return offset
        return None
