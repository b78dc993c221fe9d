"""The virtqueue rig: the Cython ring and the pure-Python reference, side by side.

Shared by the ``virtio_split`` and ``virtio_packed`` targets. Each ring implementation
gets its own copy of guest RAM and its own ``Virtqueue``; every op is applied to both, and
the **differential oracle** requires that they agree byte for byte: the chains popped
(head, descriptor count, segments), the values returned, every queue state field (broken
reason included) and the whole of guest RAM (used ring, event suppression). Without the
compiled ring (``DEVMODELS_NO_EXTENSIONS=1``) the reference runs alone and the other
oracles still apply.

Ops:

- region 0 is a queue-programming window (what a transport does to a queue):
  ``0x00`` size, ``0x08`` descriptor area, ``0x10`` driver area, ``0x18`` device area
  (64-bit; narrower writes set those bytes), ``0x20`` flags (bit 0 ready, 1 EVENT_IDX,
  2 IN_ORDER, 3 INDIRECT_DESC), ``0x28`` notification (bit 0: enable, else disable;
  with bit 1 instead: ``notification_owed`` and ``has_available``, compared; with bit 2:
  ``rewind`` of the last ``(value >> 8) & 0xFF`` chains popped and not pushed, at most
  as many as there are), ``0x30`` any write resets the queue. Reads return the field;
- ``NOTIFY q``: ``pop_batch`` with a budget of ``q % 33``;
- ``BACKEND event, arg``: ``push_batch`` of ``1 + event % 8`` held chains: in pop order
  under IN_ORDER, else picked by the bytes of ``arg``; written lengths complete
  (``(event >> 3) % 4 == 0``), zero (1), partial (2), or the entry names the buffer by its
  id instead of the chain (3). Only pushes a correct device could make are generated, so a
  ``UsageError`` is a finding too;
- ``SNAPSHOT``: ``state()`` of both, through ``to_dict``/``from_dict``, restored; held
  chains are then pushed by id;
- ``RESET``: both queues reset.

Healthy after reset means: a ring laid out by ``virtio.testing`` delivers one chain and
takes its used entry back, identically in both implementations.
"""

from __future__ import annotations

from typing import Any

from devmodels import GuestMemory, Machine, MemoryRegion, from_dict, to_dict
from virtio.queue import Virtqueue, VirtqueueState
from virtio.queue.ring import RingC, RingPy
from virtio.testing import make_driver

from ._ops import OpKind
from ._record import Recorder
from ._rig import RAM_SIZE, Finding, Rig

__all__ = ["RingRig", "QueueWindow", "WINDOW_BASE", "MAX_SIZE", "SEEDS"]

WINDOW_BASE = 0xD000_0000
MAX_SIZE = 256
_SIZE, _DESC, _DRIVER, _DEVICE, _FLAGS, _NOTIFY, _RESET = range(0, 0x38, 8)
_AREAS = {_DESC: "desc_addr", _DRIVER: "driver_addr", _DEVICE: "device_addr"}
F_READY, F_EVENT_IDX, F_IN_ORDER, F_INDIRECT = 1, 2, 4, 8


class _Side:
    """One implementation: its RAM, its queue, the chains it holds."""

    def __init__(self, memory: GuestMemory, ring: Any, packed: bool) -> None:
        self.memory = memory
        self.queue = Virtqueue(MAX_SIZE, packed=packed, ring=ring, name=ring.__module__)
        self.held: list[Any] = []
        self.tail: list[Any] = []  # the last chains popped, in order, none pushed since (rewindable)


