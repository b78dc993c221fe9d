"""A small ``selectors`` event loop: descriptor callbacks, timers and a thread-safe wake-up.

Rules:

1. One thread runs the loop; every callback runs on it. ``wakeup`` and ``stop`` are the
   only methods other threads may call.
2. Callbacks take no arguments. A reader is called when its descriptor is readable, a
   writer when writable; a descriptor may have both.
3. Timers use ``time.monotonic_ns``; a device that needs periodic work gets ``now_ns`` from
   the timer callback (``loop.now_ns()``), never from its own clock (CONVENTIONS: injection).
4. An exception from a callback propagates out of ``run``: it is a bug in the callback,
   not something to hide.
5. Optional busy polling (``poll_ns``, QEMU's ``poll-max-ns`` idea): before ``run``
   blocks, it checks the descriptors without blocking for up to ``poll_ns``, so a peer
   that sends again within that window (a vCPU's next register access) is served without
   a sleep and a wake-up. Timers due meanwhile still run on time; the cost is CPU.
"""

from __future__ import annotations

import heapq
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._errors import UsageError

__all__ = ["EventLoop", "Timer", "Callback"]

Callback = Callable[[], None]


@dataclass(order=True)
class Timer:
    """A pending ``call_at``; ``cancel()`` it to drop it."""

    deadline_ns: int
    seq: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Do not run the callback."""
        self.cancelled = True


class EventLoop:
    """Readers, writers and timers on one ``selectors.DefaultSelector`` (rules 1–5).

    Args:
        poll_ns: busy-poll window before blocking (rule 5); 0 never polls.

    Raises:
        UsageError: ``poll_ns`` is negative.
    """

    def __init__(self, poll_ns: int = 0) -> None:
        if poll_ns < 0:
            raise UsageError(f"poll_ns must not be negative, got {poll_ns}")
        self.poll_ns = poll_ns
        self._selector = selectors.DefaultSelector()
        self._callbacks: dict[int, list[Callback | None]] = {}  # fd -> [reader, writer]
        self._timers: list[Timer] = []
        self._seq = 0
        self._stopping = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.add_reader(self._wake_fd, self._drain_wakeup)

    # -- descriptors ----------------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback`` whenever ``fd`` is readable (replaces a previous reader)."""
        self._set(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` for reading (no-op if not watched)."""
        self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callback) -> None:
        """Call ``callback`` whenever ``fd`` is writable (replaces a previous writer)."""
        self._set(fd, 1, callback)

    def remove_writer(self, fd: int) -> None:
        """Stop watching ``fd`` for writing (no-op if not watched)."""
        self._set(fd, 1, None)

    def _set(self, fd: int, slot: int, callback: Callback | None) -> None:
        if fd < 0:
            raise UsageError(f"cannot watch descriptor {fd}")
        pair = self._callbacks.get(fd, [None, None])
        pair[slot] = callback
        events = (selectors.EVENT_READ if pair[0] else 0) | (selectors.EVENT_WRITE if pair[1] else 0)
        if fd in self._callbacks:
            if events:
                self._selector.modify(fd, events)
            else:
                self._selector.unregister(fd)
                del self._callbacks[fd]
                return
        elif events:
            self._selector.register(fd, events)
        else:
            return
        self._callbacks[fd] = pair

    # -- timers ---------------------------------------------------------------------------

    @staticmethod
    def now_ns() -> int:
        """The loop's clock (``time.monotonic_ns``)."""
        return time.monotonic_ns()

    def call_at(self, deadline_ns: int, callback: Callback) -> Timer:
        """Run ``callback`` once the clock reaches ``deadline_ns``."""
        self._seq += 1
        timer = Timer(deadline_ns, self._seq, callback)
        heapq.heappush(self._timers, timer)
        return timer

    def call_later(self, delay_s: float, callback: Callback) -> Timer:
        """Run ``callback`` after ``delay_s`` seconds."""
        return self.call_at(self.now_ns() + int(delay_s * 1e9), callback)

    # -- running --------------------------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> None:
        """Wait for events (at most ``timeout`` s, or until the next timer) and dispatch them."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            due = max(0.0, (self._timers[0].deadline_ns - self.now_ns()) / 1e9)
            timeout = due if timeout is None else min(timeout, due)
        ready = self._selector.select(0) if self.poll_ns and timeout != 0 else None
        if not ready and self.poll_ns and timeout != 0:
            # Rule 5: spin for the window (never past the caller's timeout or a timer).
            window = self.poll_ns if timeout is None else min(self.poll_ns, int(timeout * 1e9))
            deadline = time.monotonic_ns() + window
            while not ready and time.monotonic_ns() < deadline:
                ready = self._selector.select(0)
            if timeout is not None:
                timeout = max(0.0, timeout - window / 1e9)
        if not ready:
            ready = self._selector.select(timeout)
        for key, events in ready:
            fd = key.fd
            pair = self._callbacks.get(fd)
            if pair is not None and events & selectors.EVENT_READ and pair[0] is not None:
                pair[0]()
            pair = self._callbacks.get(fd)  # the reader may have removed it
            if pair is not None and events & selectors.EVENT_WRITE and pair[1] is not None:
                pair[1]()
        now = self.now_ns()
        while self._timers and self._timers[0].deadline_ns <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def run(self, until: Callable[[], bool]) -> None:
        """Dispatch events until ``until()`` is true or ``stop`` is called."""
        try:
            while not self._stopping and not until():
                self.run_once()
        finally:
            self._stopping = False

    def stop(self) -> None:
        """Make the current (or else the next) ``run`` return soon; safe from any thread."""
        self._stopping = True
        self.wakeup()

    def wakeup(self) -> None:
        """Interrupt a blocked ``select``; safe from any thread."""
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass  # closed, or the counter is saturated: a wake-up is pending anyway

    def _drain_wakeup(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Release the selector and the wake-up descriptor (the watched fds stay open)."""
        self._selector.close()
        self._callbacks.clear()
        os.close(self._wake_fd)
        self._wake_fd = -1
