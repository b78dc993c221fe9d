"""The system calls kernel VFIO needs, behind one small interface so tests can fake the kernel.

Rules: ``OsOps`` is the only place that touches ``/dev/vfio`` and sysfs; everything above
it takes a ``KernelOps``. Calls raise ``OSError`` with the kernel's errno, which the
container/group/device layers translate into ``VfioError`` subclasses that say what to do.
``ioctl`` with a ``bytearray`` argument passes a pointer to it, and the kernel's writes
land in it (``fcntl.ioctl(..., mutate_flag=True)``).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from typing import Protocol, runtime_checkable

__all__ = ["KernelOps", "OsOps"]


@runtime_checkable
class KernelOps(Protocol):
    """open/close/ioctl/pread/pwrite/mmap on device nodes, and the sysfs reads."""

    def open(self, path: str, flags: int) -> int:
        """``open(2)``."""
        ...

    def close(self, fd: int) -> None:
        """``close(2)``."""
        ...

    def ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int:
        """``ioctl(2)``; a ``bytearray`` is passed by pointer and updated in place."""
        ...

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """``pread(2)``."""
        ...

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """``pwrite(2)``."""
        ...

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        """A shared read/write mapping."""
        ...

    def readlink(self, path: str) -> str:
        """``readlink(2)``."""
        ...

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Directory entries."""
        ...


class OsOps:
    """The real system calls."""

    def open(self, path: str, flags: int) -> int:
        """``os.open``."""
        return os.open(path, flags | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        """``os.close``."""
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int:
        """``fcntl.ioctl`` (a bytearray is mutated in place)."""
        if isinstance(arg, bytearray):
            return fcntl.ioctl(fd, request, arg, True)
        return fcntl.ioctl(fd, request, arg)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """``os.pread``."""
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """``os.pwrite``."""
        return os.pwrite(fd, data, offset)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        """``mmap.mmap(fd, length, MAP_SHARED, offset=offset)``."""
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)

    def readlink(self, path: str) -> str:
        """``os.readlink``."""
        return os.readlink(path)

    def exists(self, path: str) -> bool:
        """``os.path.exists``."""
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        """``os.listdir``."""
        return os.listdir(path)
