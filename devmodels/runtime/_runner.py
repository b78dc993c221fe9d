"""``DeviceRunner``: one ``ServedDevice`` served on one ``EventLoop``.

Every server (mpqemu, vfio-user, vhost-user) and the in-process loops use this one runner,
so a device behaves the same whichever way it is attached.

Rules:

1. ``attach`` binds the device's waker, watches an eventfd for it, and starts watching the
   device's descriptors and deadline. ``close`` undoes all of it; the device and its
   backends stay the caller's.
2. A server calls ``before_access()`` before it hands the device a guest access (the
   device's clock catches up first, so a register write arms its timers from the right
   time) and ``after_access()`` once the access is answered (posted work runs then, while
   the guest runs on: ``ServedDevice`` rule 4).
3. The waker is called from any thread. On the loop's own thread (a backend that finished
   inside ``submit``) it only marks work, which runs before the current callback returns;
   from another thread it writes the eventfd. Marked work runs at most ``_MARKED_ROUNDS``
   times in a row; if more keeps coming, the eventfd carries it to the loop's next turn, so
   one busy device never starves the rest of the loop.
4. After every callback the runner asks the device again what to watch and when its next
   deadline is (``ServedDevice`` rule 3) and updates the loop to match.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ._loop import EventLoop, Timer
from ._served import ServedDevice

__all__ = ["DeviceRunner"]

_MARKED_ROUNDS = 4  # rule 3


class DeviceRunner:
    """Serves ``device`` on ``loop`` (rules 1–4).

    Args:
        device: any ``ServedDevice``.
        loop: the loop to serve it on; every call into the device happens on its thread.
    """

    def __init__(self, device: ServedDevice, loop: EventLoop) -> None:
        self.device = device
        self.loop = loop
        self._wake_fd = -1
        self._loop_thread: int | None = None
        self._marked = False
        self._watched: dict[int, Callable[[], None]] = {}
        self._timer: Timer | None = None
        self._deadline: int | None = None

    # -- rule 1 -----------------------------------------------------------------------------

    def attach(self) -> None:
        """Start serving (rule 1); call on the loop's thread."""
        if self._wake_fd >= 0:
            return
        self._loop_thread = threading.get_ident()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.loop.add_reader(self._wake_fd, self._on_wake)
        self.device.bind_waker(self._wake)
        self.update()

    def close(self) -> None:
        """Stop serving (rule 1): unbind the waker, stop watching, cancel the timer."""
        if self._wake_fd < 0:
            return
        self.device.bind_waker(None)
        for fd in self._watched:
            self.loop.remove_reader(fd)
        self._watched.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None
        self.loop.remove_reader(self._wake_fd)
        os.close(self._wake_fd)
        self._wake_fd = -1

    # -- rule 2 -----------------------------------------------------------------------------

    def before_access(self) -> None:
        """The device's clock catches up before a guest access (rule 2)."""
        self.device.tick(self.loop.now_ns())

    def after_access(self) -> None:
        """Posted work and marked completions run once the access is answered (rule 2)."""
        if self._marked or self.device.posted:
            self._service()
        self.update()

    # -- rule 3 -----------------------------------------------------------------------------

    def _wake(self) -> None:  # any thread: never calls into the device
        if threading.get_ident() == self._loop_thread:
            self._marked = True
        elif self._wake_fd >= 0:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass  # saturated (a wake-up is pending anyway) or closing

    def _service(self) -> None:
        for _ in range(_MARKED_ROUNDS):
            self._marked = False
            self.device.run_posted()
            if not self._marked:
                return
        os.eventfd_write(self._wake_fd, 1)  # more keeps coming: continue on the next turn

    def _on_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        self._service()
        self.update()

    # -- rule 4 -----------------------------------------------------------------------------

    def update(self) -> None:
        """Watch what the device wants watched now and arm its next deadline (rule 4)."""
        wanted = dict(self.device.watched_fds())
        for fd in [fd for fd in self._watched if fd not in wanted]:
            self.loop.remove_reader(fd)
            del self._watched[fd]
        for fd, callback in wanted.items():
            if self._watched.get(fd) != callback:  # bound methods compare by function and self
                self.loop.add_reader(fd, self._reader(callback))
                self._watched[fd] = callback
        deadline = self.device.next_deadline()
        if deadline != self._deadline:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._deadline = deadline
            if deadline is not None:
                self._timer = self.loop.call_at(deadline, self._on_timer)

    def _reader(self, callback: Callable[[], None]) -> Callable[[], None]:
        def ready() -> None:
            self.device.tick(self.loop.now_ns())
            callback()
            if self._marked:
                self._service()
            self.update()

        return ready

    def _on_timer(self) -> None:
        self._timer = None
        self._deadline = None
        self.device.tick(self.loop.now_ns())
        if self._marked or self.device.posted:
            self._service()
        self.update()