class QueueWindow:
    """Region 0 of the rig: the queue-programming registers (module docstring)."""

    def __init__(self, rig: RingRig) -> None:
        self._rig = rig

    def read(self, offset: int, size: int) -> int:
        field = offset & ~7
        queue = self._rig.sides[0].queue
        value = 0
        if field == _SIZE:
            value = queue.size
        elif field in _AREAS:
            value = getattr(queue, _AREAS[field])
        elif field == _FLAGS:
            value = _flags_of(queue)
        elif field == _NOTIFY:
            value = int(queue.notification_enabled)
        return (value >> (8 * (offset & 7))) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        field = offset & ~7
        shift = 8 * (offset & 7)
        mask = ((1 << (8 * size)) - 1) << shift
        rig = self._rig
        if field == _RESET:
            rig.reset()
            return
        if field == _NOTIFY and value & 4:
            rig.rewind((value >> 8) & 0xFF)
            return
        if field == _NOTIFY and value & 2:
            rig.both("recheck", lambda side: (side.queue.notification_owed(side.memory),
                                              side.queue.has_available(side.memory)))
            return
        if field == _NOTIFY:
            rig.both("notification", lambda side: _notification(side, bool(value & 1)))
            return
        for side in rig.sides:
            queue = side.queue
            if field == _SIZE:
                queue.size = ((queue.size & ~mask) | (value << shift)) & 0xFFFF
            elif field in _AREAS:
                old = getattr(queue, _AREAS[field])
                setattr(queue, _AREAS[field], ((old & ~mask) | (value << shift)) & ((1 << 64) - 1))
            elif field == _FLAGS:
                flags = ((_flags_of(queue) & ~mask) | (value << shift)) & 0xF
                queue.event_idx = bool(flags & F_EVENT_IDX)
                queue.in_order = bool(flags & F_IN_ORDER)
                queue.indirect = bool(flags & F_INDIRECT)
                queue.ready = bool(flags & F_READY)
        rig.compare("queue programming")


def _flags_of(queue: Virtqueue) -> int:
    return (
        (F_READY if queue.ready else 0)
        | (F_EVENT_IDX if queue.event_idx else 0)
        | (F_IN_ORDER if queue.in_order else 0)
        | (F_INDIRECT if queue.indirect else 0)
    )


def _notification(side: _Side, enable: bool) -> object:
    if enable:
        return side.queue.enable_notification(side.memory)
    side.queue.disable_notification(side.memory)
    return None


