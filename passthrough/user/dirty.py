"""DMA dirty-page logging: the pages a device wrote through DMA, for a migrating client.

vfio-user.rst "VFIO_DEVICE_FEATURE_DMA_LOGGING_START / STOP" and "..._REPORT" (the
vfio-user form of ``linux/vfio.h`` ``VFIO_DEVICE_FEATURE_DMA_LOGGING_*``).

Rules:

1. The log covers the IOVA ranges the client gave at START, or, with ``num_ranges`` 0
   ("all writes should be logged"), every DMA window: those mapped at START and those
   mapped while it runs (``add_window``/``remove_window``). Ranges must not overlap; at
   most ``MAX_RANGES`` of them.
2. Tracking granularity is the client's hinted page size when it is a power of two of at
   least ``MIN_PAGE``, else ``MIN_PAGE``; START replies with the size chosen. A hint that
   is not a power of two (or 0) is refused, as the kernel does.
3. Memory is bounded: one bit per tracked page, at most ``max_bitmap_bytes`` in all
   (START with more is refused with ``E2BIG``).
4. ``mark`` records a device write of ``[iova, iova+length)``; writes outside the logged
   ranges are not recorded (nobody asked). A zero-copy view handed out for writing is
   recorded when handed out.
5. REPORT reads and clears ("read and clear" as the kernel's report does) the bits of
   ``[iova, iova+length)`` at the client's ``page_size`` (a power of two): bit *i* covers
   ``[iova + i*page_size, +page_size)`` and is set if any tracked page meeting it is dirty;
   the bitmap is little-endian u64 words, bits beyond the range zero. A tracked page is
   cleared only if it lies wholly inside the reported range (so a coarser tracking page
   straddling the edge stays dirty for the next report: over-reporting is safe, losing a
   dirty page is not). The whole range must be logged, else the report is refused.
6. A report costs the bytes of its bitmap and of the log it covers, at C speed, plus a
   step per dirty tracked page: a report page finer than the tracking page fills bits a
   byte slice at a time, and clean stretches of the log are skipped a chunk at a time (a
   client's page sizes cannot make one REPORT hang the server).
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import VfioUserReject

__all__ = ["DirtyLog", "MAX_RANGES", "MIN_PAGE"]

MAX_RANGES = 256  # linux/vfio.h drivers refuse more (LOG_MAX_RANGES)
MIN_PAGE = 4096
_ADDRESS_LIMIT = 1 << 64
_CHUNK = 4096  # log bytes compared with zeros at once (rule 6)
_ZEROS = bytes(_CHUNK)


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass
class _Range:
    start: int
    end: int
    bits: bytearray  # one bit per tracking page from ``start``


class DirtyLog:
    """The dirty pages of a set of IOVA ranges (rules 1–6).

    Args:
        ranges: ``(iova, length)`` pairs; empty with ``all_windows`` for "log everything".
        page_size: the client's hint (rule 2).
        max_bitmap_bytes: the memory bound (rule 3).
        all_windows: the log follows the DMA windows (``num_ranges`` 0).

    Raises:
        VfioUserReject: a range is empty, wraps, overlaps another, or the bound is exceeded.
    """

    def __init__(
        self, ranges: list[tuple[int, int]], page_size: int, *, max_bitmap_bytes: int, all_windows: bool = False
    ) -> None:
        if not _power_of_two(page_size):
            raise VfioUserReject(errno.EINVAL, f"DMA logging page size {page_size:#x} is not a power of two")
        if len(ranges) > MAX_RANGES:
            raise VfioUserReject(errno.E2BIG, f"{len(ranges)} DMA logging ranges (at most {MAX_RANGES})")
        self.page_size = max(page_size, MIN_PAGE)
        self.shift = self.page_size.bit_length() - 1
        self.max_bitmap_bytes = max_bitmap_bytes
        self.all_windows = all_windows
        self._ranges: list[_Range] = []
        self._starts: list[int] = []
        self._bytes = 0
        for iova, length in sorted(ranges):
            self.add_range(iova, length)

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The logged ``(iova, length)`` ranges in address order."""
        return tuple((r.start, r.end - r.start) for r in self._ranges)

    def add_range(self, iova: int, length: int) -> None:
        """Log one more range (rule 1).

        Raises:
            VfioUserReject: empty, wrapping, overlapping, or beyond the memory bound.
        """
        end = iova + length
        if length <= 0 or end > _ADDRESS_LIMIT:
            raise VfioUserReject(errno.EINVAL, f"DMA logging range [{iova:#x}, +{length:#x}) is empty or wraps")
        i = bisect.bisect_left(self._starts, iova)
        for j in (i - 1, i):
            if 0 <= j < len(self._ranges) and self._ranges[j].start < end and iova < self._ranges[j].end:
                raise VfioUserReject(errno.EINVAL, f"DMA logging range [{iova:#x}, +{length:#x}) overlaps another")
        first, last = iova >> self.shift, (end - 1) >> self.shift
        size = ((last - first + 1) + 7) // 8
        if self._bytes + size > self.max_bitmap_bytes:
            raise VfioUserReject(errno.E2BIG, f"DMA logging needs more than {self.max_bitmap_bytes} bitmap bytes")
        self._bytes += size
        self._ranges.insert(i, _Range(iova, end, bytearray(size)))
        self._starts.insert(i, iova)

    def remove_range(self, iova: int) -> None:
        """Stop logging the range that starts at ``iova`` (a window went away)."""
        i = bisect.bisect_left(self._starts, iova)
        if i < len(self._starts) and self._starts[i] == iova:
            self._bytes -= len(self._ranges[i].bits)
            del self._ranges[i]
            del self._starts[i]

    # -- recording (rule 4) -----------------------------------------------------------------

    def mark(self, iova: int, length: int) -> None:
        """Record a device write of ``[iova, iova+length)``."""
        if length <= 0:
            return
        end = iova + length
        i = bisect.bisect_right(self._starts, iova) - 1
        if i < 0:
            i = 0
        shift = self.shift
        while i < len(self._ranges):
            r = self._ranges[i]
            if r.start >= end:
                break
            lo, hi = max(iova, r.start), min(end, r.end)
            if lo < hi:
                base = r.start >> shift
                bits = r.bits
                for page in range((lo >> shift) - base, ((hi - 1) >> shift) - base + 1):
                    bits[page >> 3] |= 1 << (page & 7)
            i += 1

    # -- reporting (rule 5) -----------------------------------------------------------------

    def covers(self, iova: int, length: int) -> bool:
        """Whether ``[iova, iova+length)`` is wholly logged."""
        pos, end = iova, iova + length
        i = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            if i < 0 or i >= len(self._ranges) or not self._ranges[i].start <= pos < self._ranges[i].end:
                return False
            pos = self._ranges[i].end
            i += 1
        return True

    def report(self, iova: int, length: int, page_size: int) -> bytes:
        """Read and clear the bitmap of ``[iova, iova+length)`` at ``page_size`` (rule 5).

        Raises:
            VfioUserReject: a bad page size, an empty or wrapping range, or one not logged.
        """
        if not _power_of_two(page_size):
            raise VfioUserReject(errno.EINVAL, f"report page size {page_size:#x} is not a power of two")
        if length <= 0 or iova + length > _ADDRESS_LIMIT:
            raise VfioUserReject(errno.EINVAL, f"report range [{iova:#x}, +{length:#x}) is empty or wraps")
        if not self.covers(iova, length):
            raise VfioUserReject(errno.EINVAL, f"report range [{iova:#x}, +{length:#x}) is not being logged")
        pages = -(-length // page_size)
        out = bytearray(-(-pages // 64) * 8)
        end = iova + length
        shift = self.shift
        i = max(bisect.bisect_right(self._starts, iova) - 1, 0)
        while i < len(self._ranges) and self._ranges[i].start < end:
            r = self._ranges[i]
            base = r.start >> shift
            lo, hi = max(iova, r.start), min(end, r.end)
            for page in self._set_pages(r.bits, (lo >> shift) - base, ((hi - 1) >> shift) - base + 1):
                start = (page + base) << shift
                stop = start + self.page_size
                first = (max(start, iova) - iova) // page_size
                last = (min(stop, end) - 1 - iova) // page_size
                _fill(out, first, last)
                if start >= iova and stop <= end:
                    r.bits[page >> 3] &= ~(1 << (page & 7)) & 0xFF
            i += 1
        return bytes(out)

    @staticmethod
    def _set_pages(bits: bytearray, first: int, stop: int) -> Iterator[int]:
        """The set bits in ``[first, stop)`` (rule 6: clean stretches skipped a chunk at a
        time; nothing is collected, bits may be cleared as they come)."""
        index, last = first >> 3, (stop - 1) >> 3
        while index <= last:
            chunk_end = min(index + _CHUNK, last + 1)
            if bits[index:chunk_end] == _ZEROS[: chunk_end - index]:
                index = chunk_end
                continue
            for byte_index in range(index, chunk_end):
                byte = bits[byte_index]
                if byte:
                    for b in range(8):
                        page = byte_index * 8 + b
                        if byte & (1 << b) and first <= page < stop:
                            yield page
            index = chunk_end


def _fill(out: bytearray, first: int, last: int) -> None:
    """Set bits ``first..last`` of ``out`` (bit *i*: byte ``i >> 3``, bit ``i & 7``); whole
    bytes in one slice store (rule 6)."""
    lo, hi = first >> 3, last >> 3
    head = (0xFF << (first & 7)) & 0xFF
    tail = (1 << ((last & 7) + 1)) - 1
    if lo == hi:
        out[lo] |= head & tail
        return
    out[lo] |= head
    out[lo + 1 : hi] = b"\xff" * (hi - lo - 1)
    out[hi] |= tail
