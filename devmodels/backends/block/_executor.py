"""A small worker pool that runs block requests off the device's thread of control.

Rules:

1. Requests start in submission order (one FIFO) on ``workers`` threads, so several I/Os
   are in flight at once; they may complete in any order.
2. A FLUSH is a barrier for what came before it: its worker waits until every request
   submitted earlier has finished before running it, so "completed before the flush" is
   a subset of what the flush makes durable (interface rule 5). This cannot deadlock:
   a barrier only waits for earlier requests, and the FIFO hands every earlier request
   to a worker before it hands out the barrier.
3. At most ``queue_depth`` requests are in flight (queued or executing). ``submit`` waits
   for a slot when that many are, which bounds memory whatever the device submits.
4. Completions go to one ready list under the lock. The ``notify`` hook runs, outside the
   lock, on the thread that made the list non-empty (a worker, or the submitter for a
   request rejected at once); ``completions()`` empties the list. Each completion is
   handed out exactly once.
5. ``run`` never raises by contract; if it does anyway, the request completes with
   IO_ERROR and the worker carries on, so a bug cannot lose a completion or a worker.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from ..._errors import UsageError
from ..._memory import GuestMemory
from ..._trace import tracepoint
from .._block import BlockCompletion, BlockOp, BlockRequest, BlockStatus

__all__ = ["BlockExecutor"]

_log = logging.getLogger(__name__)
_tp_internal = tracepoint("block.internal_error")

Runner = Callable[[BlockRequest, GuestMemory], BlockCompletion]


class BlockExecutor:
    """Runs ``run(request, memory)`` on worker threads and collects the completions.

    Args:
        run: executes one validated request and returns its completion.
        workers: number of threads (at least 1).
        queue_depth: most requests in flight before ``submit`` waits (at least 1).
        name: thread name prefix.

    Raises:
        UsageError: ``workers`` or ``queue_depth`` is not a positive integer.
    """

    def __init__(self, run: Runner, *, workers: int, queue_depth: int, name: str = "devmodels-blk") -> None:
        for label, value in (("workers", workers), ("queue_depth", queue_depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{label} must be a positive integer, got {value!r}")
        self._run = run
        self._depth = queue_depth
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers wait for requests
        self._done = threading.Condition(self._lock)  # submitters, drainers and barriers wait
        self._queue: deque[tuple[int, BlockRequest, GuestMemory]] = deque()
        # Sequence numbers of requests in flight; dicts keep insertion order, so the first
        # key is the oldest one still running (rule 2 in O(1)).
        self._in_flight: dict[int, None] = {}
        self._next_seq = 0
        self._ready: list[BlockCompletion] = []
        self._notify: Callable[[], None] | None = None
        self._stopping = False
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet completed."""
        with self._lock:
            return len(self._in_flight)

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        """Queue a validated request, waiting while ``queue_depth`` are in flight (rule 3).

        Raises:
            UsageError: the executor is closed, or this is one of its own worker threads
                (which would wait for itself).
        """
        self._check_not_worker("submit")
        with self._lock:
            while len(self._in_flight) >= self._depth and not self._closed:
                self._done.wait()
            if self._closed:
                raise UsageError("block backend is closed")
            seq = self._next_seq
            self._next_seq += 1
            self._in_flight[seq] = None
            self._queue.append((seq, request, memory))
            self._work.notify()

    def complete_now(self, completion: BlockCompletion) -> None:
        """Hand out a completion that needed no I/O (a request rejected before it ran).

        Raises:
            UsageError: the executor is closed.
        """
        with self._lock:
            if self._closed:
                raise UsageError("block backend is closed")
            self._ready.append(completion)
            wake = len(self._ready) == 1
            notify = self._notify
        if wake and notify is not None:
            self._call_notify(notify)

    def completions(self) -> list[BlockCompletion]:
        """Every completion ready now, oldest first; each is returned once."""
        with self._lock:
            ready, self._ready = self._ready, []
        return ready

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Set the hook called when the ready list becomes non-empty (rule 4)."""
        with self._lock:
            self._notify = notify

    def drain(self) -> None:
        """Wait until every submitted request has completed.

        Raises:
            UsageError: called from a worker thread (from ``notify``), where it would wait
                for itself.
        """
        self._check_not_worker("drain")
        with self._lock:
            while self._in_flight:
                self._done.wait()

    def close(self) -> None:
        """Drain, stop the workers and refuse further requests. Idempotent."""
        self._check_not_worker("close")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._done.notify_all()  # submitters waiting for a slot now fail
            while self._in_flight:
                self._done.wait()
            self._stopping = True
            self._work.notify_all()
        for thread in self._threads:
            thread.join()

    # -- internals ------------------------------------------------------------------------

    def _check_not_worker(self, what: str) -> None:
        if threading.current_thread() in self._threads:
            raise UsageError(f"{what}() called from a block worker thread (from the notify hook?)")

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._work.wait()
                if not self._queue:
                    return
                seq, request, memory = self._queue.popleft()
                if request.op is BlockOp.FLUSH:
                    while next(iter(self._in_flight)) != seq:
                        self._done.wait()
            try:
                completion = self._run(request, memory)
            except Exception as exc:  # rule 5: a bug must not lose the completion
                _log.exception("block request %r failed inside the backend", request)
                if _tp_internal.on:
                    _tp_internal.emit(op=request.op.value, error=repr(exc))
                completion = BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, f"internal error: {exc!r}")
            with self._lock:
                del self._in_flight[seq]
                self._ready.append(completion)
                wake = len(self._ready) == 1
                notify = self._notify
                self._done.notify_all()
            if wake and notify is not None:
                self._call_notify(notify)

    @staticmethod
    def _call_notify(notify: Callable[[], None]) -> None:
        try:
            notify()
        except Exception:  # the VMM's hook failing must not kill a worker or a submit
            _log.exception("block backend notify hook raised")
