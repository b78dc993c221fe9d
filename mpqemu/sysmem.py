"""The guest RAM table QEMU's proxy sends (SYNC_SYSMEM), mapped into a ``GuestMemory``.

QEMU 7.2's ``proxy-memory-listener.c`` sends, after every memory-topology change of the
guest's address space, the whole list of RAM sections: for section ``i``, descriptor
``fds[i]`` and ``gpas[i]``, ``sizes[i]``, ``offsets[i]`` (the section's place in that
file). ROM is left out. ``hw/remote/memory.c`` drops the old table and maps the new one.

Rules:

1. A table replaces the previous one as a whole. It is validated completely first: at most
   ``REMOTE_MAX_FDS`` entries; every size positive; ``gpa + size`` within 2**64; every
   offset non-negative and page aligned; ``offset + size`` within the file (a mapping past
   the end of a file faults with SIGBUS on access, so this is checked with ``fstat``);
   descriptors are regular files (memfds are); no two entries overlap in guest-physical
   space, nor with RAM the ``GuestMemory`` already held that this table does not own.
2. An invalid table leaves the device with no RAM from the peer (as QEMU's remote does:
   it resets system memory before mapping), so DMA fails as a guest error instead of
   reaching a stale layout. The reason is raised as ``SysmemError``.
3. The table owns its descriptors and closes them when replaced or closed. A table equal
   to the current one (same files by inode, gpas, sizes, offsets) keeps the existing
   mappings and closes the new descriptors: QEMU resends the table on every BAR move.
4. A memfd without ``F_SEAL_SHRINK`` could be truncated by the peer under the mapping
   (a later access would fault); a warning is logged whenever such a table is mapped.
   QEMU's memory-backend-memfd seals by default.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import stat
from collections.abc import Sequence

from .defs import REMOTE_MAX_FDS
from .layouts import SyncSysmem
from devmodels import ADDRESS_LIMIT, DevmodelsError, GuestMemory, MemoryRegion, UsageError
from devmodels.fds import close_fds

__all__ = ["SysmemError", "SysmemTable"]

_log = logging.getLogger("devmodels.mpqemu")

_Key = tuple[int, int, int, int, int]  # (gpa, size, offset, st_dev, st_ino)


class SysmemError(Exception):
    """A SYNC_SYSMEM table that cannot be mapped; the message says why."""


class SysmemTable:
    """The regions of one ``GuestMemory`` that came from SYNC_SYSMEM (rules 1–4).

    Args:
        memory: the guest RAM the device reaches; the table adds and removes only its own
            regions in it.
    """

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.regions: list[MemoryRegion] = []
        self.updates = 0
        self._fds: list[int] = []
        self._key: list[_Key] = []

    def apply(self, table: SyncSysmem, fds: Sequence[int]) -> bool:
        """Replace the current table with ``table`` and the descriptors ``fds``.

        The table takes ownership of ``fds`` whatever happens.

        Returns:
            ``True`` if the mappings changed, ``False`` if the table was the current one.

        Raises:
            SysmemError: the table is invalid (rule 1); the peer's RAM is then unmapped.
        """
        fds = list(fds)
        try:
            key, unsealed = self._validate(table, fds)
        except SysmemError:
            close_fds(fds)
            self._drop()
            raise
        if key == self._key:
            close_fds(fds)
            return False
        if unsealed:
            _log.warning("SYNC_SYSMEM: a guest RAM file is not sealed against shrinking")
        self._drop()
        mapped: list[MemoryRegion] = []
        try:
            for i, fd in enumerate(fds):
                mapped.append(MemoryRegion.from_fd(table.gpas[i], table.sizes[i], fd, table.offsets[i]))
            for region in mapped:
                self.memory.add_region(region)
        except DevmodelsError as exc:  # HostError from mmap, UsageError from an overlap
            for region in mapped:
                if region in self.memory.regions:
                    self.memory.remove_region(region.base)
                _unmap(region)
            close_fds(fds)
            raise SysmemError(str(exc)) from exc
        self.regions = mapped
        self._fds = fds
        self._key = key
        self.updates += 1
        return True

    def _validate(self, table: SyncSysmem, fds: list[int]) -> tuple[list[_Key], bool]:
        if len(fds) > REMOTE_MAX_FDS:
            raise SysmemError(f"{len(fds)} descriptors, more than {REMOTE_MAX_FDS}")
        key: list[_Key] = []
        unsealed = False
        for i, fd in enumerate(fds):
            gpa, size, offset = table.gpas[i], table.sizes[i], table.offsets[i]
            where = f"entry {i} (gpa={gpa:#x} size={size:#x} offset={offset:#x})"
            if size == 0:
                raise SysmemError(f"{where}: zero size")
            if gpa + size > ADDRESS_LIMIT:
                raise SysmemError(f"{where}: gpa + size overflows 2**64")
            if offset < 0 or offset % mmap.ALLOCATIONGRANULARITY:
                raise SysmemError(f"{where}: offset is negative or not page aligned")
            try:
                st = os.fstat(fd)
            except OSError as exc:
                raise SysmemError(f"{where}: fstat failed: {exc}") from exc
            if not stat.S_ISREG(st.st_mode):
                raise SysmemError(f"{where}: descriptor is not a regular file or memfd")
            if offset + size > st.st_size:
                raise SysmemError(f"{where}: runs past the end of the file ({st.st_size:#x} bytes)")
            unsealed = unsealed or not _sealed_against_shrink(fd)
            key.append((gpa, size, offset, st.st_dev, st.st_ino))
        ordered = sorted(key)
        for before, after in zip(ordered, ordered[1:], strict=False):
            if before[0] + before[1] > after[0]:
                raise SysmemError(f"entries at gpa {before[0]:#x} and {after[0]:#x} overlap")
        own = {id(r) for r in self.regions}
        for gpa, size, *_ in ordered:
            for region in self.memory.regions:
                if id(region) not in own and region.base < gpa + size and gpa < region.end:
                    raise SysmemError(f"gpa {gpa:#x}+{size:#x} overlaps RAM the VMM added ({region!r})")
        return key, unsealed

    def _drop(self) -> None:
        for region in self.regions:
            try:
                self.memory.remove_region(region.base)
            except UsageError:
                pass  # removed by someone else; still ours to unmap
            _unmap(region)
        self.regions = []
        close_fds(self._fds)
        self._fds = []
        self._key = []

    def close(self) -> None:
        """Unmap every region and close every descriptor of the current table."""
        self._drop()


def _sealed_against_shrink(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:
        return False


def _unmap(region: MemoryRegion) -> None:
    try:
        region.close()
    except BufferError:
        # A memoryview into the mapping is still alive (a device broke _memory rule 3);
        # the mapping is released when that view is.
        _log.error("SYNC_SYSMEM: %r still has views into it; left to the garbage collector", region)

