"""``Chain``: the type of a popped descriptor chain, whichever ring implementation made it.

``Virtqueue.pop_batch`` returns chains of the Cython ring (``_ring_c.Chain``) or of the
pure-Python reference (``_ring_py.Chain``): one source, two classes (``ring`` rule 1). Code
that reads chains (devices, transports, servers) is typed against this protocol, which
both classes satisfy, so mypy checks every use of the guest-controlled segments.

The segments are what the guest wrote, already checked against the ring's rules (sizes,
the 2**32-byte cap, descriptor counts; ``_ring_py`` rule 3) but not against guest RAM: the
addresses are untrusted until ``GuestMemory`` accepts them (CONVENTIONS: guest-memory).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Chain", "Segment"]

Segment = tuple[int, int]
"""One ``(gpa, length)`` buffer of a chain."""


@runtime_checkable
class Chain(Protocol):
    """One available descriptor chain (split) or descriptor list (packed), as popped.

    A used entry returns it (``Virtqueue.push_batch([(chain, written)])``).
    """

    @property
    def head(self) -> int:
        """Split: the head descriptor index; packed: the buffer id."""
        ...

    @property
    def n_desc(self) -> int:
        """Descriptors it occupies in the ring (an indirect table counts as one)."""
        ...

    @property
    def n_readable(self) -> int:
        """How many device-readable segments."""
        ...

    @property
    def n_writable(self) -> int:
        """How many device-writable segments."""
        ...

    @property
    def readable_len(self) -> int:
        """Total bytes of the device-readable segments."""
        ...

    @property
    def writable_len(self) -> int:
        """Total bytes of the device-writable segments."""
        ...

    @property
    def readable(self) -> list[Segment]:
        """Device-readable ``(gpa, length)`` segments, in chain order."""
        ...

    @property
    def writable(self) -> list[Segment]:
        """Device-writable ``(gpa, length)`` segments, in chain order."""
        ...

    def to_tuple(self) -> tuple[int, int, tuple[Segment, ...], tuple[Segment, ...]]:
        """``(head, n_desc, readable, writable)`` as plain tuples, for comparisons."""
        ...
