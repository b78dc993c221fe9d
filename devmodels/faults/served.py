"""``FaultyServedDevice``: a ``ServedDevice`` with its fault engine (and control socket) on the
same loop.

Rules:

1. It is the device for the loop (``DeviceRunner``, vhost-user's ``ServedGlue``): every
   call goes to the device, and the engine runs beside it on the loop's thread. ``tick``
   and ``run_posted`` run the engine's due timers and window edges first;
   ``next_deadline`` is the earlier of the device's and the engine's.
2. The control socket's descriptors (``FaultControlServer``) are watched with the
   device's, so a control request runs between guest accesses.
3. While ``paused()`` is true (``pci.no-response``: ``PciFaults.paused``) the device gets
   no work: its descriptors are not watched and ``tick``/``run_posted`` do not reach it
   (its backends' completions wait). When the pause ends the waker is called, so the loop
   collects what waited.
4. A loop that does not use ``next_deadline`` (vhost-user's) gets ``timer_thread=True``:
   a thread sleeps until the engine's next deadline and calls the bound waker, so
   ``run_posted`` runs the engine on time. The thread never calls into the device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from ..runtime import ServedDevice, Waker
from .control import FaultControlServer
from .engine import FaultEngine

__all__ = ["FaultyServedDevice"]


class FaultyServedDevice:
    """``device`` with ``engine`` on its loop (rules 1–4).

    Args:
        device: the device the loop serves.
        engine: its fault engine.
        control: the control socket, if any (rule 2).
        paused: whether the device must get no work now (rule 3).
        timer_thread: wake the loop at the engine's deadlines from a thread (rule 4).
    """

    def __init__(self, device: ServedDevice, engine: FaultEngine, *, control: FaultControlServer | None = None,
                 paused: Callable[[], bool] = lambda: False, timer_thread: bool = False) -> None:
        self.device = device
        self.engine = engine
        self.control = control
        self._paused = paused
        self._was_paused = False
        self._wake: Waker | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._closing = False
        engine.on_change(self._faults_changed)
        if timer_thread:
            engine.set_wake(self._poke)
            self._thread = threading.Thread(target=self._timers, name="devmodels-faults", daemon=True)
            self._thread.start()

    # -- ServedDevice ------------------------------------------------------------------------

    def bind_waker(self, wake: Waker | None) -> None:
        """The device's waker, also the engine's way to wake the loop (rules 3, 4)."""
        self._wake = wake
        self.device.bind_waker(wake)

    def watched_fds(self) -> Mapping[int, Callable[[], None]]:
        """The device's descriptors (unless paused) and the control socket's (rules 2, 3)."""
        fds: dict[int, Callable[[], None]] = {} if self._paused() else dict(self.device.watched_fds())
        if self.control is not None:
            fds.update(self.control.descriptors())
        return fds

    def next_deadline(self) -> int | None:
        """The earlier of the device's and the engine's (rule 1)."""
        ours = self.engine.next_deadline()
        theirs = None if self._paused() else self.device.next_deadline()
        if ours is None:
            return theirs
        return ours if theirs is None else min(ours, theirs)

    def tick(self, now_ns: int) -> None:
        """The engine first, then the device (rules 1, 3)."""
        self.engine.tick(now_ns)
        if not self._paused():
            self.device.tick(now_ns)

    @property
    def posted(self) -> bool:
        """The device's posted work (none while paused)."""
        return not self._paused() and self.device.posted

    def run_posted(self) -> bool:
        """The engine's due work, then the device's posted work (rules 1, 3, 4)."""
        self.engine.tick()
        if self._paused():
            return False
        return self.device.run_posted()

    def quiesce(self) -> None:
        """The device's."""
        self.device.quiesce()

    # -- rules 3, 4 ----------------------------------------------------------------------------

    def _faults_changed(self) -> None:
        paused = self._paused()
        if self._was_paused and not paused and self._wake is not None:
            self._wake()  # collect what waited while paused (rule 3)
        self._was_paused = paused

    def _poke(self) -> None:
        with self._cond:
            self._cond.notify()

    def _timers(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
                deadline = self.engine.next_deadline()
                now = self.engine.clock()
                if deadline is None or deadline > now:
                    self._cond.wait(None if deadline is None else (deadline - now) / 1e9)
                    continue
            wake = self._wake
            if wake is not None:
                wake()
            with self._cond:  # the loop runs the engine; wait a little before asking again
                self._cond.wait(0.001)

    def close(self) -> None:
        """Stop the timer thread and close the control socket."""
        if self._thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join(5)
            self._thread = None
        if self.control is not None:
            self.control.close()
