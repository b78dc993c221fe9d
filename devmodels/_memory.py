"""Guest-physical memory with checked accesses (vm-memory ``GuestMemory`` in Python).

Rules:

1. Every access a device makes to guest RAM goes through ``GuestMemory``; each is
   range-checked and raises ``GuestMemoryError(gpa, length)`` if any byte of it is not RAM.
   ``gpa + length`` past 2**64 raises ``AddressOverflowError`` (vm-memory ``checked_add``).
2. RAM is made of non-overlapping ``MemoryRegion`` objects. An access may span adjacent
   regions (``read``/``write``/``read_into``); a zero-copy ``view`` may not.
3. No device keeps a ``memoryview`` into RAM across calls: ``view`` hands one out for the
   duration of one I/O call, and regions can be removed (hot-unplug, a vhost-user
   SET_MEM_TABLE) between calls.
4. An optional ``translate`` hook (an IOMMU) maps an I/O virtual address to a guest-physical
   one before the check; its faults are ``GuestMemoryError`` too.
"""

from __future__ import annotations

import bisect
import enum
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Protocol

from ._errors import AddressOverflowError, GuestMemoryError, UsageError

__all__ = [
    "Access",
    "MemoryRegion",
    "GuestMemory",
    "Translator",
    "ADDRESS_LIMIT",
]

ADDRESS_LIMIT = 1 << 64

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Access(enum.Flag):
    """The direction of a guest-memory access, as an IOMMU or a permission check sees it."""

    READ = enum.auto()
    WRITE = enum.auto()


# The accesses that write; a set lookup instead of ``enum.Flag`` arithmetic on the hot path.
_WRITING = frozenset({Access.WRITE, Access.READ | Access.WRITE})


class Translator(Protocol):
    """An IOMMU in front of guest memory: maps an I/O virtual address range to a gpa.

    It must return the gpa of ``iova`` for a range that is contiguous in guest-physical
    space, or raise ``GuestMemoryError`` (a fault).
    """

    def __call__(self, iova: int, length: int, access: Access) -> int:
        """Translate ``[iova, iova+length)`` for ``access``; raise ``GuestMemoryError`` on a fault."""
        ...


class MemoryRegion:
    """One contiguous piece of guest RAM.

    Build one with ``anonymous``, ``memfd``, ``from_fd`` or ``from_bytearray``.

    Attributes:
        base: its guest-physical address.
        size: its length in bytes.
        fd: a file descriptor backing it (memfd or file) for sharing with another process,
            or ``None``.
        fd_offset: where the region starts in ``fd``.
        readonly: guest writes (DMA) to it fail.
    """

    __slots__ = ("base", "size", "end", "buffer", "fd", "fd_offset", "readonly", "_mmap", "_owns_fd")

    def __init__(
        self,
        base: int,
        buffer: bytearray | mmap.mmap,
        *,
        fd: int | None = None,
        fd_offset: int = 0,
        readonly: bool = False,
        owns_fd: bool = False,
    ) -> None:
        size = len(buffer)
        if size <= 0:
            raise UsageError("a memory region needs a positive size")
        if base < 0 or base + size > ADDRESS_LIMIT:
            raise UsageError(f"memory region [{base:#x}, +{size:#x}) is outside the 64-bit space")
        self.base = base
        self.size = size
        self.end = base + size
        self.buffer = buffer
        self.fd = fd
        self.fd_offset = fd_offset
        self.readonly = readonly
        self._mmap = buffer if isinstance(buffer, mmap.mmap) else None
        self._owns_fd = owns_fd

    @classmethod
    def from_bytearray(cls, base: int, size: int) -> MemoryRegion:
        """A private region backed by a ``bytearray`` (tests, fuzzers)."""
        _check_size(size)
        return cls(base, bytearray(size))

    @classmethod
    def anonymous(cls, base: int, size: int) -> MemoryRegion:
        """A private region backed by an anonymous mapping (zero-filled, lazily allocated)."""
        _check_size(size)
        return cls(base, mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))

    @classmethod
    def memfd(cls, base: int, size: int, name: str = "guest-ram") -> MemoryRegion:
        """A shared region backed by a new memfd, so another process can map the same RAM."""
        _check_size(size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            buffer = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError:
            os.close(fd)
            raise
        return cls(base, buffer, fd=fd, owns_fd=True)

    @classmethod
    def from_fd(
        cls, base: int, size: int, fd: int, offset: int = 0, *, readonly: bool = False
    ) -> MemoryRegion:
        """Map ``size`` bytes of ``fd`` from ``offset`` (shared) as guest RAM at ``base``.

        The fd stays the caller's; ``close`` unmaps but does not close it.

        Raises:
            UsageError: the size or offset is unusable (not page aligned, negative).
            HostError: mapping failed.
        """
        _check_size(size)
        if offset < 0 or offset % mmap.ALLOCATIONGRANULARITY:
            raise UsageError(f"fd offset {offset:#x} is not a multiple of the page size")
        prot = mmap.PROT_READ | (0 if readonly else mmap.PROT_WRITE)
        try:
            buffer = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot, offset=offset)
        except (OSError, ValueError) as exc:
            from ._errors import HostError

            raise HostError(f"cannot map fd {fd} [{offset:#x}, +{size:#x}): {exc}") from exc
        return cls(base, buffer, fd=fd, fd_offset=offset, readonly=readonly)

    def close(self) -> None:
        """Unmap the region (and close its fd if the region created it)."""
        if self._mmap is not None and not self._mmap.closed:
            self._mmap.close()
        if self._owns_fd and self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __repr__(self) -> str:
        kind = "mmap" if self._mmap is not None else "bytearray"
        return f"MemoryRegion(base={self.base:#x}, size={self.size:#x}, {kind}, fd={self.fd})"


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size <= 0:
        raise UsageError(f"memory region size must be a positive integer, got {size!r}")


