"""A block backend wrapper that serves page-cache hits inline, without a worker thread.

A 4 KiB read from the host page cache takes a few microseconds; handing it to a worker
thread and its completion back (a condition variable, the GIL twice, an eventfd and a
loop wake-up) costs far more, on the path a proxied guest waits on. ``NowaitReads`` tries
such reads on the caller's thread first with ``preadv(..., RWF_NOWAIT)``, which copies
from the page cache or fails with EAGAIN but never waits for the disk.

Rules:

1. Only READ requests of at most ``max_inline`` bytes are tried inline, and only if they
   are well formed (block-aligned range inside the capacity, segments adding up to the
   length). Larger reads stay on the workers: their copy is long enough to pay for the
   hand-off, and workers copy in parallel while the loop goes on serving registers. Everything else, and
   every read the kernel does not satisfy whole at once (EAGAIN, a short read, any
   error, guest memory that is not RAM), goes to the wrapped backend unchanged, which
   then owns its outcome: errors keep the wrapped backend's semantics. A read retried
   there rewrites the same guest bytes, so a partial inline attempt leaves no trace.
2. An inline read completes OK inside ``submit``; its completion waits in this wrapper's
   ready list, and ``notify`` runs (on the caller's thread) when that list becomes
   non-empty, as the executor does for requests it rejects at once.
3. The wrapper opens the image a second time, read-only and buffered; reads are coherent
   with the wrapped backend's buffered writes (one page cache). It is for buffered images:
   wrapping an ``O_DIRECT`` backend would put its reads through the host cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..._errors import GuestMemoryError, HostError
from ..._memory import Access, GuestMemory
from ...backends import BlockBackend, BlockCompletion, BlockOp, BlockRequest, BlockStatus

__all__ = ["NowaitReads", "MAX_INLINE"]

MAX_INLINE = 64 * 1024

_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


class NowaitReads:
    """``backend`` with page-cache hits read inline (rules 1–3).

    Args:
        backend: the buffered backend that does everything else (it is closed with this).
        path: the image ``backend`` serves.
        max_inline: the largest read tried inline, in bytes.

    Attributes:
        inline: reads completed inline.
        delegated: reads small enough to try inline that went to ``backend`` instead.

    Raises:
        HostError: the image cannot be opened again.
    """

    def __init__(self, backend: BlockBackend, path: str | os.PathLike[str], *, max_inline: int = MAX_INLINE) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise HostError(f"cannot open disk image {os.fspath(path)!r}: {exc.strerror}") from exc
        self.backend = backend
        self.max_inline = max_inline
        self.inline = 0
        self.delegated = 0
        self._ready: list[BlockCompletion] = []
        self._notify: Callable[[], None] | None = None
        self._closed = False

    @staticmethod
    def available() -> bool:
        """Whether this platform has ``RWF_NOWAIT`` (Linux 4.14+); without it, do not wrap."""
        return bool(_RWF_NOWAIT)

    # -- BlockBackend properties ----------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The wrapped backend's."""
        return self.backend.capacity

    @property
    def readonly(self) -> bool:
        """The wrapped backend's."""
        return self.backend.readonly

    @property
    def logical_block_size(self) -> int:
        """The wrapped backend's."""
        return self.backend.logical_block_size

    @property
    def supports_discard(self) -> bool:
        """The wrapped backend's."""
        return self.backend.supports_discard

    # -- BlockBackend methods -------------------------------------------------------------

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        """Complete a cached READ now, or pass the request on (rule 1)."""
        if request.op is BlockOp.READ and not self._closed and self._read_now(request, memory):
            self.inline += 1
            self._ready.append(BlockCompletion(request.tag, BlockStatus.OK, request.length))
            if len(self._ready) == 1 and self._notify is not None:
                self._notify()
            return
        if request.op is BlockOp.READ and request.length <= self.max_inline:
            self.delegated += 1
        self.backend.submit(request, memory)

    def _read_now(self, request: BlockRequest, memory: GuestMemory) -> bool:
        offset, length, block = request.offset, request.length, self.backend.logical_block_size
        try:
            if length > self.max_inline or offset < 0 or length <= 0 or offset % block or length % block:
                return False
            if offset + length > self.capacity:
                return False
            if sum(count for _, count in request.segments) != length:
                return False
            views = memory.views(request.segments, Access.WRITE)
        except (GuestMemoryError, TypeError, ValueError):
            return False
        try:
            done = os.preadv(self._fd, views, offset, _RWF_NOWAIT)
        except (OSError, ValueError):
            return False  # EAGAIN (not cached), or anything the wrapped backend will report
        finally:
            for view in views:
                view.release()
        return done == length

    def completions(self) -> list[BlockCompletion]:
        """Inline completions, then the wrapped backend's; each returned once."""
        ready, self._ready = self._ready, []
        ready.extend(self.backend.completions())
        return ready

    def drain(self) -> None:
        """Wait for the wrapped backend (inline reads are already done)."""
        self.backend.drain()

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """The hook for both inline and wrapped completions."""
        self._notify = notify
        self.backend.set_notify(notify)

    def close(self) -> None:
        """Close the wrapped backend and the second descriptor. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.backend.close()
        os.close(self._fd)

    def __repr__(self) -> str:
        return f"NowaitReads({self.backend!r}, inline={self.inline}, delegated={self.delegated})"
