"""Guest errors of the virtqueue layer: one class per VIRTIO 1.2 ring rule a driver can break.

Rules:

1. Every class derives from ``VirtqueueError`` (a ``GuestError``) and names the section it
   enforces in ``section``; ``index`` is the descriptor index, ring position or buffer id
   involved and ``gpa`` the guest-physical address of the offending structure, each
   ``None`` where it does not apply (CONVENTIONS: errors).
2. The ring code raises them internally; ``Virtqueue.pop_batch``/``push_batch`` never let
   them out: they become the queue's sticky ``broken_reason`` and the transport sets
   DEVICE_NEEDS_RESET (CONVENTIONS: architected-errors, sticky-broken).
3. ``AvailIndexError`` and ``RingOverrunError`` are also ``DenialOfService``: a driver that
   claims more buffers than the ring can hold is more likely an attack than a bug.
"""

from __future__ import annotations

from devmodels import DenialOfService, GuestError

__all__ = [
    "VirtqueueError",
    "QueueSizeError",
    "RingAddressError",
    "AvailIndexError",
    "DescriptorIndexError",
    "ChainLoopError",
    "ChainTooLongError",
    "ChainBytesError",
    "DescriptorOrderError",
    "IndirectFeatureError",
    "IndirectNextError",
    "NestedIndirectError",
    "IndirectTableError",
    "BufferIdError",
    "BufferIdInUseError",
    "PackedChainError",
    "RingOverrunError",
    "InOrderError",
    "RestoredBrokenError",
]


class VirtqueueError(GuestError):
    """A driver broke a rule of the virtqueue format.

    Attributes:
        section: the VIRTIO 1.2 section of the rule.
        index: descriptor index, ring position or buffer id involved, or ``None``.
        gpa: guest-physical address of the offending structure, or ``None``.
    """

    section = "2.6"

    def __init__(self, message: str, *, index: int | None = None, gpa: int | None = None) -> None:
        self.index = index
        self.gpa = gpa
        where = "" if gpa is None else f" at gpa {gpa:#x}"
        super().__init__(f"VIRTIO 1.2 §{self.section}: {message}{where}")


class QueueSizeError(VirtqueueError):
    """The queue size is 0, above the maximum, or (split ring) not a power of two (§2.7, §2.8).

    Attributes:
        size: the size the driver set.
        max_size: the device's maximum.
    """

    section = "2.7"

    def __init__(self, size: int, max_size: int, packed: bool, reason: str = "") -> None:
        self.size = size
        self.max_size = max_size
        if packed:
            self.section = "2.8.10.1"
        kind = "packed" if packed else "split"
        super().__init__(reason or f"{kind} queue size {size} is not valid (maximum {max_size})")


class RingAddressError(VirtqueueError):
    """A ring part is misaligned, not wholly inside one RAM region, or not writable (§2.7.1, §2.8.11).

    Attributes:
        part: which area ("descriptor table", "available ring", ...).
        length: its size in bytes.
    """

    section = "2.7.1"

    def __init__(self, part: str, gpa: int, length: int, reason: str, packed: bool = False) -> None:
        self.part = part
        self.length = length
        if packed:
            self.section = "2.8.11"
        super().__init__(f"{part} [{gpa:#x}, +{length:#x}) {reason}", gpa=gpa)


class AvailIndexError(VirtqueueError, DenialOfService):
    """The available ``idx`` moved backwards or runs more than the queue size ahead (§2.7.6.1).

    Attributes:
        avail_idx: the index the driver published.
        next_avail: the device's next available index.
    """

    section = "2.7.6.1"

    def __init__(self, avail_idx: int, next_avail: int, next_used: int, size: int) -> None:
        self.avail_idx = avail_idx
        self.next_avail = next_avail
        super().__init__(
            f"available idx {avail_idx} is not within {size} of the used idx {next_used} "
            f"(device consumed up to {next_avail})"
        )


class DescriptorIndexError(VirtqueueError):
    """A head or ``next`` index is outside its descriptor table (§2.7.5, §2.7.5.3)."""

    section = "2.7.5"

    def __init__(self, value: int, limit: int, where: str, gpa: int) -> None:
        self.limit = limit
        super().__init__(f"{where} index {value} is not below {limit}", index=value, gpa=gpa)


class ChainLoopError(VirtqueueError):
    """A chain visits more descriptors than its table holds: a loop (§2.7.5.2)."""

    section = "2.7.5.2"

    def __init__(self, index: int, limit: int, gpa: int) -> None:
        super().__init__(f"descriptor chain from {index} does not end within {limit} descriptors", index=index, gpa=gpa)


class ChainTooLongError(VirtqueueError):
    """A chain or list has more buffers than the queue size (§2.7.5.3.1, §2.8.17) or than the
    device's limit (§2.7.4.1, §2.8.18: the device MAY limit them)."""

    section = "2.7.5.3.1"

    def __init__(self, index: int, limit: int, gpa: int, packed: bool = False) -> None:
        self.limit = limit
        if packed:
            self.section = "2.8.17"
        super().__init__(f"descriptor chain at {index} has more than {limit} descriptors", index=index, gpa=gpa)


