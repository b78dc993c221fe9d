"""Getting a vCPU out of ``KVM_RUN`` when the device loop has work: ``VmmLoop`` and ``Kicker``.

The vCPU runs on the loop's thread (``KvmMachine`` rule 2), so while the guest runs, or
halts waiting for an interrupt, nobody runs the loop. The kicker is a second thread that
waits on the loop's own descriptors and its next deadline and, when either is due,
interrupts the vCPU: ``immediate_exit`` plus a signal (Documentation/virt/kvm/api.rst,
"KVM_CAP_IMMEDIATE_EXIT": set the flag, then signal the thread; ``KVM_RUN`` returns EINTR
whether the signal lands inside it or before it). The vCPU thread then runs the loop once
and tells the kicker it did.

Rules:

1. ``VmmLoop`` is an ``EventLoop`` that also exposes what a waiter on another thread needs:
   ``fileno()`` (the epoll descriptor, readable while any watched descriptor is) and
   ``next_deadline_ns()``. Writers keep the epoll descriptor readable, so a loop that a
   kicker watches serves readers and timers only.
2. The kick signal (``KICK_SIGNAL``) has a handler that does nothing, installed once from
   the main thread: a signal with no handler would kill the process, an ignored one would
   not interrupt ``KVM_RUN``.
3. The kicker kicks at most once per loop service: after a kick it waits until the vCPU
   thread reports ``serviced()``, so a descriptor that stays readable until the loop runs
   costs one kick, not a storm.
4. ``deadline_ns`` is the earliest of the loop's next timer and the run's own deadline; the
   vCPU thread calls ``retarget`` when it moves earlier, which wakes the kicker to wait
   for the new one.
"""

from __future__ import annotations

import heapq
import os
import select
import signal
import threading
import time

from devmodels import UsageError
from devmodels.runtime import EventLoop

from ._vcpu import Vcpu

__all__ = ["VmmLoop", "Kicker", "KICK_SIGNAL", "install_kick_handler"]

KICK_SIGNAL = signal.SIGRTMIN + 3
"""A real-time signal nothing else in the library uses (rule 2)."""

_installed = False


def _ignore(signum: int, frame: object) -> None:
    """The kick's handler: the interruption of ``KVM_RUN`` is all that is wanted."""


def install_kick_handler() -> None:
    """Install the kick signal's handler (rule 2).

    Raises:
        UsageError: called first on a thread other than the main thread.
    """
    global _installed
    if _installed:
        return
    if threading.current_thread() is not threading.main_thread():
        raise UsageError("create the first KvmMachine on the main thread: the vCPU kick signal needs a handler, "
                         "and Python installs handlers only from the main thread")
    signal.signal(KICK_SIGNAL, _ignore)
    _installed = True


class VmmLoop(EventLoop):
    """An ``EventLoop`` another thread can wait on (rule 1)."""

    def fileno(self) -> int:
        """The selector's epoll descriptor: readable while a watched descriptor is ready."""
        return self._selector.fileno()

    def next_deadline_ns(self) -> int | None:
        """The deadline of the next live timer, or ``None``."""
        timers = self._timers  # EventLoop's heap (a subclass reads its base's state; tests pin it)
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
        return timers[0].deadline_ns if timers else None


class Kicker:
    """Interrupts ``vcpu`` (running on thread ``thread_id``) when ``loop`` has work (rules 3-4)."""

    def __init__(self, loop: VmmLoop, vcpu: Vcpu, thread_id: int) -> None:
        install_kick_handler()
        self.loop = loop
        self.vcpu = vcpu
        self.thread_id = thread_id
        self.deadline_ns: int | None = None
        self.kicks = 0
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._serviced = threading.Event()
        self._serviced.set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kvm-kicker", daemon=True)
        self._thread.start()

    # -- called on the vCPU thread -------------------------------------------------------------

    def serviced(self) -> None:
        """The vCPU thread ran the loop (rule 3)."""
        self._serviced.set()

    def retarget(self, deadline_ns: int | None) -> None:
        """Wait for ``deadline_ns`` from now on (rule 4)."""
        old = self.deadline_ns
        self.deadline_ns = deadline_ns
        if deadline_ns is not None and (old is None or deadline_ns < old):
            os.eventfd_write(self._wake_fd, 1)

    def close(self) -> None:
        """Stop the thread and release its descriptor."""
        self._stopping = True
        self._serviced.set()
        os.eventfd_write(self._wake_fd, 1)
        self._thread.join()
        os.close(self._wake_fd)

    # -- the kicker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.loop.fileno(), select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        while not self._stopping:
            deadline = self.deadline_ns
            timeout = None if deadline is None else max(0, (deadline - time.monotonic_ns() + 999_999) // 1_000_000)
            ready = poller.poll(timeout)
            if self._stopping:
                return
            woken = False
            for fd, _ in ready:
                if fd == self._wake_fd:
                    try:
                        os.eventfd_read(self._wake_fd)
                    except BlockingIOError:
                        pass
                    woken = True
            due = deadline is not None and time.monotonic_ns() >= deadline
            if len(ready) > int(woken) or due:
                self._kick()

    def _kick(self) -> None:
        self._serviced.clear()
        self.kicks += 1
        self.vcpu.request_exit()
        try:
            signal.pthread_kill(self.thread_id, KICK_SIGNAL)
        except ProcessLookupError:  # the vCPU thread ended
            return
        self._serviced.wait()
