"""Windows into guest RAM for the ring code: where a ring area lives, checked once per call.

Rules:

1. ``map_window`` gives the ``(buffer, offset)`` of a range that lies wholly inside one
   RAM region (writable if asked); anything else raises ``GuestMemoryError``. Without an
   IOMMU it looks the region up directly; otherwise ``GuestMemory.view`` translates and
   checks. The caller keeps the window for one call only (CONVENTIONS: guest-memory).
2. Errors the ring code stores outlive the call; ``detach`` drops their tracebacks, whose
   frames would otherwise keep windows (and an mmap's exported buffer) alive.
"""

from __future__ import annotations

from typing import Any

from devmodels import Access, GuestMemory, GuestMemoryError

from .errors import RingAddressError

__all__ = ["map_window", "map_area", "detach"]


def map_window(memory: GuestMemory, gpa: int, length: int, write: bool) -> tuple[Any, int]:
    """``(buffer, offset)`` of ``[gpa, gpa+length)`` wholly inside one RAM region.

    Raises:
        GuestMemoryError: the range is not RAM, spans regions, or is read-only for ``write``.
    """
    if memory.translate is None:
        end = gpa + length
        for region in memory.regions:
            if region.base <= gpa and end <= region.end and not (write and region.readonly):
                return region.buffer, gpa - region.base
    # Everything else (an IOMMU, a hole, a read-only region) gets GuestMemory's own checks.
    return memory.view(gpa, length, Access.WRITE if write else Access.READ), 0


def map_area(memory: GuestMemory, gpa: int, length: int, write: bool, part: str, packed: bool) -> tuple[Any, int]:
    """``map_window`` for a ring area; a failure is the driver's (§2.7.1, §2.8.11).

    Raises:
        RingAddressError: the area is not wholly inside one (writable) RAM region.
    """
    try:
        return map_window(memory, gpa, length, write)
    except GuestMemoryError as exc:
        raise RingAddressError(part, gpa, length, exc.reason, packed) from None


def detach(exc: BaseException) -> BaseException:
    """Drop ``exc``'s traceback and context (rule 2) and return it."""
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc
