"""Lost wakeups (``Virtqueue`` rule 5) and giving buffers back (``Virtqueue.rewind``).

- Available side (§2.7.10, §2.8.14): a driver that adds a buffer while the device is
  between its read of the ring and its publication of ``avail_event`` compares against the
  old event and does not notify. The pop must find that buffer itself. The interleaving is
  scripted: the device's first look at an indirect table goes through the memory's
  ``translate`` hook, which lets the driver add a buffer at exactly that point (both ring
  builds), or a line trace on the reference build stops the device on the very line that
  publishes its event (the window the packed pop leaves, between its last look at a
  descriptor and that store, has no memory access to hook).
- Used side: a driver whose store of ``used_event`` (or of the flags that re-enable
  interrupts) passes its load of the used index (a guest that drops its barriers) sees
  nothing new and sleeps, while the device read the old suppression value and did not
  notify. ``notification_owed`` finds the notification still owed once the store lands.
- ``rewind``: the last chains popped go back to the ring and are popped again, split and
  packed (across the wrap), with IN_ORDER; misuse is a ``UsageError``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from devmodels import GuestMemory, MemoryRegion, UsageError
from devmodels._memory import Access
from virtio.queue import RingPy, Virtqueue
from virtio.testing import make_driver

DATA_BASE = 0x40000


class Interleaver:
    """A ``translate`` hook (identity) that runs ``action`` once, the first time the device
    reads guest memory in the driver's data arena after ``arm`` (an indirect table)."""

    def __init__(self) -> None:
        self.action: Callable[[], None] | None = None
        self.fired = False

    def arm(self, action: Callable[[], None]) -> None:
        self.action, self.fired = action, False

    def __call__(self, gpa: int, length: int, access: Access) -> int:
        action = self.action
        if action is not None and access is Access.READ and gpa >= DATA_BASE:
            self.action = None
            self.fired = True
            action()
        return gpa


def rig(ring: Any, packed: bool, event_idx: bool, size: int = 8) -> tuple[Any, Any, GuestMemory, Interleaver]:
    hook = Interleaver()
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)], translate=hook)
    driver = make_driver(memory, size, packed=packed, event_idx=event_idx, data_base=DATA_BASE)
    queue = Virtqueue(size, packed=packed, ring=ring)
    driver.configure(queue)
    return queue, driver, memory, hook


def payload(chain: Any, memory: GuestMemory) -> bytes:
    return b"".join(memory.read(gpa, length) for gpa, length in chain.readable)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("event_idx", [False, True], ids=["plain", "event_idx"])
def test_a_buffer_added_between_the_pop_and_the_event_update_is_not_lost(ring, packed, event_idx):
    queue, driver, memory, hook = rig(ring, packed, event_idx)
    popped: list[bytes] = []

    def device_notified() -> None:
        """What a device does on a notification: pop what is there, return it."""
        chains = queue.pop_batch(memory, 8)
        popped.extend(payload(c, memory) for c in chains)
        queue.push_batch(memory, [(c, 0) for c in chains])
        driver.reap()

    # A first round puts the device's event suppression in its steady state.
    driver.add([b"warm-up"], [8])
    if driver.kick():
        device_notified()

    def driver_adds_meanwhile() -> None:
        driver.add([b"second"], [8])
        if driver.kick():
            notifications.append("second")

    notifications: list[str] = []
    driver.add([b"first"], [8], indirect=True)  # the device reads its table mid-pop
    assert driver.kick()
    hook.arm(driver_adds_meanwhile)
    device_notified()
    assert hook.fired
    if notifications:
        device_notified()
    driver.add([b"third"], [8])
    if driver.kick():
        device_notified()
    assert popped == [b"warm-up", b"first", b"second", b"third"]


