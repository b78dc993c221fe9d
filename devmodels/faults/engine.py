"""The fault engine: the faults in effect on one device, their windows, decisions and timers.

Rules:

1. One engine per served device, used on the loop's thread only (except
   ``next_deadline``, which a timer thread may ask). The parts that apply faults register
   with it: a *scope* (``add_scope``: a backend wrapper or the PCI interposer, by family
   and name, ``disk0``/``nic0``/``pci``) and, for state faults, an *actuator* per kind
   (``add_actuator``: the device hook that takes the link down, hangs the transmitter).
   Adding a fault that no scope or actuator of this device can apply is a ``UsageError``
   naming what the device supports, so a plan never silently does nothing.
2. Time is ``clock()`` (``time.monotonic_ns`` unless given). Windows (plan rule 3) are
   judged against it whenever an event is decided, so event faults need no timer; the
   engine still reports every window boundary in ``next_deadline`` and, when ``tick`` runs,
   starts and stops state faults through their actuators and tells the listeners
   (``on_change``) that something may have changed.
3. ``decide(active)`` is the one per-event decision (plan rule 3): inside the window, after
   ``skip`` events, at most ``count`` times, with probability ``rate`` drawn from the
   fault's own stream (plan rule 4). Every decision is counted (``seen``, ``fired``).
4. ``call_at`` runs a callback at a deadline from ``tick`` (the block wrapper's delayed
   completions); it is bounded by what the wrappers hold.
5. Removing a fault stops it (its actuator's ``stop``) and tells the listeners, which let
   go of what it held (a stuck request runs).
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from .._errors import UsageError
from .._trace import tracepoint
from .plan import EventFault, Fault, FaultPlan, StateFault, stream_seed

__all__ = ["ActiveFault", "Actuator", "FaultEngine"]

_tp_fault = tracepoint("faults.change")
_tp_fire = tracepoint("faults.fire")

_NS_PER_MS = 1_000_000
MAX_FAULTS = 256
"""Most faults in effect at once on one device (control API input is bounded)."""


class Actuator(Protocol):
    """What a device hook does when a state fault's window opens and closes (rule 1)."""

    def start(self, active: ActiveFault) -> None:
        """The fault takes effect."""
        ...

    def stop(self, active: ActiveFault) -> None:
        """The fault ends (window closed, removed, or ended by the device: ``end``)."""
        ...


@dataclass(eq=False)
class ActiveFault:
    """A fault added to an engine, with what happened to it so far."""

    fault: Fault
    id: str
    rng: random.Random
    armed_ns: int | None  # None: waiting for ``arm``
    seen: int = 0
    fired: int = 0
    starts: int = 0  # times a state fault took effect
    on: bool = False  # a state fault's effect is applied now
    ended: bool = False  # ended by the device (tx-hang until reset), or its count ran out

    def start_ns(self) -> int | None:
        """When the window opens, or None while not armed."""
        if self.armed_ns is None:
            return None
        return self.armed_ns + self.fault.after_ms * _NS_PER_MS

    def end_ns(self) -> int | None:
        """When the window closes, or None (open-ended or not armed)."""
        start = self.start_ns()
        if start is None or self.fault.for_ms is None:
            return None
        return start + self.fault.for_ms * _NS_PER_MS

    def in_window(self, now: int) -> bool:
        """Whether the window is open at ``now`` (plan rule 3)."""
        if self.ended:
            return False
        start = self.start_ns()
        if start is None or now < start:
            return False
        end = self.end_ns()
        return end is None or now < end

    def describe(self) -> dict[str, object]:
        """The fault's data and its counters, for the control API's ``list``."""
        return {"fault": self.fault.to_dict(), "id": self.id, "armed": self.armed_ns is not None, "on": self.on,
                "ended": self.ended, "seen": self.seen, "fired": self.fired, "starts": self.starts}