class ChainBytesError(VirtqueueError):
    """A chain describes 2**32 bytes or more in total (§2.7.5.2).

    Attributes:
        total: the byte count reached when the check failed.
    """

    section = "2.7.5.2"

    def __init__(self, index: int, total: int, gpa: int) -> None:
        self.total = total
        super().__init__(f"descriptor chain reaches {total} bytes (limit 2**32 - 1)", index=index, gpa=gpa)


class DescriptorOrderError(VirtqueueError):
    """A device-readable descriptor follows a device-writable one (§2.7.4.2, §2.8.17)."""

    section = "2.7.4.2"

    def __init__(self, index: int, gpa: int, packed: bool = False) -> None:
        if packed:
            self.section = "2.8.17"
        super().__init__(f"device-readable descriptor {index} follows a device-writable one", index=index, gpa=gpa)


class IndirectFeatureError(VirtqueueError):
    """VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC negotiated (§2.7.5.3.1, §2.8.19)."""

    section = "2.7.5.3.1"

    def __init__(self, index: int, gpa: int) -> None:
        super().__init__(f"descriptor {index} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated", index=index, gpa=gpa)


class IndirectNextError(VirtqueueError):
    """INDIRECT together with NEXT (§2.7.5.3.1), or inside a NEXT-linked list (§2.8.19)."""

    section = "2.7.5.3.1"

    def __init__(self, index: int, gpa: int, packed: bool = False) -> None:
        if packed:
            self.section = "2.8.19"
            message = f"indirect descriptor {index} is part of a VIRTQ_DESC_F_NEXT list"
        else:
            message = f"descriptor {index} sets both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT"
        super().__init__(message, index=index, gpa=gpa)


class NestedIndirectError(VirtqueueError):
    """VIRTQ_DESC_F_INDIRECT inside an indirect table (§2.7.5.3.1)."""

    section = "2.7.5.3.1"

    def __init__(self, index: int, gpa: int) -> None:
        super().__init__(f"indirect table entry {index} is itself indirect", index=index, gpa=gpa)


class IndirectTableError(VirtqueueError):
    """An indirect table's length is not a non-zero multiple of 16, or it is not wholly in RAM (§2.7.5.3).

    Attributes:
        length: the table length the descriptor gave.
    """

    section = "2.7.5.3"

    def __init__(self, index: int, gpa: int, length: int, reason: str, packed: bool = False) -> None:
        self.length = length
        if packed:
            self.section = "2.8.7"
        super().__init__(f"indirect table of descriptor {index} ({length:#x} bytes) {reason}", index=index, gpa=gpa)


class BufferIdError(VirtqueueError):
    """A packed-ring buffer id is not below the queue size (§2.8.13, §2.8.21)."""

    section = "2.8.13"

    def __init__(self, buffer_id: int, size: int, gpa: int) -> None:
        super().__init__(f"buffer id {buffer_id} is not below the queue size {size}", index=buffer_id, gpa=gpa)


class BufferIdInUseError(VirtqueueError):
    """A packed-ring buffer id is made available while the device still holds it (§2.8.21)."""

    section = "2.8.21"

    def __init__(self, buffer_id: int, gpa: int) -> None:
        super().__init__(f"buffer id {buffer_id} is already in flight", index=buffer_id, gpa=gpa)


class PackedChainError(VirtqueueError):
    """A later descriptor of a packed list is not available with its first (§2.8.6, §2.8.17)."""

    section = "2.8.17"

    def __init__(self, position: int, gpa: int) -> None:
        super().__init__(f"descriptor ring position {position} continues a list but is not available", index=position, gpa=gpa)


class RingOverrunError(VirtqueueError, DenialOfService):
    """The driver made more packed descriptors available than the ring has free (§2.8.17)."""

    section = "2.8.17"

    def __init__(self, position: int, free: int, gpa: int) -> None:
        self.free = free
        super().__init__(f"list at ring position {position} needs more than the {free} free descriptors", index=position, gpa=gpa)


class InOrderError(VirtqueueError):
    """VIRTIO_F_IN_ORDER negotiated but descriptors not used in ring order (§2.7.5.2, §2.7.5.3.1)."""

    section = "2.7.5.2"

    def __init__(self, index: int, expected: int, gpa: int) -> None:
        self.expected = expected
        super().__init__(f"VIRTIO_F_IN_ORDER: descriptor {index} where {expected} was due", index=index, gpa=gpa)


class RestoredBrokenError(VirtqueueError):
    """The queue was already broken when its snapshot was taken.

    ``str()`` is the original reason word for word (the snapshot keeps only its text), so
    a restored queue's ``state()`` equals the snapshot it came from; ``restored`` tells
    this apart from a live violation.

    Attributes:
        reason: the broken reason recorded in the snapshot.
    """

    section = "2.6"
    restored = True

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.index = None
        self.gpa = None
        GuestError.__init__(self, reason)
