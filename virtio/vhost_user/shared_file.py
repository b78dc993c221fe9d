"""Mapping a memory file a front-end shares with the back-end (the inflight buffer, the
dirty log).

Rules:

1. ``map_shared`` checks before it maps: the descriptor is a regular file (a memfd) at
   least ``offset + size`` long; anything else raises the caller's error class naming
   ``what``, and nothing is mapped. The descriptor stays the caller's to close.
2. A shared mapping past the end of its file faults (SIGBUS: the whole server dies) on
   access, and the front-end holds the file: a file that allows sealing gets
   ``F_SEAL_SHRINK`` before its size is checked (``seal_against_shrinking``), so the
   size checked is the size it keeps. A file that cannot be sealed is used as it is, as
   guest RAM's are (``memory`` rule 1).
3. mmap offsets are page aligned: the mapping starts at the page holding ``offset``;
   ``map_shared`` returns where ``offset`` lies in it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat

__all__ = ["seal_against_shrinking", "map_shared"]


def seal_against_shrinking(fd: int) -> bool:
    """Add ``F_SEAL_SHRINK`` to ``fd`` if its file allows sealing (rule 2); whether it
    is sealed so now."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError:
        return False  # not a memfd, sealing not allowed, or F_SEAL_SEAL already set
    return True


def map_shared(fd: int, offset: int, size: int, *, what: str, noun: str,
               error: type[Exception]) -> tuple[mmap.mmap, int]:
    """``[offset, offset + size)`` of the memory file ``fd`` mapped shared read-write, and
    where ``offset`` lies in the mapping (rules 1–3).

    Raises:
        error: ``fd`` is not a regular file, is shorter than ``offset + size``, or cannot
            be mapped (messages name ``what``, "``what`` descriptor", and ``noun``).
    """
    try:
        info = os.fstat(fd)
    except OSError as exc:
        raise error(f"{what} descriptor: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} descriptor is not a memory file (mode {info.st_mode:#o})")
    if seal_against_shrinking(fd):  # rule 2: then the size checked below stays
        info = os.fstat(fd)
    if info.st_size < offset + size:
        raise error(f"{what} file is {info.st_size:#x} bytes, shorter than {offset:#x} + {size:#x}")
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(fd, offset - base + size, flags=mmap.MAP_SHARED,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
    except (OSError, ValueError) as exc:
        raise error(f"cannot map {noun}: {exc}") from None
    return mapping, offset - base