@contextmanager
def just_before(method: Any, text: str, action: Callable[[], None]) -> Iterator[list[int]]:
    """Run ``action`` once, just before the first execution of the source line of
    ``method`` (a pure-Python ring method) that contains ``text``."""
    code = method.__code__
    lines, first = inspect.getsourcelines(code)
    (lineno,) = [first + i for i, line in enumerate(lines) if text in line][:1]
    fired: list[int] = []

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == lineno and not fired:
            fired.append(lineno)
            action()
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(previous)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_buffer_added_just_before_the_event_store_is_popped(packed):
    queue, driver, memory, _ = rig(RingPy, packed, True)
    driver.add([b"warm-up"], [8])
    driver.kick()
    queue.push_batch(memory, [(c, 0) for c in queue.pop_batch(memory, 8)])
    driver.reap()
    driver.add([b"first"], [8])
    assert driver.kick()
    kicks: list[bool] = []
    method = RingPy._pop_packed if packed else RingPy._pop_split
    store = "_st16(event, 0," if packed else "_st16(used, 4 + 8 * size"
    with just_before(method, store, lambda: (driver.add([b"second"], [8]), kicks.append(driver.kick()))) as fired:
        chains = queue.pop_batch(memory, 8)
    assert fired and kicks == [False]  # the driver compared against the old event
    assert [payload(c, memory) for c in chains] == [b"first", b"second"]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_pop_returns_short_only_with_the_event_published_on_an_empty_ring(ring, packed):
    queue, driver, memory, hook = rig(ring, packed, True)
    driver.add([b"a"], [8], indirect=True)
    driver.kick()
    hook.arm(lambda: (driver.add([b"b"], [8]), driver.kick()))
    chains = queue.pop_batch(memory, 8)
    assert len(chains) == 2  # the pop looked again after publishing its event
    assert not queue.has_available(memory)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_late_used_event_store_leaves_a_notification_owed(ring, packed):
    queue, driver, memory, _ = rig(ring, packed, True)
    driver.add([b"x"], [8])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 8)
    # What the device reads: a suppression value from before (one past the next used
    # entry). The driver's new one ("the next used entry") is still in its store buffer,
    # and its load of the used index already saw nothing new.
    if packed:
        driver.set_interrupts(True, at=(driver.next_used + 2, driver.used_wrap))  # past its 2 descriptors
    else:
        driver.set_interrupts(True, used_event=(driver.last_used + 1) & 0xFFFF)
    assert not queue.push_batch(memory, [(chain, 4)])  # read the stale suppression: no call
    assert not queue.notification_owed(memory)  # nothing changed yet: still nothing owed
    driver.set_interrupts(True)  # the late store lands: "notify me of the next used buffer"
    assert queue.notification_owed(memory)
    assert not queue.notification_owed(memory)  # counted as sent
    assert [u.written for u in driver.reap()] == [4]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_interrupts_re_enabled_late_without_event_idx_leave_a_notification_owed(ring, packed):
    queue, driver, memory, _ = rig(ring, packed, False)
    driver.add([b"x"], [8])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 8)
    driver.set_interrupts(False)
    assert not queue.push_batch(memory, [(chain, 0)])
    assert not queue.notification_owed(memory)
    driver.set_interrupts(True)
    assert queue.notification_owed(memory)
    assert not queue.notification_owed(memory)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_no_notification_is_owed_when_the_driver_does_not_ask(ring, packed):
    queue, driver, memory, _ = rig(ring, packed, True)
    driver.add([b"x"], [8])
    driver.add([b"y"], [8])
    driver.kick()
    first, second = queue.pop_batch(memory, 8)
    assert queue.push_batch(memory, [(first, 0)])  # the driver asked for the next one
    if packed:
        driver.set_interrupts(False)
    else:
        driver.set_interrupts(True, used_event=(driver.last_used + 5) & 0xFFFF)
    assert not queue.push_batch(memory, [(second, 0)])
    assert not queue.notification_owed(memory)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_has_available_sees_buffers_made_available_without_a_notification(ring, packed):
    queue, driver, memory, _ = rig(ring, packed, True)
    assert not queue.has_available(memory)
    driver.add([b"x"], [8])
    driver.kick()  # whatever it answers, the driver's stale view may have said "no"
    assert queue.has_available(memory)
    assert len(queue.pop_batch(memory, 8)) == 1
    assert not queue.has_available(memory)


# -- rewind ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("in_order", [False, True], ids=["any-order", "in-order"])
def test_rewound_chains_are_popped_again_and_nothing_is_lost(make, memory, packed, in_order):
    queue, driver = make(8, packed=packed, in_order=in_order)
    for round_ in range(3):  # crosses the packed ring's wrap
        for k in range(3):
            driver.add([bytes([round_, k])], [8])
        driver.kick()
        chains = queue.pop_batch(memory, 8)
        assert len(chains) == 3
        queue.push_batch(memory, [(chains[0], 1)])
        assert queue.rewind(chains[1:])
        assert queue.in_flight == 0
        again = queue.pop_batch(memory, 8)
        assert [c.to_tuple() for c in again] == [c.to_tuple() for c in chains[1:]]
        queue.push_batch(memory, [(c, 2) for c in again])
        assert [(u.readable, u.written) for u in driver.reap()] == [
            (chains[0].readable, 1), (chains[1].readable, 2), (chains[2].readable, 2)]


def test_rewind_refuses_chains_that_are_not_the_last_popped(make, memory):
    for packed in (False, True):
        queue, driver = make(8, packed=packed)
        for k in range(3):
            driver.add([bytes([k])], [8])
        driver.kick()
        chains = queue.pop_batch(memory, 8)
        with pytest.raises(UsageError):
            queue.rewind(chains[:2])  # not the last ones
        with pytest.raises(UsageError):
            queue.rewind([chains[2], chains[1]])  # not in pop order
        with pytest.raises(UsageError):
            queue.rewind([1])  # not a chain
        assert queue.in_flight == 3  # nothing changed
        queue.reset()
        driver.configure(queue)
        with pytest.raises(UsageError):
            queue.rewind(chains[2:])  # from before the reset
        assert queue.rewind([])


def test_rewind_on_a_broken_queue_does_nothing(make, memory):
    queue, driver = make(8)
    driver.add([b"a"], [8])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 8)
    driver.raw_publish([0], idx=40)  # §2.7.6.1: more than the queue size ahead
    queue.pop_batch(memory, 8)
    assert queue.broken
    assert queue.rewind([chain]) is False
