"""An in-memory disk with synchronous completions, for tests, fuzzers and demos.

Rules:

1. Same semantics as ``RawFileBackend`` (``check_request`` judges every request the same
   way), but each request completes inside ``submit``: the completion is ready when
   ``submit`` returns, and ``notify`` runs on the submitting thread.
2. The disk is a private anonymous mapping, so untouched sectors cost no memory. DISCARD
   and WRITE_ZEROES read back as zeros; whole pages in the range are returned to the host
   (``MADV_DONTNEED``) and the partial pages at the edges are zero-filled.
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..._errors import GuestMemoryError, UsageError
from ..._memory import Access, GuestMemory
from ..._trace import tracepoint
from .._block import BlockCompletion, BlockOp, BlockRequest, BlockStatus
from ._common import check_block_size, check_request

__all__ = ["MemoryDiskBackend"]

_PAGE = mmap.PAGESIZE
_log = logging.getLogger(__name__)
_tp_error = tracepoint("block.memory.error")


class MemoryDiskBackend:
    """A ``BlockBackend`` held in host memory.

    Args:
        size: capacity in bytes (positive, a multiple of ``logical_block_size``).
        readonly: writes, discards and write-zeroes complete IO_ERROR.
        data: initial content from offset 0 (at most ``size`` bytes).
        logical_block_size: the sector size offsets and lengths must be multiples of.

    Raises:
        UsageError: a bad argument.
    """

    def __init__(
        self,
        size: int,
        *,
        readonly: bool = False,
        data: bytes | bytearray | memoryview | None = None,
        logical_block_size: int = 512,
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise UsageError(f"MemoryDiskBackend: size must be a positive integer of bytes, got {size!r}")
        self._block_size = check_block_size(logical_block_size)
        if size % self._block_size:
            raise UsageError(f"MemoryDiskBackend: size {size} is not a multiple of logical_block_size "
                             f"{self._block_size} (a disk is whole sectors)")
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"MemoryDiskBackend: data must be bytes-like, got {type(data).__name__}")
        self._readonly = bool(readonly)
        self._disk = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if data is not None:
            if len(data) > size:
                self._disk.close()
                raise UsageError(f"initial data ({len(data)} bytes) is larger than the disk ({size})")
            self._disk[: len(data)] = bytes(data)
        self._size = size
        self._lock = threading.Lock()
        self._ready: list[BlockCompletion] = []
        self._notify: Callable[[], None] | None = None
        self._closed = False

    @property
    def capacity(self) -> int:
        """Size in bytes."""
        return self._size

    @property
    def readonly(self) -> bool:
        """Writes, discards and write-zeroes are refused."""
        return self._readonly

    @property
    def logical_block_size(self) -> int:
        """Sector size that offsets and lengths must be multiples of."""
        return self._block_size

    @property
    def supports_discard(self) -> bool:
        """DISCARD zeroes the range and frees its whole pages (unless read-only)."""
        return not self._readonly

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        """Execute ``request`` now; its completion is ready when this returns.

        Raises:
            UsageError: the backend is closed, or ``request`` is not a ``BlockRequest``.
        """
        if self._closed:
            raise UsageError("block backend is closed")
        completion = check_request(
            request, capacity=self._size, block_size=self._block_size, readonly=self._readonly
        )
        if completion is None:
            with self._lock:  # one request at a time touches the disk
                completion = self._execute(request, memory)
        if completion.status is not BlockStatus.OK and _tp_error.on:
            _tp_error.emit(op=request.op.value, offset=request.offset, error=completion.error)
        with self._lock:
            self._ready.append(completion)
            wake = len(self._ready) == 1
            notify = self._notify
        if wake and notify is not None:
            try:
                notify()
            except Exception:  # the VMM's hook failing must not turn into a submit error
                _log.exception("block backend notify hook raised")

    def completions(self) -> list[BlockCompletion]:
        """Every completion ready now; each is returned once."""
        with self._lock:
            ready, self._ready = self._ready, []
        return ready

    def drain(self) -> None:
        """Nothing is ever in flight: completions are synchronous."""

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Set the hook called (on the submitting thread) when completions become ready."""
        with self._lock:
            self._notify = notify

    def close(self) -> None:
        """Release the disk memory. Idempotent."""
        if not self._closed:
            self._closed = True
            self._disk.close()

    # -- host-side access (tests, image setup) --------------------------------------------

    def read_at(self, offset: int, length: int) -> bytes:
        """Host-side read of the disk content (bypasses read-only; for tests and setup).

        Raises:
            UsageError: the range is outside the disk or the backend is closed.
        """
        self._check_host_range(offset, length)
        return self._disk[offset : offset + length]

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Host-side write of disk content (bypasses read-only; for tests and setup).

        Raises:
            UsageError: the range is outside the disk or the backend is closed.
        """
        self._check_host_range(offset, len(data))
        self._disk[offset : offset + len(data)] = bytes(data)

    def _check_host_range(self, offset: int, length: int) -> None:
        if self._closed:
            raise UsageError("block backend is closed")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise UsageError(f"range [{offset:#x}, +{length:#x}) is outside the {self._size:#x}-byte disk")

    def __enter__(self) -> MemoryDiskBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- execution ------------------------------------------------------------------------

    def _execute(self, request: BlockRequest, memory: GuestMemory) -> BlockCompletion:
        op = request.op
        offset, length = request.offset, request.length
        try:
            if op is BlockOp.READ:
                self._copy(request, memory, into_guest=True)
            elif op is BlockOp.WRITE:
                self._copy(request, memory, into_guest=False)
            elif op is BlockOp.FLUSH:
                length = 0
            else:  # DISCARD, WRITE_ZEROES: both leave zeros behind
                self._zero(offset, length)
        except GuestMemoryError as exc:
            return BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, f"guest memory: {exc}")
        return BlockCompletion(request.tag, BlockStatus.OK, length)

    def _copy(self, request: BlockRequest, memory: GuestMemory, *, into_guest: bool) -> None:
        views = memory.views(request.segments, Access.WRITE if into_guest else Access.READ)
        disk = memoryview(self._disk)
        try:
            pos = request.offset
            for view in views:
                n = len(view)
                if into_guest:
                    view[:] = disk[pos : pos + n]
                else:
                    disk[pos : pos + n] = view
                pos += n
        finally:
            for view in views:
                view.release()
            disk.release()

    def _zero(self, offset: int, length: int) -> None:
        end = offset + length
        first = -(-offset // _PAGE) * _PAGE
        last = end // _PAGE * _PAGE
        if first < last:
            # Private anonymous pages read back as zeros after MADV_DONTNEED.
            self._disk.madvise(mmap.MADV_DONTNEED, first, last - first)
            self._fill(offset, first)
            self._fill(last, end)
        else:
            self._fill(offset, end)

    def _fill(self, start: int, stop: int) -> None:
        pos = start
        while pos < stop:
            n = min(stop - pos, 1 << 20)
            self._disk[pos : pos + n] = bytes(n)
            pos += n


if TYPE_CHECKING:  # the static proof that MemoryDiskBackend implements the interface
    from .._block import BlockBackend

    def _implements(backend: MemoryDiskBackend) -> BlockBackend:
        return backend