class RingRig(Rig):
    """Both ring implementations on identical RAM (module docstring).

    Args:
        packed: fuzz the packed layout (else split).
    """

    def __init__(self, packed: bool) -> None:
        super().__init__(Machine(ram_size=RAM_SIZE, ram_backing="bytearray"))
        self.packed = packed
        self.sides = [_Side(self.machine.memory, RingPy, packed)]
        if RingC is not None:
            mirror = GuestMemory([MemoryRegion.from_bytearray(0, RAM_SIZE)])
            self.sides.insert(0, _Side(mirror, RingC, packed))
        self.machine.mmio.register(WINDOW_BASE, 0x40, QueueWindow(self), "queue-window")
        self.regions.append((self.machine.mmio, WINDOW_BASE, 0x40))

    # -- the differential oracle ------------------------------------------------------------

    def both(self, what: str, action: Any) -> list[Any]:
        """Apply ``action(side)`` to every implementation, compare results and state."""
        results = [action(side) for side in self.sides]
        if any(r != results[0] for r in results[1:]):
            raise Finding("differential", f"{what}: cython returned {results[0]!r}, python {results[-1]!r}")
        self.compare(what)
        return results

    def compare(self, what: str) -> None:
        """Queue state and guest RAM must be identical in every implementation."""
        if len(self.sides) < 2:
            return
        first, other = self.sides
        a, b = first.queue.state(), other.queue.state()
        if a != b:
            diff = {k: (getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__ if getattr(a, k) != getattr(b, k)}
            raise Finding("differential", f"{what}: queue states differ (cython, python): {diff}")
        if type(first.queue.broken_reason) is not type(other.queue.broken_reason):
            raise Finding("differential", f"{what}: broken reasons differ: {first.queue.broken_reason!r} / {other.queue.broken_reason!r}")
        if first.memory.regions[0].buffer != other.memory.regions[0].buffer:
            ram_a, ram_b = first.memory.regions[0].buffer, other.memory.regions[0].buffer
            at = next(i for i in range(len(ram_a)) if ram_a[i] != ram_b[i])
            raise Finding("differential", f"{what}: guest RAM differs first at {at:#x}")

    # -- RAM (mirrored) ---------------------------------------------------------------------

    def ram_loaded(self) -> None:
        """Copy the RAM pattern into the mirror."""
        for side in self.sides[:-1]:
            side.memory.regions[0].buffer[:] = self.machine.memory.regions[0].buffer

    def ram_write(self, gpa: int, data: bytes) -> None:
        """A guest store, into every copy of RAM."""
        for side in self.sides:
            side.memory.write(gpa, data)

    def ram_fill(self, gpa: int, length: int, value: int) -> None:
        """A guest fill, into every copy of RAM."""
        for side in self.sides:
            side.memory.fill(gpa, length, value)

    # -- ops ----------------------------------------------------------------------------------

    def notify(self, queue: int) -> None:
        """``pop_batch`` with budget ``queue % 33`` in both."""
        budget = queue % 33

        def pop(side: _Side) -> list[Any]:
            chains = side.queue.pop_batch(side.memory, budget)
            side.held.extend(chains)
            side.tail.extend(chains)
            return [c.to_tuple() for c in chains]

        self.both("pop_batch", pop)

    def backend_event(self, event: int, arg: int) -> None:
        """``push_batch`` of held chains (module docstring)."""
        held = len(self.sides[0].held)
        if not held:
            return
        count = min(1 + event % 8, held)
        mode = (event >> 3) % 4
        queue = self.sides[0].queue
        if queue.in_order:
            picks = list(range(count))
        else:
            picks = []
            for k in range(count):
                left = [i for i in range(held) if i not in picks]
                picks.append(left[(arg >> (8 * (k % 4))) % len(left)])

        def push(side: _Side) -> bool:
            entries = []
            for i in picks:
                chain = side.held[i]
                if isinstance(chain, int):  # held across a restore: only its id is left
                    entries.append((chain, 0 if mode == 1 else arg & 0xFFFF))
                    continue
                writable = chain.writable_len
                if mode == 0:
                    written = writable
                elif mode == 1:
                    written = 0
                elif mode == 2:
                    written = (arg & 0xFFFF) % (writable + 1)
                else:
                    written = min(arg & 0xFFFF, writable)
                item = chain.head if mode == 3 and chain.head < side.queue.size else chain
                entries.append((item, written))
            notify = side.queue.push_batch(side.memory, entries)
            pushed = [side.held[i] for i in picks]
            for chain in pushed:
                if any(chain is c for c in side.tail):
                    side.tail = side.tail[next(k for k, c in enumerate(side.tail) if c is chain) + 1 :]
            for i in sorted(picks, reverse=True):
                del side.held[i]
            return notify

        self.both("push_batch", push)

    def snapshot_roundtrip(self) -> None:
        """state() -> plain dict -> state -> restore() in both; held chains become ids."""

        def roundtrip(side: _Side) -> VirtqueueState:
            before = side.queue.state()
            rebuilt = from_dict(VirtqueueState, to_dict(before))
            if rebuilt != before:
                raise Finding("snapshot", "queue state changed through to_dict/from_dict")
            side.queue.restore(rebuilt)
            if side.queue.state() != before:
                raise Finding("snapshot", "restore(state()) changed the queue state")
            side.held = [c if isinstance(c, int) else c.head for c in side.held]
            side.tail = []
            return before

        self.both("snapshot", roundtrip)

    def reset(self) -> None:
        """Reset both queues; held chains are gone."""
        for side in self.sides:
            side.queue.reset()
            side.held.clear()
            side.tail.clear()
        self.compare("reset")

    def rewind(self, count: int) -> None:
        """``rewind`` of the last ``count`` chains popped and not pushed, in both."""
        count = min(count, len(self.sides[0].tail))

        def give_back(side: _Side) -> bool:
            chains = side.tail[len(side.tail) - count :]
            done = side.queue.rewind(chains)
            if done:
                side.tail = side.tail[: len(side.tail) - count]
                side.held = [c for c in side.held if not any(c is g for g in chains)]
            return done

        self.both("rewind", give_back)

    def health_check(self) -> None:
        """One chain through a freshly laid-out ring, identically in both."""

        def once(side: _Side) -> tuple[Any, ...]:
            driver = make_driver(side.memory, 8, packed=self.packed, base=0x1000, data_base=0x4000, data_size=0x1000)
            driver.configure(side.queue)
            driver.add([b"ping"], [16])
            driver.kick()
            chains = side.queue.pop_batch(side.memory, 8)
            if len(chains) != 1 or side.queue.broken:
                raise Finding("reset", f"a fresh ring after reset popped {chains!r} (broken: {side.queue.broken_reason})")
            side.queue.push(side.memory, chains[0], 4)
            used = driver.reap()
            if [(u.id, u.written) for u in used] != [(chains[0].head, 4)]:
                raise Finding("reset", f"used entries after reset: {used!r}")
            return chains[0].to_tuple()

        self.both("health check", once)


# -- seeds (recorded through the window; fuzz._record) ---------------------------------------


class _WindowQueue:
    """What ``virtio.testing`` drivers call ``configure`` on, turned into window writes."""

    _rec: Recorder
    _flags: int

    def __init__(self, rec: Recorder, indirect: bool = True) -> None:
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_flags", F_INDIRECT if indirect else 0)

    def __setattr__(self, name: str, value: Any) -> None:
        bus = self._rec.machine.mmio
        if name == "size":
            bus.write(WINDOW_BASE + _SIZE, 2, value)
        elif name in ("desc_addr", "driver_addr", "device_addr"):
            field = {v: k for k, v in _AREAS.items()}[name]
            bus.write(WINDOW_BASE + field, 8, value)
        else:
            bit = {"ready": F_READY, "event_idx": F_EVENT_IDX, "in_order": F_IN_ORDER, "indirect": F_INDIRECT}[name]
            flags = (self._flags | bit) if value else (self._flags & ~bit)
            object.__setattr__(self, "_flags", flags)
            bus.write(WINDOW_BASE + _FLAGS, 1, flags)


def _driver(rec: Recorder, size: int = 8, **options: Any) -> Any:
    rig = rec.rig
    assert isinstance(rig, RingRig)
    driver = make_driver(rec.machine.memory, size, packed=rig.packed, base=0x2000, data_base=0x8000,
                         data_size=0x4000, **options)
    driver.configure(_WindowQueue(rec))
    return driver


def _seed_basic(rec: Recorder) -> None:
    driver = _driver(rec)
    driver.add([b"hello"], [32])
    driver.add([b"ab", b"cd"], [8, 8])
    driver.kick()
    rec.op(OpKind.NOTIFY, 8)
    rec.op(OpKind.BACKEND, 1, 0)  # two complete pushes
    driver.reap()


def _seed_indirect(rec: Recorder) -> None:
    driver = _driver(rec)
    driver.add([b"head", b"data"], [16, 16], indirect=True)
    driver.add([b"x"], [4])
    driver.kick()
    rec.op(OpKind.NOTIFY, 4)
    rec.op(OpKind.BACKEND, 1 | 2 << 3, 0x0103)  # partial lengths, second then first
    driver.reap()


def _seed_event_idx(rec: Recorder) -> None:
    driver = _driver(rec, event_idx=True)
    rec.machine.mmio.write(WINDOW_BASE + _NOTIFY, 1, 1)
    for round_ in range(3):
        driver.set_interrupts(True)
        driver.add([bytes([round_]) * 3], [8])
        driver.kick()
        rec.op(OpKind.NOTIFY, 1)
        rec.op(OpKind.BACKEND, 0, 0)
        driver.reap()


def _seed_in_order(rec: Recorder) -> None:
    driver = _driver(rec, in_order=True)
    for n in range(3):
        driver.add([bytes([n])], [4])
    driver.kick()
    rec.op(OpKind.NOTIFY, 3)
    rec.op(OpKind.BACKEND, 2, 0)  # a complete IN_ORDER batch of three
    driver.reap()


def _seed_wrap(rec: Recorder) -> None:
    driver = _driver(rec, size=4)
    for round_ in range(7):
        driver.add([bytes([round_])], [2])
        driver.kick()
        rec.op(OpKind.NOTIFY, 2)
        rec.op(OpKind.BACKEND, 0 | (round_ % 4) << 3, round_)
        driver.reap()


def _seed_snapshot(rec: Recorder) -> None:
    driver = _driver(rec)
    driver.add([b"one"], [8])
    driver.add([b"two"], [8])
    driver.kick()
    rec.op(OpKind.NOTIFY, 8)
    rec.op(OpKind.SNAPSHOT)
    rec.op(OpKind.BACKEND, 1, 0x0001)
    driver.reap()
    rec.machine.mmio.write(WINDOW_BASE + _NOTIFY, 1, 0)
    rec.op(OpKind.RESET)


def _seed_broken(rec: Recorder) -> None:
    rig = rec.rig
    assert isinstance(rig, RingRig)
    driver = _driver(rec)
    driver.add([b"ok"], [4])
    if rig.packed:
        driver.raw_desc(1, 0x9000, 16, 99, driver.avail_flags() | 1)  # NEXT into a descriptor not made available
    else:
        driver.raw_desc(1, 0x9000, 16, 1, 1)  # a one-descriptor loop
        driver.raw_publish([1])
    driver.kick()
    rec.op(OpKind.NOTIFY, 8)
    rec.op(OpKind.BACKEND, 0, 0)


SEEDS = {
    "basic": _seed_basic,
    "indirect": _seed_indirect,
    "event-idx": _seed_event_idx,
    "in-order": _seed_in_order,
    "wrap": _seed_wrap,
    "snapshot": _seed_snapshot,
    "broken": _seed_broken,
}