@dataclass(order=True)
class _Timer:
    deadline: int
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class FaultEngine:
    """The faults in effect on one device (rules 1–5).

    Args:
        seed: the plan seed every fault's stream derives from (plan rule 4).
        clock: nanoseconds, monotonic.
    """

    def __init__(self, seed: int = 0, *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.seed = seed
        self.clock = clock
        self._faults: dict[str, ActiveFault] = {}
        self._scopes: dict[str, set[str]] = {}  # family -> part names
        self._actuators: dict[str, list[Actuator]] = {}  # kind -> hooks
        self._listeners: list[Callable[[], None]] = []
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._names = itertools.count(1)
        self._lock = threading.Lock()  # the timer heap, for a timer thread's next_deadline
        self._wake: Callable[[], None] | None = None
        self._boundary: int | None = None  # the next window edge ``tick`` must act on

    # -- registration (rule 1) -------------------------------------------------------------

    def add_scope(self, family: str, name: str) -> None:
        """A part that applies ``family`` faults (``disk``, ``net``, ``pci``) under ``name``."""
        self._scopes.setdefault(family, set()).add(name)

    def add_actuator(self, kind: str, actuator: Actuator) -> None:
        """A device hook for state faults of ``kind``."""
        self._actuators.setdefault(kind, []).append(actuator)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after faults were added, removed, armed, or windows moved (rule 2)."""
        self._listeners.append(listener)

    def set_wake(self, wake: Callable[[], None] | None) -> None:
        """Called (from any thread) when the earliest deadline moved earlier: a timer
        thread waiting for ``next_deadline`` looks again."""
        self._wake = wake

    def supported(self) -> list[str]:
        """The kinds this device can apply (for errors and ``list``)."""
        from .plan import KINDS

        return [kind for kind, cls in KINDS.items() if self._can_apply(cls.kind, cls.family, "")]

    def _can_apply(self, kind: str, family: str, target: str) -> bool:
        if kind in self._actuators:
            return True
        from .plan import KINDS

        if issubclass(KINDS[kind], StateFault):
            return False
        names = self._scopes.get(family, set())
        return bool(names) and (not target or target in names)

    # -- faults ----------------------------------------------------------------------------

    def load(self, plan: FaultPlan) -> list[str]:
        """Add every fault of ``plan`` (its seed becomes the engine's); return their ids.

        Raises:
            UsageError: a fault this device cannot apply (nothing of the plan was added).
        """
        for fault in plan.faults:
            self._check(fault)
        self.seed = plan.seed
        return [self.add(fault) for fault in plan.faults]

    def _check(self, fault: Fault) -> None:
        if not isinstance(fault, Fault):
            raise UsageError(f"not a fault: {fault!r}")
        if not self._can_apply(fault.kind, fault.family, fault.target):
            parts = ", ".join(sorted(self._scopes.get(fault.family, set()))) or "none"
            raise UsageError(f"this device cannot apply {fault.kind}"
                             + (f" to {fault.target!r} (its {fault.family} parts: {parts})" if fault.target else "")
                             + f"; it supports: {', '.join(self.supported()) or 'no faults'}")
        if fault.id and fault.id in self._faults:
            raise UsageError(f"a fault named {fault.id!r} is already in effect")
        if len(self._faults) >= MAX_FAULTS:
            raise UsageError(f"at most {MAX_FAULTS} faults at once")

    def add(self, fault: Fault) -> str:
        """Add ``fault`` (armed now unless ``armed`` is false); return its id.

        Raises:
            UsageError: the device cannot apply it, its id is taken, or too many faults.
        """
        self._check(fault)
        fault_id = fault.id or self._new_id(fault.kind)
        now = self.clock()
        active = ActiveFault(fault, fault_id, random.Random(stream_seed(self.seed, fault_id)),
                             now if fault.armed else None)
        self._faults[fault_id] = active
        if _tp_fault.on:
            _tp_fault.emit(op="add", id=fault_id, fault=fault.to_dict())
        self._changed(now)
        return fault_id

    def _new_id(self, kind: str) -> str:
        while True:
            name = f"{kind}#{next(self._names)}"
            if name not in self._faults:
                return name

    def remove(self, fault_id: str) -> Fault:
        """Remove a fault (rule 5); return it.

        Raises:
            UsageError: no fault has that id.
        """
        active = self._get(fault_id)
        del self._faults[fault_id]
        if active.on:
            active.on = False
            self._stop(active)
        active.ended = True
        if _tp_fault.on:
            _tp_fault.emit(op="remove", id=fault_id)
        self._changed(self.clock())
        return active.fault

    def clear(self) -> None:
        """Remove every fault."""
        for fault_id in list(self._faults):
            self.remove(fault_id)

    def arm(self, fault_id: str) -> None:
        """Start the window of a fault added with ``armed`` false (or restart it).

        Raises:
            UsageError: no fault has that id.
        """
        active = self._get(fault_id)
        active.armed_ns = self.clock()
        active.ended = False
        if _tp_fault.on:
            _tp_fault.emit(op="arm", id=fault_id)
        self._changed(active.armed_ns)

    def end(self, fault_id: str) -> None:
        """The device ended a state fault itself (a reset restarted the hung transmitter):
        its window closes now; the fault stays listed as ended."""
        active = self._faults.get(fault_id)
        if active is None or active.ended:
            return
        active.ended = True
        if active.on:
            active.on = False
            self._stop(active)
        if _tp_fault.on:
            _tp_fault.emit(op="end", id=fault_id)
        self._changed(self.clock())

    def _get(self, fault_id: str) -> ActiveFault:
        active = self._faults.get(fault_id)
        if active is None:
            raise UsageError(f"no fault named {fault_id!r} (in effect: {', '.join(self._faults) or 'none'})")
        return active

    def get(self, fault_id: str) -> ActiveFault | None:
        """The fault named ``fault_id``, if in effect."""
        return self._faults.get(fault_id)

    def listing(self) -> list[dict[str, object]]:
        """Every fault in effect with its counters."""
        return [active.describe() for active in self._faults.values()]

    def __iter__(self) -> Iterator[ActiveFault]:
        return iter(list(self._faults.values()))

    def __len__(self) -> int:
        return len(self._faults)

    # -- per-event decisions (rule 3) --------------------------------------------------------

    def matching(self, family: str, part: str) -> list[ActiveFault]:
        """Event faults of ``family`` that apply to ``part`` (empty fast when there are none)."""
        if not self._faults:
            return []
        return [a for a in self._faults.values()
                if a.fault.family == family and isinstance(a.fault, EventFault)
                and (not a.fault.target or a.fault.target == part)]

    def in_effect(self, kind: str, part: str, now: int | None = None) -> ActiveFault | None:
        """A fault of ``kind`` for ``part`` whose window is open, if any."""
        if not self._faults:
            return None
        now = self.clock() if now is None else now
        for active in self._faults.values():
            f = active.fault
            if f.kind == kind and (not f.target or f.target == part) and active.in_window(now):
                return active
        return None

    def decide(self, active: ActiveFault, now: int | None = None) -> bool:
        """Whether ``active`` acts on this event (rule 3)."""
        fault = active.fault
        assert isinstance(fault, EventFault)  # callers take faults from ``matching``
        if not active.in_window(self.clock() if now is None else now):
            return False
        active.seen += 1
        if active.seen <= fault.skip:
            return False
        if fault.count is not None and active.fired >= fault.count:
            return False
        if fault.rate < 1.0 and active.rng.random() >= fault.rate:
            return False
        active.fired += 1
        if _tp_fire.on:
            _tp_fire.emit(id=active.id, kind=fault.kind, fired=active.fired)
        return True

    # -- time (rules 2, 4) -----------------------------------------------------------------

    def call_at(self, deadline_ns: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` from the first ``tick`` at or after ``deadline_ns``."""
        with self._lock:
            earliest = self._timers[0].deadline if self._timers else None
            heapq.heappush(self._timers, _Timer(deadline_ns, next(self._seq), callback))
        if (earliest is None or deadline_ns < earliest) and self._wake is not None:
            self._wake()

    def next_deadline(self) -> int | None:
        """The earliest timer or window boundary still ahead (any thread)."""
        with self._lock:
            deadline = self._timers[0].deadline if self._timers else None
        boundary = self._boundary
        if boundary is not None and (deadline is None or boundary < deadline):
            deadline = boundary
        return deadline

    def tick(self, now: int | None = None) -> None:
        """Run due timers, start and stop state faults, tell the listeners (rule 2). Cheap
        when nothing is due: the loop calls it before every guest access."""
        now = self.clock() if now is None else now
        while self._timers:
            with self._lock:
                if not self._timers or self._timers[0].deadline > now:
                    break
                timer = heapq.heappop(self._timers)
            timer.callback()
        if self._boundary is not None and now >= self._boundary:
            self._changed(now)

    def _changed(self, now: int) -> None:
        boundary = None
        for active in self._faults.values():
            for edge in (active.start_ns(), active.end_ns()):
                if edge is not None and edge > now and (boundary is None or edge < boundary):
                    boundary = edge
        self._boundary = boundary
        for active in list(self._faults.values()):
            if not isinstance(active.fault, StateFault):
                continue
            want = active.in_window(now)
            if want and not active.on:
                active.on = True
                self._start(active)
            elif active.on and not want:
                active.on = False
                self._stop(active)
        for listener in list(self._listeners):
            listener()
        if self._wake is not None:
            self._wake()

    def _start(self, active: ActiveFault) -> None:
        active.starts += 1
        if _tp_fault.on:
            _tp_fault.emit(op="start", id=active.id)
        for actuator in self._actuators.get(active.fault.kind, []):
            actuator.start(active)

    def _stop(self, active: ActiveFault) -> None:
        if _tp_fault.on:
            _tp_fault.emit(op="stop", id=active.id)
        for actuator in self._actuators.get(active.fault.kind, []):
            actuator.stop(active)
