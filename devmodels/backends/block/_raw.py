"""A raw disk image (regular file or block device) served by a small worker pool.

Rules:

1. ``submit`` validates (``check_request``) on the caller's thread and queues; the I/O runs
   on ``BlockExecutor`` workers. Nothing host-side escapes ``submit`` or a worker as an
   exception: an ``OSError`` or a ``GuestMemoryError`` becomes the request's status.
2. Data moves zero-copy: ``os.preadv``/``os.pwritev`` go straight into
   ``GuestMemory.views(...)`` taken on the worker for that one I/O and released after it.
   Short transfers are continued; a read that hits end-of-file is IO_ERROR, never garbage.
3. With ``direct=True`` the file is opened ``O_DIRECT``. Guest segments whose address or
   length is not 512-byte aligned (or that the kernel refuses with EINVAL) go through a
   page-aligned bounce buffer of ``BOUNCE_SIZE`` bytes per worker, chunk by chunk, so
   memory stays bounded whatever the request length.
4. FLUSH is ``fdatasync`` after every earlier request finished (executor rule 2). DISCARD
   punches a hole (``FALLOC_FL_PUNCH_HOLE | KEEP_SIZE``); a filesystem that refuses makes
   it UNSUPPORTED from then on. WRITE_ZEROES punches when ``unmap`` allows, else uses
   ``FALLOC_FL_ZERO_RANGE``, else writes zeros in ``BOUNCE_SIZE`` chunks.
5. Inline reads (``inline_reads``, buffered images only): a READ of at most
   ``INLINE_READ_MAX`` bytes is first tried on the caller's thread with
   ``preadv(..., RWF_NOWAIT)``, which copies from the host page cache or fails with
   EAGAIN but never waits for the disk. A 4 KiB cached read takes microseconds; handing
   it to a worker and its completion back (a condition variable, the GIL twice, the
   notify hook, a loop wake-up) costs tens. The completion is handed out as a rejected
   request's is (executor rule 4). Any read the kernel does not satisfy whole at once
   (EAGAIN, short, an error, guest memory that is not RAM) goes to the workers
   unchanged, which own its outcome; a retried read rewrites the same guest bytes, so a
   partial inline attempt leaves no trace. Larger reads stay on the workers: their copy
   pays for the hand-off, and workers copy in parallel while the caller goes on.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..._errors import GuestMemoryError, HostError, UsageError
from ..._memory import Access, GuestMemory
from ..._trace import tracepoint
from .._block import BlockCompletion, BlockOp, BlockRequest, BlockStatus
from ._common import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    UNSUPPORTED_ERRNOS,
    check_block_size,
    check_request,
    fallocate,
)
from ._executor import BlockExecutor

__all__ = ["RawFileBackend", "BOUNCE_SIZE", "INLINE_READ_MAX"]

BOUNCE_SIZE = 1 << 20
INLINE_READ_MAX = 64 * 1024
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)  # Linux 4.14+
_DIO_ALIGN = 512
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024

_tp_error = tracepoint("block.raw.error")


class _ShortTransfer(Exception):
    """The file ended before the request did."""

    def __init__(self, done: int) -> None:
        super().__init__(done)
        self.done = done


class _Views:
    """Guest-memory views for one request, released however the I/O ends."""

    def __init__(self, memory: GuestMemory, segments: Sequence[tuple[int, int]], access: Access) -> None:
        self.views = [v for v in memory.views(segments, access) if len(v)]
        self._extra: list[memoryview] = []

    def slice(self, view: memoryview, start: int, stop: int | None = None) -> memoryview:
        part = view[start:stop]
        self._extra.append(part)
        return part

    def __enter__(self) -> _Views:
        return self

    def __exit__(self, *exc: object) -> None:
        for view in self._extra + self.views:
            view.release()


def _address(view: memoryview) -> int | None:
    """Host address of a writable view, or ``None`` (read-only views cannot be asked)."""
    try:
        anchor = ctypes.c_char.from_buffer(view)
    except (TypeError, ValueError, BufferError):
        return None
    address = ctypes.addressof(anchor)
    del anchor  # drop the export so the view can be released
    return address


def _dio_ready(views: list[memoryview]) -> bool:
    for view in views:
        address = _address(view)
        if address is None or address % _DIO_ALIGN or len(view) % _DIO_ALIGN:
            return False
    return True


class RawFileBackend:
    """A raw image file or block device as a ``BlockBackend``.

    Args:
        path: the image (it must exist; its current size is the capacity).
        readonly: open read-only; writes, discards and write-zeroes complete IO_ERROR.
        direct: open with ``O_DIRECT`` (bypass the host page cache).
        workers: I/O threads.
        queue_depth: most requests in flight before ``submit`` waits.
        logical_block_size: the device sector size offsets and lengths must be multiples of.
        inline_reads: try small reads from the page cache on the caller's thread (rule 5);
            off with ``direct`` or where the platform has no ``RWF_NOWAIT``.

    Attributes:
        inline_reads: reads completed inline (rule 5).
        delegated_reads: reads small enough to try inline that went to the workers.

    Raises:
        UsageError: a bad argument.
        HostError: the image cannot be opened (missing, not permitted, not a regular file or
            block device, O_DIRECT unsupported by its filesystem).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        direct: bool = False,
        workers: int = 4,
        queue_depth: int = 1024,
        logical_block_size: int = 512,
        inline_reads: bool = True,
    ) -> None:
        self._block_size = check_block_size(logical_block_size)
        self._inline = bool(inline_reads) and not direct and bool(_RWF_NOWAIT)
        self.inline_reads = 0
        self.delegated_reads = 0
        self._readonly = bool(readonly)
        self._direct = bool(direct)
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        if direct:
            flags |= os.O_DIRECT
        try:
            self._fd = os.open(path, flags)
        except OSError as exc:
            hint = " (the filesystem may not support O_DIRECT)" if direct and exc.errno == errno.EINVAL else ""
            raise HostError(f"cannot open disk image {os.fspath(path)!r}: {exc.strerror}{hint}") from exc
        try:
            mode = os.fstat(self._fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise HostError(f"disk image {os.fspath(path)!r} is not a regular file or block device")
            self._is_file = stat.S_ISREG(mode)
            self._capacity = os.lseek(self._fd, 0, os.SEEK_END)
            self._discard = self._probe_discard()
            self._zero_range = not self._readonly
            self._local = threading.local()
            self._bounces: list[mmap.mmap] = []
            self._bounce_lock = threading.Lock()
            self._zeros: mmap.mmap | None = None
            self._executor = BlockExecutor(
                self._execute, workers=workers, queue_depth=queue_depth, name="devmodels-raw"
            )
        except BaseException:
            os.close(self._fd)
            raise
        self._path = os.fspath(path)
        self._closed = False

    # -- BlockBackend properties ----------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Size in bytes (the image size when opened)."""
        return self._capacity

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
        """DISCARD punches holes (probed at open; cleared if the filesystem later refuses)."""
        return self._discard

    @property
    def direct(self) -> bool:
        """The image was opened with ``O_DIRECT``."""
        return self._direct

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet completed (on the workers)."""
        return self._executor.in_flight

    @property
    def reads_inline(self) -> bool:
        """Small reads are tried from the page cache on the caller's thread (rule 5)."""
        return self._inline

    # -- BlockBackend methods -------------------------------------------------------------

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        """Validate ``request`` and queue it for a worker (interface rules 1–3).

        A request that fails validation completes at once with IO_ERROR.

        Raises:
            UsageError: the backend is closed, or ``request`` is not a ``BlockRequest``.
        """
        if self._closed:
            raise UsageError("block backend is closed")
        rejected = check_request(
            request, capacity=self._capacity, block_size=self._block_size, readonly=self._readonly
        )
        if rejected is not None:
            if _tp_error.on:
                _tp_error.emit(op=request.op.value, error=rejected.error)
            self._executor.complete_now(rejected)
            return
        if request.op is BlockOp.READ and self._inline and request.length <= INLINE_READ_MAX:
            if self._read_now(request, memory):
                self.inline_reads += 1
                self._executor.complete_now(BlockCompletion(request.tag, BlockStatus.OK, request.length))
                return
            self.delegated_reads += 1
        self._executor.submit(request, memory)

    def _read_now(self, request: BlockRequest, memory: GuestMemory) -> bool:
        """Rule 5: the whole read from the page cache now, or ``False`` (nothing decided)."""
        try:
            views = memory.views(request.segments, Access.WRITE)
        except GuestMemoryError:
            return False
        try:
            done = os.preadv(self._fd, views, request.offset, _RWF_NOWAIT)
        except OSError:
            return False  # EAGAIN (not cached), or an error the worker will report
        finally:
            for view in views:
                view.release()
        return done == request.length

    def completions(self) -> list[BlockCompletion]:
        """Every completion ready now (non-blocking); each is returned once."""
        return self._executor.completions()

    def drain(self) -> None:
        """Wait until every submitted request has completed."""
        self._executor.drain()

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Set the hook a worker calls when completions become ready (rule 4)."""
        self._executor.set_notify(notify)

    def close(self) -> None:
        """Drain, stop the workers and close the image. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.close()
        os.close(self._fd)
        for buffer in self._bounces:
            buffer.close()
        if self._zeros is not None:
            self._zeros.close()

    def __enter__(self) -> RawFileBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self._readonly else "rw"
        return (
            f"RawFileBackend({self._path!r}, {mode}, capacity={self._capacity:#x}, direct={self._direct}, "
            f"inline_reads={self.inline_reads}, delegated_reads={self.delegated_reads})"
        )

    # -- execution (worker threads) -------------------------------------------------------

    def _execute(self, request: BlockRequest, memory: GuestMemory) -> BlockCompletion:
        op = request.op
        try:
            if op is BlockOp.READ:
                done = self._read(request, memory)
            elif op is BlockOp.WRITE:
                done = self._write(request, memory)
            elif op is BlockOp.FLUSH:
                if not self._readonly:
                    os.fdatasync(self._fd)
                done = 0
            elif op is BlockOp.DISCARD:
                if not self._discard:
                    return BlockCompletion(request.tag, BlockStatus.UNSUPPORTED, 0, "discard not supported")
                if not self._punch(request.offset, request.length):
                    return BlockCompletion(request.tag, BlockStatus.UNSUPPORTED, 0, "filesystem refused discard")
                done = request.length
            else:
                self._write_zeroes(request.offset, request.length, request.unmap)
                done = request.length
        except GuestMemoryError as exc:
            return self._error(request, 0, f"guest memory: {exc}")
        except _ShortTransfer as exc:
            return self._error(request, exc.done, "short transfer: the image ended before the request")
        except OSError as exc:
            return self._error(request, 0, f"host I/O error: {exc}")
        return BlockCompletion(request.tag, BlockStatus.OK, done)

    @staticmethod
    def _error(request: BlockRequest, done: int, reason: str) -> BlockCompletion:
        if _tp_error.on:
            _tp_error.emit(op=request.op.value, offset=request.offset, error=reason)
        return BlockCompletion(request.tag, BlockStatus.IO_ERROR, done, reason)

    def _read(self, request: BlockRequest, memory: GuestMemory) -> int:
        with _Views(memory, request.segments, Access.WRITE) as views:
            if self._direct and not _dio_ready(views.views):
                return self._bounced(views, request.offset, request.length, reading=True)
            try:
                return self._vectored(os.preadv, views, request.offset)
            except OSError as exc:
                if self._direct and exc.errno == errno.EINVAL:
                    return self._bounced(views, request.offset, request.length, reading=True)
                raise

    def _write(self, request: BlockRequest, memory: GuestMemory) -> int:
        with _Views(memory, request.segments, Access.READ) as views:
            if self._direct and not _dio_ready(views.views):
                return self._bounced(views, request.offset, request.length, reading=False)
            try:
                return self._vectored(os.pwritev, views, request.offset)
            except OSError as exc:
                if self._direct and exc.errno == errno.EINVAL:
                    return self._bounced(views, request.offset, request.length, reading=False)
                raise

    def _vectored(self, call: Callable[[int, Sequence[memoryview], int], int], views: _Views, offset: int) -> int:
        """Move all of ``views`` at ``offset``, continuing after short transfers."""
        pending = list(views.views)
        head = 0
        done = 0
        while head < len(pending):
            n = call(self._fd, pending[head : head + _IOV_MAX], offset + done)
            if n <= 0:
                raise _ShortTransfer(done)
            done += n
            while n and head < len(pending):
                size = len(pending[head])
                if n >= size:
                    n -= size
                    head += 1
                else:
                    pending[head] = views.slice(pending[head], n)
                    n = 0
        return done

    def _bounce(self) -> mmap.mmap:
        buffer: mmap.mmap | None = getattr(self._local, "bounce", None)
        if buffer is None:
            buffer = mmap.mmap(-1, BOUNCE_SIZE)  # page aligned, as O_DIRECT wants
            self._local.bounce = buffer
            with self._bounce_lock:
                self._bounces.append(buffer)
        return buffer

    def _bounced(self, views: _Views, offset: int, length: int, *, reading: bool) -> int:
        """Move ``length`` bytes through the aligned bounce buffer, ``BOUNCE_SIZE`` at a time."""
        bounce = memoryview(self._bounce())
        try:
            cursor = _Cursor(views.views)
            done = 0
            while done < length:
                n = min(BOUNCE_SIZE, length - done)
                chunk = bounce[:n]
                try:
                    if reading:
                        self._full(os.preadv, chunk, offset + done, done)
                        cursor.scatter(chunk)
                    else:
                        cursor.gather(chunk)
                        self._full(os.pwritev, chunk, offset + done, done)
                finally:
                    chunk.release()
                done += n
            return done
        finally:
            bounce.release()

    def _full(self, call: Callable[[int, Sequence[memoryview], int], int], chunk: memoryview, at: int, base: int) -> None:
        """Transfer all of ``chunk`` at file offset ``at`` (``base`` bytes of the request done)."""
        pos = 0
        while pos < len(chunk):
            part = chunk[pos:]
            try:
                n = call(self._fd, [part], at + pos)
            finally:
                part.release()
            if n <= 0:
                raise _ShortTransfer(base + pos)
            pos += n

    def _probe_discard(self) -> bool:
        """Whether punching holes works, found without touching data.

        For a regular file, punch one page past end-of-file (keeping the size): filesystems
        that can punch succeed without effect, others say EOPNOTSUPP. A block device cannot
        be probed harmlessly; assume it can and learn from the first refusal.
        """
        if self._readonly:
            return False
        if not self._is_file:
            return True
        beyond = -(-self._capacity // 4096) * 4096 + 4096
        try:
            fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, beyond, 4096)
        except OSError:
            return False
        return True

    def _punch(self, offset: int, length: int) -> bool:
        if length == 0:
            return True
        try:
            fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as exc:
            if exc.errno in UNSUPPORTED_ERRNOS:
                self._discard = False
                return False
            raise
        return True

    def _write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        if length == 0:
            return
        if unmap and self._discard and self._punch(offset, length):
            return
        if self._zero_range:
            try:
                fallocate(self._fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError as exc:
                if exc.errno not in UNSUPPORTED_ERRNOS:
                    raise
                self._zero_range = False
        zeros = self._zero_buffer()
        done = 0
        while done < length:
            n = min(BOUNCE_SIZE, length - done)
            chunk = memoryview(zeros)[:n]
            try:
                self._full(os.pwritev, chunk, offset + done, done)
            finally:
                chunk.release()
            done += n

    def _zero_buffer(self) -> mmap.mmap:
        with self._bounce_lock:
            if self._zeros is None:
                self._zeros = mmap.mmap(-1, BOUNCE_SIZE, prot=mmap.PROT_READ)
            return self._zeros


class _Cursor:
    """Walks a list of guest views, copying a contiguous chunk in or out at the position."""

    def __init__(self, views: list[memoryview]) -> None:
        self._views = views
        self._index = 0
        self._offset = 0

    def _walk(self, chunk: memoryview, into_guest: bool) -> None:
        pos = 0
        while pos < len(chunk) and self._index < len(self._views):
            view = self._views[self._index]
            n = min(len(view) - self._offset, len(chunk) - pos)
            if into_guest:
                view[self._offset : self._offset + n] = chunk[pos : pos + n]
            else:
                chunk[pos : pos + n] = view[self._offset : self._offset + n]
            pos += n
            self._offset += n
            if self._offset == len(view):
                self._index += 1
                self._offset = 0

    def scatter(self, chunk: memoryview) -> None:
        """Copy ``chunk`` into the guest views from the current position."""
        self._walk(chunk, into_guest=True)

    def gather(self, chunk: memoryview) -> None:
        """Fill ``chunk`` from the guest views at the current position."""
        self._walk(chunk, into_guest=False)


if TYPE_CHECKING:  # the static proof that RawFileBackend implements the interface
    from .._block import BlockBackend

    def _implements(backend: RawFileBackend) -> BlockBackend:
        return backend
