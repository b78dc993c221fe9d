"""The front-end's memory table, mapped into a ``GuestMemory`` (vhost-user § Memory access).

The front-end describes guest RAM as regions ``(guest address, size, user address, mmap
offset)``, each with a file descriptor (a memfd) that the back-end maps. Descriptors in the
rings hold guest-physical addresses; the *ring* addresses of SET_VRING_ADDR are user
addresses of the front-end process, translated here with ``uaddr_to_gpa``.

Rules:

1. A table (SET_MEM_TABLE) or a region (ADD_MEM_REG) is validated completely before
   anything is mapped: size positive; guest, user and file ranges inside 2**64; mmap
   offset page aligned; the descriptor a regular file (memfds are) at least ``offset +
   size`` long (a mapping past the end of a file faults with SIGBUS on access); no two
   regions overlap in guest-physical or in user space; at most ``max_slots`` regions. An
   invalid request changes nothing and raises ``MemoryTableError``.
2. Mapping is all or nothing: if one ``mmap`` fails, the ones made for the same request
   are undone and the previous table stays.
3. The table owns nothing but its mappings: a descriptor is closed as soon as it has
   been mapped (or refused). The caller drains in-flight I/O before replacing or removing
   regions (``BlockBackend`` rule 3), since a mapping is gone once removed.
4. Regions are added to and removed from the ``GuestMemory`` the device was built with, so
   the device keeps one memory object for its whole life; RAM that was not added by the
   table is never touched.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from devmodels import ADDRESS_LIMIT, GuestMemory, HostError, MemoryRegion, UsageError

from .defs import VHOST_USER_MAX_MEM_SLOTS
from .messages import Region, close_fds

__all__ = ["MemoryTable", "MemoryTableError", "MappedRegion"]

_log = logging.getLogger("devmodels.vhost_user")


class MemoryTableError(Exception):
    """A memory table or region the back-end refuses (rule 1); nothing was changed."""


@dataclass(frozen=True)
class MappedRegion:
    """A region of the table and the ``MemoryRegion`` that maps it."""

    region: Region
    mapping: MemoryRegion


def _check_region(region: Region, fd: int) -> None:
    if region.size <= 0:
        raise MemoryTableError(f"region at gpa {region.gpa:#x} has size 0")
    for label, base in (("guest", region.gpa), ("user", region.uaddr), ("file", region.mmap_offset)):
        if base + region.size > ADDRESS_LIMIT:
            raise MemoryTableError(f"region {label} range [{base:#x}, +{region.size:#x}) overflows 2**64")
    if region.mmap_offset % mmap.ALLOCATIONGRANULARITY:
        raise MemoryTableError(f"mmap offset {region.mmap_offset:#x} is not page aligned")
    try:
        info = os.fstat(fd)
    except OSError as exc:
        raise MemoryTableError(f"region descriptor {fd}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MemoryTableError(f"region descriptor {fd} is not a memory file (mode {info.st_mode:#o})")
    if info.st_size < region.mmap_offset + region.size:
        raise MemoryTableError(
            f"region file is {info.st_size:#x} bytes, shorter than offset {region.mmap_offset:#x} + size {region.size:#x}"
        )


def _overlaps(a_base: int, a_size: int, b_base: int, b_size: int) -> bool:
    return a_base < b_base + b_size and b_base < a_base + a_size


class MemoryTable:
    """The mapped regions of one front-end (rules 1–4).

    Args:
        memory: the device's guest RAM; the table adds and removes only its own regions.
        max_slots: the most regions held at once.
    """

    def __init__(self, memory: GuestMemory, *, max_slots: int = VHOST_USER_MAX_MEM_SLOTS) -> None:
        if max_slots < 1:
            raise UsageError(f"max_slots must be positive, got {max_slots}")
        self.memory = memory
        self.max_slots = max_slots
        self._regions: list[MappedRegion] = []  # sorted by user address
        self._ubases: list[int] = []

    @property
    def regions(self) -> tuple[MappedRegion, ...]:
        """The mapped regions, by user address."""
        return tuple(self._regions)

    def __len__(self) -> int:
        return len(self._regions)

    # -- changes -----------------------------------------------------------------------------

    def set_table(self, regions: Sequence[Region], fds: Sequence[int]) -> None:
        """Replace the whole table (SET_MEM_TABLE). The descriptors are consumed.

        Raises:
            MemoryTableError: the table is invalid or could not be mapped; the old table stays.
        """
        try:
            if len(fds) != len(regions):
                raise MemoryTableError(f"{len(regions)} regions but {len(fds)} descriptors")
            if len(regions) > self.max_slots:
                raise MemoryTableError(f"{len(regions)} regions exceed {self.max_slots} slots")
            for i, (region, fd) in enumerate(zip(regions, fds, strict=True)):
                _check_region(region, fd)
                for other in regions[:i]:
                    self._check_disjoint(region, other)
            self._check_ram(regions, replacing=True)
            mapped = self._map_all(regions, fds)
        finally:
            close_fds(fds)
        self.clear()
        for entry in mapped:
            self._insert(entry)

    def add(self, region: Region, fd: int) -> None:
        """Add one region (ADD_MEM_REG). The descriptor is consumed.

        Raises:
            MemoryTableError: the region is invalid, overlaps, or no slot is free.
        """
        try:
            if len(self._regions) >= self.max_slots:
                raise MemoryTableError(f"all {self.max_slots} memory slots are in use")
            _check_region(region, fd)
            for entry in self._regions:
                self._check_disjoint(region, entry.region)
            self._check_ram([region], replacing=False)
            (mapped,) = self._map_all([region], [fd])
        finally:
            close_fds([fd])
        self._insert(mapped)

    def remove(self, region: Region) -> None:
        """Remove the region with this guest address, user address and size (REM_MEM_REG).

        Raises:
            MemoryTableError: no such region.
        """
        for i, entry in enumerate(self._regions):
            r = entry.region
            if (r.gpa, r.uaddr, r.size) == (region.gpa, region.uaddr, region.size):
                del self._regions[i]
                del self._ubases[i]
                self._unmap(entry)
                return
        raise MemoryTableError(f"no region at gpa {region.gpa:#x} uaddr {region.uaddr:#x} size {region.size:#x}")

    def clear(self) -> None:
        """Unmap every region of the table."""
        entries, self._regions, self._ubases = self._regions, [], []
        for entry in entries:
            self._unmap(entry)

    # -- translation -------------------------------------------------------------------------

    def uaddr_to_gpa(self, uaddr: int, length: int) -> int | None:
        """The guest address of ``[uaddr, uaddr+length)`` if one region holds it all, else ``None``."""
        if uaddr < 0 or length < 0 or uaddr + length > ADDRESS_LIMIT:
            return None
        i = bisect.bisect_right(self._ubases, uaddr) - 1
        if i < 0:
            return None
        r = self._regions[i].region
        if uaddr + length > r.uaddr + r.size:
            return None
        return r.gpa + (uaddr - r.uaddr)

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _check_disjoint(a: Region, b: Region) -> None:
        if _overlaps(a.gpa, a.size, b.gpa, b.size):
            raise MemoryTableError(f"regions at gpa {a.gpa:#x} and {b.gpa:#x} overlap")
        if _overlaps(a.uaddr, a.size, b.uaddr, b.size):
            raise MemoryTableError(f"regions at uaddr {a.uaddr:#x} and {b.uaddr:#x} overlap")

    def _check_ram(self, regions: Sequence[Region], *, replacing: bool) -> None:
        """RAM the table does not own must not overlap the new regions (rule 4)."""
        own = {id(entry.mapping) for entry in self._regions}
        for ram in self.memory.regions:
            if replacing and id(ram) in own:
                continue
            for region in regions:
                if _overlaps(region.gpa, region.size, ram.base, ram.size):
                    raise MemoryTableError(f"region at gpa {region.gpa:#x} overlaps RAM the back-end already has")

    def _map_all(self, regions: Sequence[Region], fds: Sequence[int]) -> list[MappedRegion]:
        mapped: list[MappedRegion] = []
        try:
            for region, fd in zip(regions, fds, strict=True):
                try:
                    mapping = MemoryRegion.from_fd(region.gpa, region.size, fd, region.mmap_offset)
                except (HostError, UsageError) as exc:
                    raise MemoryTableError(str(exc)) from None
                mapped.append(MappedRegion(region, mapping))
        except MemoryTableError:
            for entry in mapped:
                _close_mapping(entry.mapping)
            raise
        return mapped

    def _insert(self, entry: MappedRegion) -> None:
        i = bisect.bisect_left(self._ubases, entry.region.uaddr)
        self._regions.insert(i, entry)
        self._ubases.insert(i, entry.region.uaddr)
        self.memory.add_region(entry.mapping)

    def _unmap(self, entry: MappedRegion) -> None:
        try:
            self.memory.remove_region(entry.mapping.base)
        except UsageError:
            pass  # already gone
        _close_mapping(entry.mapping)


def _close_mapping(mapping: MemoryRegion) -> None:
    try:
        mapping.close()
    except BufferError:
        # A view is still exported (an I/O that was not drained): the mapping goes when
        # the last view is released.
        _log.warning("vhost-user: region at gpa %#x still in use; unmapped when released", mapping.base)