class GuestMemory:
    """The guest's RAM: a set of non-overlapping regions, accessed only through checks.

    Args:
        regions: the initial regions.
        translate: an optional IOMMU; when set, every address given to this object is an
            I/O virtual address that it translates first.
    """

    def __init__(
        self, regions: Sequence[MemoryRegion] = (), translate: Translator | None = None
    ) -> None:
        self._regions: list[MemoryRegion] = []
        self._bases: list[int] = []
        self.translate = translate
        for region in regions:
            self.add_region(region)

    # -- layout ---------------------------------------------------------------------------

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        """The regions in address order."""
        return tuple(self._regions)

    @property
    def size(self) -> int:
        """Total bytes of RAM."""
        return sum(r.size for r in self._regions)

    def add_region(self, region: MemoryRegion) -> None:
        """Add RAM.

        Raises:
            UsageError: it overlaps a region already present.
        """
        i = bisect.bisect_left(self._bases, region.base)
        if i > 0 and self._regions[i - 1].end > region.base:
            raise UsageError(f"{region!r} overlaps {self._regions[i - 1]!r}")
        if i < len(self._regions) and self._regions[i].base < region.end:
            raise UsageError(f"{region!r} overlaps {self._regions[i]!r}")
        self._regions.insert(i, region)
        self._bases.insert(i, region.base)

    def remove_region(self, base: int) -> MemoryRegion:
        """Remove the region that starts at ``base`` and return it (not closed).

        Raises:
            UsageError: no region starts there.
        """
        i = bisect.bisect_left(self._bases, base)
        if i == len(self._bases) or self._bases[i] != base:
            raise UsageError(f"no memory region starts at {base:#x}")
        del self._bases[i]
        return self._regions.pop(i)

    def close(self) -> None:
        """Remove and close every region."""
        for region in self._regions:
            region.close()
        self._regions.clear()
        self._bases.clear()

    # -- checks ---------------------------------------------------------------------------

    def check_range(self, gpa: int, length: int, access: Access = Access.READ) -> bool:
        """Whether ``[gpa, gpa+length)`` is wholly RAM that allows ``access``."""
        try:
            for _ in self._pieces(gpa, length, access):
                pass
        except GuestMemoryError:
            return False
        return True

    def _pieces(
        self, gpa: int, length: int, access: Access
    ) -> Iterator[tuple[MemoryRegion, int, int]]:
        """Yield ``(region, offset, count)`` covering the range; raise on any hole.

        The whole range is validated before the first piece is yielded, so a failing write
        touches nothing.
        """
        if length < 0:
            raise GuestMemoryError(gpa, length, "negative length")
        if gpa < 0 or gpa + length > ADDRESS_LIMIT:
            raise AddressOverflowError(gpa, length)
        if self.translate is not None:
            gpa = self.translate(gpa, length, access)
            if gpa < 0 or gpa + length > ADDRESS_LIMIT:
                raise AddressOverflowError(gpa, length)
        region = self._find(gpa)
        if region is None:
            raise GuestMemoryError(gpa, length)
        if gpa + length <= region.end:
            if region.readonly and access in _WRITING:
                raise GuestMemoryError(gpa, length, "region is read-only")
            yield region, gpa - region.base, length
            return
        pieces = []
        pos, remaining = gpa, length
        while remaining:
            if region is None or region.base > pos:
                raise GuestMemoryError(gpa, length)
            if region.readonly and access in _WRITING:
                raise GuestMemoryError(gpa, length, "region is read-only")
            count = min(remaining, region.end - pos)
            pieces.append((region, pos - region.base, count))
            pos += count
            remaining -= count
            region = self._find(pos) if remaining else None
        yield from pieces

    def _find(self, gpa: int) -> MemoryRegion | None:
        i = bisect.bisect_right(self._bases, gpa) - 1
        if i < 0:
            return None
        region = self._regions[i]
        return region if gpa < region.end else None

    # -- byte access ----------------------------------------------------------------------

    def read(self, gpa: int, length: int) -> bytes:
        """Read ``length`` bytes at ``gpa``.

        Raises:
            GuestMemoryError: any byte of the range is not RAM.
        """
        # Validate before allocating: ``length`` is often guest-controlled, and a huge or
        # negative one must be a GuestMemoryError, not a MemoryError/ValueError.
        pieces = list(self._pieces(gpa, length, Access.READ))
        if len(pieces) == 1:
            region, offset, count = pieces[0]
            return bytes(region.buffer[offset : offset + count])
        out = bytearray(length)
        pos = 0
        for region, offset, count in pieces:
            out[pos : pos + count] = region.buffer[offset : offset + count]
            pos += count
        return bytes(out)

    def read_into(self, gpa: int, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` from guest RAM at ``gpa``.

        Raises:
            GuestMemoryError: any byte of the range is not RAM; ``buf`` is then unchanged.
        """
        dst = memoryview(buf).cast("B")
        pos = 0
        for region, offset, count in self._pieces(gpa, len(dst), Access.READ):
            dst[pos : pos + count] = region.buffer[offset : offset + count]
            pos += count

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` to guest RAM at ``gpa``.

        Raises:
            GuestMemoryError: any byte of the range is not writable RAM; nothing is written.
        """
        src = memoryview(data).cast("B")
        pos = 0
        for region, offset, count in self._pieces(gpa, len(src), Access.WRITE):
            region.buffer[offset : offset + count] = src[pos : pos + count]
            pos += count

    def fill(self, gpa: int, length: int, value: int = 0) -> None:
        """Set ``length`` bytes at ``gpa`` to ``value``.

        Raises:
            GuestMemoryError: any byte of the range is not writable RAM; nothing is written.
        """
        for region, offset, count in self._pieces(gpa, length, Access.WRITE):
            region.buffer[offset : offset + count] = bytes([value & 0xFF]) * count

    def view(self, gpa: int, length: int, access: Access = Access.READ) -> memoryview:
        """A zero-copy view of ``[gpa, gpa+length)`` for one I/O call (preadv into RAM).

        The caller must drop it before returning to the VMM (rule 3).

        Raises:
            GuestMemoryError: the range is not wholly inside one region allowing ``access``.
        """
        pieces = list(self._pieces(gpa, length, access))
        if len(pieces) != 1:
            if not pieces:  # length 0
                return memoryview(b"")
            raise GuestMemoryError(gpa, length, "range spans more than one memory region")
        region, offset, count = pieces[0]
        view = memoryview(region.buffer)[offset : offset + count]
        return view.toreadonly() if access == Access.READ and region.readonly else view

    def views(
        self, segments: Sequence[tuple[int, int]], access: Access = Access.READ
    ) -> list[memoryview]:
        """Zero-copy views of many ``(gpa, length)`` segments, split where regions meet.

        Raises:
            GuestMemoryError: any segment is not wholly RAM allowing ``access``.
        """
        out: list[memoryview] = []
        for gpa, length in segments:
            for region, offset, count in self._pieces(gpa, length, access):
                view = memoryview(region.buffer)[offset : offset + count]
                out.append(view.toreadonly() if region.readonly else view)
        return out

    # -- little-endian scalars ------------------------------------------------------------

    def _scalar_region(self, gpa: int, size: int, access: Access) -> tuple[MemoryRegion, int]:
        if self.translate is None:
            region = self._find(gpa) if gpa >= 0 else None
            if region is not None and gpa + size <= region.end:
                if region.readonly and access in _WRITING:
                    raise GuestMemoryError(gpa, size, "region is read-only")
                return region, gpa - region.base
        pieces = list(self._pieces(gpa, size, access))
        if len(pieces) != 1:
            raise GuestMemoryError(gpa, size, "scalar spans more than one memory region")
        return pieces[0][0], pieces[0][1]

    def load_u8(self, gpa: int) -> int:
        """Read one byte. Raises ``GuestMemoryError`` if it is not RAM."""
        region, off = self._scalar_region(gpa, 1, Access.READ)
        return region.buffer[off]

    def load_u16(self, gpa: int) -> int:
        """Read a little-endian u16. Raises ``GuestMemoryError`` if it is not RAM."""
        region, off = self._scalar_region(gpa, 2, Access.READ)
        return _U16.unpack_from(region.buffer, off)[0]

    def load_u32(self, gpa: int) -> int:
        """Read a little-endian u32. Raises ``GuestMemoryError`` if it is not RAM."""
        region, off = self._scalar_region(gpa, 4, Access.READ)
        return _U32.unpack_from(region.buffer, off)[0]

    def load_u64(self, gpa: int) -> int:
        """Read a little-endian u64. Raises ``GuestMemoryError`` if it is not RAM."""
        region, off = self._scalar_region(gpa, 8, Access.READ)
        return _U64.unpack_from(region.buffer, off)[0]

    def store_u8(self, gpa: int, value: int) -> None:
        """Write one byte (``value`` is truncated to 8 bits)."""
        region, off = self._scalar_region(gpa, 1, Access.WRITE)
        region.buffer[off] = value & 0xFF

    def store_u16(self, gpa: int, value: int) -> None:
        """Write a little-endian u16 (``value`` is truncated to 16 bits)."""
        region, off = self._scalar_region(gpa, 2, Access.WRITE)
        _U16.pack_into(region.buffer, off, value & 0xFFFF)

    def store_u32(self, gpa: int, value: int) -> None:
        """Write a little-endian u32 (``value`` is truncated to 32 bits)."""
        region, off = self._scalar_region(gpa, 4, Access.WRITE)
        _U32.pack_into(region.buffer, off, value & 0xFFFF_FFFF)

    def store_u64(self, gpa: int, value: int) -> None:
        """Write a little-endian u64 (``value`` is truncated to 64 bits)."""
        region, off = self._scalar_region(gpa, 8, Access.WRITE)
        _U64.pack_into(region.buffer, off, value & 0xFFFF_FFFF_FFFF_FFFF)

    # -- struct-shaped access -------------------------------------------------------------

    def read_struct(self, layout: struct.Struct, gpa: int) -> tuple[int, ...]:
        """Unpack a precompiled ``struct.Struct`` at ``gpa`` (the hot-path ``read_obj``)."""
        region, off = self._scalar_region(gpa, layout.size, Access.READ)
        return layout.unpack_from(region.buffer, off)

    def write_struct(self, layout: struct.Struct, gpa: int, *values: int) -> None:
        """Pack ``values`` with a precompiled ``struct.Struct`` at ``gpa``."""
        region, off = self._scalar_region(gpa, layout.size, Access.WRITE)
        layout.pack_into(region.buffer, off, *values)

    def __repr__(self) -> str:
        return f"GuestMemory({len(self._regions)} regions, {self.size:#x} bytes)"

