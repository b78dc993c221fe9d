"""The server's view of client memory: DMA windows from ``VFIO_USER_DMA_MAP``.

Rules (vfio-user.rst "VFIO_USER_DMA_MAP"/"DMA_UNMAP", "Client memory access"):

1. A window comes with at most one fd. With an fd, it is mapped (shared) into the
   device's ``GuestMemory`` at its DMA address, so the device's DMA reaches client memory
   directly. Without one, it is reachable only by ``VFIO_USER_DMA_READ``/``DMA_WRITE``
   messages; ``DmaMemory`` routes accesses inside such windows to that channel.
2. A map over an existing window fails with ``EEXIST``; an unmap must match a window
   exactly (address and size). At most ``max_windows`` windows exist at once.
3. A mapped fd must be a regular file (memfd, tmpfs, hugetlbfs file) at least
   ``offset + size`` long, and ``offset`` page aligned: mapping past the end of a file would
   make a later device DMA fault the server with SIGBUS. (A client that shrinks the file
   afterwards can still do that; sealing memfds with ``F_SEAL_SHRINK`` prevents it.)
4. The table owns window fds and closes them when a window goes (unmap, disconnect).
5. Device writes are observed, for DMA dirty-page logging, only by ``DmaMemory`` (its
   write paths are the only hook a ``GuestMemory`` offers without touching the core).
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Protocol

from devmodels import Access, GuestMemory, GuestMemoryError, HostError, MemoryRegion, UsageError
from devmodels.fds import close_fds

from ..defs import VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE
from ..errors import VfioUserReject
from .dirty import DirtyLog

__all__ = ["DmaWindow", "DmaTable", "DmaChannel", "DmaMemory"]

_ADDRESS_LIMIT = 1 << 64
_KNOWN_FLAGS = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE


@dataclass(eq=False)
class DmaWindow:
    """One window of client memory.

    Attributes:
        address: its DMA address.
        size: bytes.
        readable, writable: the permissions the client granted.
        fd: the backing fd (owned by the table) or ``None`` (message access only).
        offset: where the window starts in ``fd``.
        region: the ``MemoryRegion`` mapped into the device memory, if any.
    """

    address: int
    size: int
    readable: bool
    writable: bool
    fd: int | None = None
    offset: int = 0
    region: MemoryRegion | None = field(default=None, repr=False)

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.address + self.size


class DmaChannel(Protocol):
    """The message path to client memory (``VFIO_USER_DMA_READ``/``DMA_WRITE``)."""

    def dma_read(self, address: int, count: int) -> bytes:
        """Read ``count`` bytes at ``address``; raise ``GuestMemoryError`` on failure."""
        ...

    def dma_write(self, address: int, data: bytes) -> None:
        """Write ``data`` at ``address``; raise ``GuestMemoryError`` on failure."""
        ...


class DmaTable:
    """The windows of one connection, mapped into ``memory`` (rules 1–4).

    Args:
        memory: the device's memory; fd-backed windows become regions of it, fd-less ones
            are registered with it when it is a ``DmaMemory``.
        max_windows: the ``max_dma_maps`` this server advertised.
    """

    def __init__(self, memory: GuestMemory, max_windows: int) -> None:
        self.memory = memory
        self.max_windows = max_windows
        self._windows: list[DmaWindow] = []
        self._bases: list[int] = []

    @property
    def windows(self) -> tuple[DmaWindow, ...]:
        """The windows in address order."""
        return tuple(self._windows)

    def add(self, address: int, size: int, flags: int, fd: int | None, offset: int) -> DmaWindow:
        """Map a window; on success the table owns ``fd``, on failure the caller still does.

        Raises:
            VfioUserReject: the request breaks rules 1–3.
        """
        if flags & ~_KNOWN_FLAGS:
            raise VfioUserReject(errno.EINVAL, f"unknown DMA map flags {flags:#x}")
        if size <= 0:
            raise VfioUserReject(errno.EINVAL, "DMA window of size 0")
        if address + size > _ADDRESS_LIMIT:
            raise VfioUserReject(errno.EINVAL, f"DMA window [{address:#x}, +{size:#x}) wraps past 2**64")
        i = bisect.bisect_left(self._bases, address)
        for j in (i - 1, i):
            if 0 <= j < len(self._windows):
                other = self._windows[j]
                if other.address < address + size and address < other.end:
                    raise VfioUserReject(
                        errno.EEXIST, f"DMA window [{address:#x}, +{size:#x}) overlaps [{other.address:#x}, +{other.size:#x})"
                    )
        if len(self._windows) >= self.max_windows:
            raise VfioUserReject(errno.ENOSPC, f"already {len(self._windows)} DMA windows (max_dma_maps)")
        window = DmaWindow(
            address,
            size,
            readable=bool(flags & VFIO_USER_F_DMA_REGION_READ),
            writable=bool(flags & VFIO_USER_F_DMA_REGION_WRITE),
            fd=fd,
            offset=offset if fd is not None else 0,
        )
        if fd is not None:
            window.region = self._map(window, fd, offset)
        elif isinstance(self.memory, DmaMemory):
            self.memory.add_remote(window)
        self._windows.insert(i, window)
        self._bases.insert(i, address)
        return window

    def _map(self, window: DmaWindow, fd: int, offset: int) -> MemoryRegion:
        if offset % mmap.PAGESIZE:
            raise VfioUserReject(errno.EINVAL, f"DMA window fd offset {offset:#x} is not page aligned")
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise VfioUserReject(errno.EBADF, f"DMA window fd is unusable: {exc}") from None
        if not stat.S_ISREG(info.st_mode):
            raise VfioUserReject(errno.EINVAL, "DMA window fd is not a regular file (memfd/tmpfs)")
        if info.st_size < offset + window.size:
            raise VfioUserReject(
                errno.EINVAL, f"DMA window [{offset:#x}, +{window.size:#x}) runs past the end of its file ({info.st_size:#x})"
            )
        try:
            region = MemoryRegion.from_fd(window.address, window.size, fd, offset, readonly=not window.writable)
        except (HostError, UsageError) as exc:
            raise VfioUserReject(errno.EINVAL, f"cannot map DMA window: {exc}") from None
        try:
            self.memory.add_region(region)
        except UsageError as exc:
            region.close()
            raise VfioUserReject(errno.EEXIST, f"DMA window collides with device memory: {exc}") from None
        return region

    def remove(self, address: int, size: int) -> DmaWindow:
        """Unmap the window that is exactly ``[address, address+size)`` and close its fd.

        Raises:
            VfioUserReject: no window matches exactly (``ENOENT``).
        """
        i = bisect.bisect_left(self._bases, address)
        if i == len(self._bases) or self._bases[i] != address or self._windows[i].size != size:
            raise VfioUserReject(errno.ENOENT, f"no DMA window is exactly [{address:#x}, +{size:#x})")
        window = self._windows.pop(i)
        del self._bases[i]
        self._release(window)
        return window

    def clear(self) -> None:
        """Unmap every window (client disconnect)."""
        for window in self._windows:
            self._release(window)
        self._windows.clear()
        self._bases.clear()

    def find(self, address: int, count: int) -> DmaWindow | None:
        """The window wholly containing ``[address, address+count)``, if any."""
        i = bisect.bisect_right(self._bases, address) - 1
        if i >= 0:
            window = self._windows[i]
            if address + count <= window.end:
                return window
        return None

    def _release(self, window: DmaWindow) -> None:
        if window.region is not None:
            try:
                self.memory.remove_region(window.address)
            except UsageError:
                pass  # the VMM removed it itself; closing is still ours to do
            window.region.close()
            window.region = None
        elif isinstance(self.memory, DmaMemory):
            self.memory.remove_remote(window)
        if window.fd is not None:
            close_fds([window.fd])
            window.fd = None


class DmaMemory(GuestMemory):
    """Device memory of a vfio-user server: fd windows mapped, other windows by message.

    Give one to the device model and to ``VfioUserServer``; the server maps fd-backed
    windows into it as regions and registers fd-less ones here, routing device accesses
    inside them to ``channel`` (rule 1). Zero-copy ``view``/``views`` of an fd-less window
    are impossible and raise ``GuestMemoryError``; the byte and scalar accessors work.
    A ``translate`` hook does not apply to fd-less windows.

    While ``dirty`` holds a ``DirtyLog`` (the server's DMA logging), every device write
    is recorded there by address, whichever window it lands in, and so is every view
    handed out for writing (rule 5); with no log the write paths pay one ``None`` test.
    """

    def __init__(self) -> None:
        super().__init__()
        self._remote: list[DmaWindow] = []
        self.channel: DmaChannel | None = None
        self.dirty: DirtyLog | None = None

    def add_remote(self, window: DmaWindow) -> None:
        """Register a window reached only by messages."""
        self._remote.append(window)

    def remove_remote(self, window: DmaWindow) -> None:
        """Forget a message-only window."""
        if window in self._remote:
            self._remote.remove(window)

    def _remote_for(self, gpa: int, length: int) -> DmaWindow | None:
        for window in self._remote:
            if window.address <= gpa and gpa + length <= window.end:
                return window
            if window.address < gpa + length and gpa < window.end:
                raise GuestMemoryError(gpa, length, "access straddles a message-only DMA window")
        return None

    def _remote_read(self, window: DmaWindow, gpa: int, length: int) -> bytes:
        if not window.readable:
            raise GuestMemoryError(gpa, length, "DMA window is not readable")
        if self.channel is None:
            raise GuestMemoryError(gpa, length, "no vfio-user client connected")
        data = self.channel.dma_read(gpa, length)
        if len(data) != length:
            raise GuestMemoryError(gpa, length, "short DMA_READ reply")
        return data

    def _remote_write(self, window: DmaWindow, gpa: int, data: bytes) -> None:
        if not window.writable:
            raise GuestMemoryError(gpa, len(data), "DMA window is read-only")
        if self.channel is None:
            raise GuestMemoryError(gpa, len(data), "no vfio-user client connected")
        self.channel.dma_write(gpa, data)

    # -- GuestMemory accessors, routed (each falls back to the mapped regions) ---------------

    def check_range(self, gpa: int, length: int, access: Access = Access.READ) -> bool:
        """Whether the range is wholly accessible (mapped RAM or one message window)."""
        if self._remote:
            try:
                window = self._remote_for(gpa, length)
            except GuestMemoryError:
                return False
            if window is not None:
                return (not access & Access.READ or window.readable) and (not access & Access.WRITE or window.writable)
        return super().check_range(gpa, length, access)

    def read(self, gpa: int, length: int) -> bytes:
        """Read ``length`` bytes (``GuestMemory.read``)."""
        if self._remote and length >= 0:
            window = self._remote_for(gpa, length)
            if window is not None:
                return self._remote_read(window, gpa, length)
        return super().read(gpa, length)

    def read_into(self, gpa: int, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` (``GuestMemory.read_into``)."""
        if self._remote:
            dst = memoryview(buf).cast("B")
            window = self._remote_for(gpa, len(dst))
            if window is not None:
                dst[:] = self._remote_read(window, gpa, len(dst))
                return
        super().read_into(gpa, buf)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (``GuestMemory.write``)."""
        if self.dirty is not None:
            self.dirty.mark(gpa, memoryview(data).nbytes)
        if self._remote:
            raw = bytes(memoryview(data).cast("B"))
            window = self._remote_for(gpa, len(raw))
            if window is not None:
                self._remote_write(window, gpa, raw)
                return
        super().write(gpa, data)

    def fill(self, gpa: int, length: int, value: int = 0) -> None:
        """Set ``length`` bytes to ``value`` (``GuestMemory.fill``)."""
        if self.dirty is not None:
            self.dirty.mark(gpa, length)
        if self._remote and length >= 0:
            window = self._remote_for(gpa, length)
            if window is not None:
                self._remote_write(window, gpa, bytes([value & 0xFF]) * length)
                return
        super().fill(gpa, length, value)

    def view(self, gpa: int, length: int, access: Access = Access.READ) -> memoryview:
        """A zero-copy view; impossible inside a message-only window."""
        if self.dirty is not None and access & Access.WRITE:
            self.dirty.mark(gpa, length)
        if self._remote and self._remote_for(gpa, length) is not None:
            raise GuestMemoryError(gpa, length, "message-only DMA window cannot be viewed (no fd)")
        return super().view(gpa, length, access)

    def views(self, segments: list[tuple[int, int]], access: Access = Access.READ) -> list[memoryview]:  # type: ignore[override]
        """Zero-copy views; impossible inside a message-only window."""
        if self.dirty is not None and access & Access.WRITE:
            for gpa, length in segments:
                self.dirty.mark(gpa, length)
        if self._remote:
            for gpa, length in segments:
                if self._remote_for(gpa, length) is not None:
                    raise GuestMemoryError(gpa, length, "message-only DMA window cannot be viewed (no fd)")
        return super().views(segments, access)

    def _load(self, gpa: int, size: int) -> int | None:
        if not self._remote:
            return None
        window = self._remote_for(gpa, size)
        if window is None:
            return None
        return int.from_bytes(self._remote_read(window, gpa, size), "little")

    def _store(self, gpa: int, size: int, value: int) -> bool:
        if self.dirty is not None:
            self.dirty.mark(gpa, size)
        if not self._remote:
            return False
        window = self._remote_for(gpa, size)
        if window is None:
            return False
        self._remote_write(window, gpa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        return True

    def load_u8(self, gpa: int) -> int:
        """Read one byte."""
        value = self._load(gpa, 1)
        return super().load_u8(gpa) if value is None else value

    def load_u16(self, gpa: int) -> int:
        """Read a little-endian u16."""
        value = self._load(gpa, 2)
        return super().load_u16(gpa) if value is None else value

    def load_u32(self, gpa: int) -> int:
        """Read a little-endian u32."""
        value = self._load(gpa, 4)
        return super().load_u32(gpa) if value is None else value

    def load_u64(self, gpa: int) -> int:
        """Read a little-endian u64."""
        value = self._load(gpa, 8)
        return super().load_u64(gpa) if value is None else value

    def store_u8(self, gpa: int, value: int) -> None:
        """Write one byte."""
        if not self._store(gpa, 1, value):
            super().store_u8(gpa, value)

    def store_u16(self, gpa: int, value: int) -> None:
        """Write a little-endian u16."""
        if not self._store(gpa, 2, value):
            super().store_u16(gpa, value)

    def store_u32(self, gpa: int, value: int) -> None:
        """Write a little-endian u32."""
        if not self._store(gpa, 4, value):
            super().store_u32(gpa, value)

    def store_u64(self, gpa: int, value: int) -> None:
        """Write a little-endian u64."""
        if not self._store(gpa, 8, value):
            super().store_u64(gpa, value)

    def read_struct(self, layout: struct.Struct, gpa: int) -> tuple[int, ...]:
        """Unpack ``layout`` at ``gpa``."""
        if self._remote:
            window = self._remote_for(gpa, layout.size)
            if window is not None:
                return layout.unpack(self._remote_read(window, gpa, layout.size))
        return super().read_struct(layout, gpa)

    def write_struct(self, layout: struct.Struct, gpa: int, *values: int) -> None:
        """Pack ``values`` with ``layout`` at ``gpa``."""
        if self.dirty is not None:
            self.dirty.mark(gpa, layout.size)
        if self._remote:
            window = self._remote_for(gpa, layout.size)
            if window is not None:
                self._remote_write(window, gpa, layout.pack(*values))
                return
        super().write_struct(layout, gpa, *values)
