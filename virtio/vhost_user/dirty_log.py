"""The front-end's dirty log: pages of guest memory the back-end wrote while it migrates.

vhost-user.rst § Migration: with VHOST_USER_PROTOCOL_F_LOG_SHMFD the front-end shares a
bitmap (SET_LOG_BASE: a file descriptor, the log's size and its offset in the file), one
bit per ``VHOST_LOG_PAGE`` of guest-physical addresses::

    page = addr / VHOST_LOG_PAGE
    log[page / 8] |= 1 << page % 8

The front-end (QEMU) reads and clears it with atomic exchanges while it copies guest RAM to
the destination, and every vhost back-end of the VM writes the same log.

Rules:

1. ``DirtyLog.open`` validates the whole description before mapping anything: size
   1..``VHOST_USER_MAX_LOG_SIZE`` and, like the offset, a multiple of 4 (whole 32-bit
   words; QEMU's log is an array of 64-bit words), the descriptor a regular file (a memfd) at least
   ``offset + size`` long; anything else is a ``LogError`` and nothing is kept. The file
   descriptor is closed once mapped (or refused). A file that allows sealing is sealed
   against shrinking before its size is checked (a mapping past the end of its file
   faults with SIGBUS; ``shared_file`` rule 2); QEMU's log is sealed already.
2. ``mark(gpa, length)`` sets the bit of every page of ``[gpa, gpa + length)`` with an
   atomic OR (``atomic_bits``: another back-end may set bits of the same byte at the same
   time); a bit already set is left alone (reading it first is enough: the front-end
   clears a bit only to copy the page afterwards). Pages past the end of the log are not
   guest RAM the front-end migrates; they are counted in ``outside``, never an error.
3. A page must be marked *after* the write to it (the front-end may copy the page and
   clear the bit at any moment; a bit set before the write could be cleared before it).
   Callers mark when the buffer is handed back (its used entry published) and mark the
   ring areas again when the ring stops, before GET_VRING_BASE is answered.
4. Work is bounded by the address space the log covers: overlapping ranges of one call
   are merged first (``mark_ranges``), so no guest-supplied list of segments makes a call
   walk more pages than the log has.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Iterable

from . import atomic_bits
from .defs import VHOST_LOG_PAGE, VHOST_USER_MAX_LOG_SIZE
from .messages import close_fds
from .shared_file import map_shared

__all__ = ["DirtyLog", "LogError"]

_WORD = struct.Struct("<I")
_PAGE_SHIFT = VHOST_LOG_PAGE.bit_length() - 1


class LogError(Exception):
    """A log description the back-end refuses (rule 1); nothing was mapped."""


class DirtyLog:
    """One mapped dirty log (rules 1–4). Build it with ``open``."""

    def __init__(self, mapping: mmap.mmap, start: int, size: int) -> None:
        self._map = mapping
        self._start = start  # offset of log byte 0 in the mapping
        self.size = size
        """Bytes of log: it covers ``size * 8`` pages."""
        self.pages = size * 8
        self.outside = 0
        """Pages asked for that lie past the end of the log (rule 2)."""
        self.marked = 0
        """Bits this back-end set (each counted once per set, not per ask)."""
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(mapping)) + start

    @classmethod
    def open(cls, fd: int, size: int, offset: int) -> DirtyLog:
        """Map ``size`` bytes of ``fd`` from ``offset`` (rule 1). ``fd`` is consumed.

        Raises:
            LogError: the description or the descriptor is unusable.
        """
        try:
            if not atomic_bits.available():
                raise LogError("this machine has no atomic bit setting for the log")
            if not 1 <= size <= VHOST_USER_MAX_LOG_SIZE:
                raise LogError(f"log size {size} is not in 1..{VHOST_USER_MAX_LOG_SIZE}")
            if size % 4 or offset % 4:
                # The bits are set a 32-bit word at a time (rule 2); QEMU's log is an array
                # of 64-bit words at offset 0.
                raise LogError(f"log size {size} and offset {offset:#x} must be multiples of 4")
            if offset < 0 or offset + size > 1 << 62:
                raise LogError(f"log offset {offset:#x} is out of range")
            mapping, start = map_shared(fd, offset, size, what="log", noun="the log", error=LogError)
        finally:
            close_fds([fd])
        return cls(mapping, start, size)

    def mark(self, gpa: int, length: int) -> None:
        """Mark every page of ``[gpa, gpa + length)`` dirty (rules 2–3)."""
        if length <= 0 or gpa < 0:
            return
        first = gpa >> _PAGE_SHIFT
        last = (gpa + length - 1) >> _PAGE_SHIFT
        if first >= self.pages:
            self.outside += last - first + 1
            return
        if last >= self.pages:
            self.outside += last - self.pages + 1
            last = self.pages - 1
        view, start, base = self._map, self._start, self._base
        page = first
        while page <= last:
            word = page >> 5
            stop = min(last, (word << 5) | 31)
            want = ((1 << (stop - page + 1)) - 1) << (page & 31)
            missing = want & ~_WORD.unpack_from(view, start + 4 * word)[0]
            while missing:
                bit = (missing & -missing).bit_length() - 1
                atomic_bits.set_bit(base + 4 * word, bit)
                self.marked += 1
                missing &= missing - 1
            page = stop + 1

    def mark_ranges(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Mark the pages of several ``(gpa, length)`` ranges, overlaps merged first (rule 4)."""
        merged: list[list[int]] = []
        for gpa, length in sorted((g, n) for g, n in ranges if n > 0):
            end = gpa + length
            if merged and gpa <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([gpa, end])
        for gpa, end in merged:
            self.mark(gpa, end - gpa)

    def is_marked(self, gpa: int) -> bool:
        """Whether the page holding ``gpa`` is marked (tests, diagnostics)."""
        page = gpa >> _PAGE_SHIFT
        if not 0 <= page < self.pages:
            return False
        return bool(self._map[self._start + (page >> 3)] >> (page & 7) & 1)

    def close(self) -> None:
        """Unmap the log."""
        if not self._map.closed:
            self._map.close()
