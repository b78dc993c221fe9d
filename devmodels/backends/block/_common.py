"""Checks and host helpers shared by the block backends.

Rules:

1. ``check_request`` is the one place a backend judges a request before doing anything:
   every value in a ``BlockRequest`` may come from a guest, so a bad one becomes an
   ``IO_ERROR`` completion (interface rule 2), never an exception. Only a request that is
   not a ``BlockRequest`` / ``BlockOp`` at all (VMM code calling wrongly) is a ``UsageError``.
2. ``fallocate`` is the only way to punch holes or zero ranges; Python's ``os.posix_fallocate``
   takes no mode flags, so libc's ``fallocate(2)`` is called through ctypes (the call releases
   the GIL like any other blocking syscall).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from ..._errors import UsageError
from .._block import BlockCompletion, BlockOp, BlockRequest, BlockStatus

__all__ = [
    "check_request",
    "check_block_size",
    "fallocate",
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FALLOC_FL_ZERO_RANGE",
    "UNSUPPORTED_ERRNOS",
]

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# What a filesystem or block device answers when it cannot do a fallocate mode.
UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.ENOTTY})

_MODIFYING = frozenset({BlockOp.WRITE, BlockOp.DISCARD, BlockOp.WRITE_ZEROES})
_RANGED = frozenset({BlockOp.READ, BlockOp.WRITE, BlockOp.DISCARD, BlockOp.WRITE_ZEROES})


def check_block_size(size: int) -> int:
    """Validate a logical block size (a power of two from 512 to 64 KiB) and return it.

    Raises:
        UsageError: it is not one.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 512 or size > 65536 or size & (size - 1):
        raise UsageError(f"logical_block_size must be a power of two in [512, 65536], got {size!r}")
    return size


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fail(request: BlockRequest, reason: str) -> BlockCompletion:
    return BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, reason)


def check_request(
    request: BlockRequest, *, capacity: int, block_size: int, readonly: bool
) -> BlockCompletion | None:
    """Judge ``request`` before execution: ``None`` if it may run, else its IO_ERROR completion.

    Checks: numbers are non-negative integers; ranged operations are aligned to
    ``block_size`` and end inside ``capacity``; READ/WRITE segment lengths add up to
    ``length``; nothing modifies a read-only disk.

    Raises:
        UsageError: ``request`` is not a ``BlockRequest`` with a ``BlockOp``.
    """
    if not isinstance(request, BlockRequest):
        raise UsageError(f"submit() takes a BlockRequest, got {type(request).__name__}")
    op = request.op
    if not isinstance(op, BlockOp):
        raise UsageError(f"BlockRequest.op must be a BlockOp, got {op!r}")
    if op is BlockOp.FLUSH:
        return None
    offset, length = request.offset, request.length
    if not _is_count(offset) or not _is_count(length):
        return _fail(request, f"bad offset/length {offset!r}/{length!r}")
    if op in _MODIFYING and readonly:
        return _fail(request, "disk is read-only")
    if op in _RANGED and (offset % block_size or length % block_size):
        return _fail(request, f"range [{offset:#x}, +{length:#x}) is not {block_size}-byte aligned")
    # Python ints cannot overflow; capacity is a host value below 2**63.
    if offset + length > capacity:
        return _fail(request, f"range [{offset:#x}, +{length:#x}) ends past capacity {capacity:#x}")
    if op is BlockOp.READ or op is BlockOp.WRITE:
        total = 0
        try:
            for gpa, count in request.segments:
                if not _is_count(gpa) or not _is_count(count):
                    return _fail(request, f"bad segment ({gpa!r}, {count!r})")
                total += count
        except (TypeError, ValueError):
            return _fail(request, "segments are not (gpa, length) pairs")
        if total != length:
            return _fail(request, f"segments add up to {total:#x} bytes, request length is {length:#x}")
    return None


class _Libc:
    """libc's ``fallocate`` loaded once, on first use."""

    def __init__(self) -> None:
        self._fn: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]

    def fallocate(self) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
        if self._fn is None:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = getattr(libc, "fallocate64", None) or libc.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            self._fn = fn
        return self._fn


_libc = _Libc()


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with ``mode`` flags.

    Raises:
        OSError: the call failed (``UNSUPPORTED_ERRNOS`` when the mode is not supported).
    """
    if _libc.fallocate()(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(mode={mode:#x}): {os.strerror(err)}")
