"""VIRTIO 1.2 ring constants (§2.7 split, §2.8 packed). No logic lives here.

Names are the specification's (``VIRTQ_DESC_F_NEXT``, ``RING_EVENT_FLAGS_DESC``), as in
virtio-queue ``src/defs.rs``. Sizes are in bytes.
"""

from __future__ import annotations

# -- §2.7.5 / §2.8.13: descriptor flags ---------------------------------------------------
VIRTQ_DESC_F_NEXT = 0b0000_0001
VIRTQ_DESC_F_WRITE = 0b0000_0010
VIRTQ_DESC_F_INDIRECT = 0b0000_0100
# §2.8.1: packed ring availability bits.
VIRTQ_DESC_F_AVAIL = 1 << 7
VIRTQ_DESC_F_USED = 1 << 15

# -- §2.7.6 / §2.7.8: split ring flags ---------------------------------------------------
VIRTQ_AVAIL_F_NO_INTERRUPT = 0b0000_0001
VIRTQ_USED_F_NO_NOTIFY = 0b0000_0001

# -- §2.8.10: packed event suppression flags ----------------------------------------------
RING_EVENT_FLAGS_ENABLE = 0x0
RING_EVENT_FLAGS_DISABLE = 0x1
RING_EVENT_FLAGS_DESC = 0x2
RING_EVENT_FLAGS_MASK = 0b0000_0011
# §2.8.14: desc_event_off is 15 bits; desc_event_wrap is bit 15.
RING_EVENT_OFF_MASK = 0x7FFF
RING_EVENT_WRAP_SHIFT = 15

# -- sizes and alignments -----------------------------------------------------------------
VIRTQ_DESC_SIZE = 16  # struct virtq_desc / struct pvirtq_desc
VIRTQ_USED_ELEM_SIZE = 8  # struct virtq_used_elem
VIRTQ_MAX_SIZE = 32768  # §2.7: maximum Queue Size; §2.8: up to 2^15 entries
# §2.7 table: Descriptor Table 16, Available Ring 2, Used Ring 4.
VIRTQ_DESC_ALIGN = 16
VIRTQ_AVAIL_ALIGN = 2
VIRTQ_USED_ALIGN = 4
# §2.8.10.1 table: Descriptor Ring 16, Device/Driver Event Suppression 4.
PVIRTQ_DESC_ALIGN = 16
PVIRTQ_EVENT_ALIGN = 4
PVIRTQ_EVENT_SIZE = 4  # struct pvirtq_event_suppress
# A used ring entry's id/len and a chain's total length are 32-bit (§2.7.5.2, §2.7.8).
VIRTQ_MAX_CHAIN_BYTES = 0xFFFF_FFFF


def split_desc_table_size(size: int) -> int:
    """Bytes of a split ring's descriptor table (§2.7: ``16 * Queue Size``)."""
    return VIRTQ_DESC_SIZE * size


def split_avail_ring_size(size: int) -> int:
    """Bytes of a split ring's available ring, ``used_event`` included (§2.7: ``6 + 2 * Queue Size``)."""
    return 6 + 2 * size


def split_used_ring_size(size: int) -> int:
    """Bytes of a split ring's used ring, ``avail_event`` included (§2.7: ``6 + 8 * Queue Size``)."""
    return 6 + VIRTQ_USED_ELEM_SIZE * size


__all__ = [name for name in dir() if name.isupper() or name.startswith("split_")]
