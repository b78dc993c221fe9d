"""The Virtqueue wrapper: host-side validation, push misuse, tracing, snapshots (mid-flight
round trips and strict restore), and the implementation selector."""

from __future__ import annotations

import dataclasses

import pytest

from devmodels import SnapshotError, UsageError, from_dict, to_dict
from devmodels import _accel
from devmodels._trace import RecordingSink
from virtio.queue import IMPLEMENTATION, Virtqueue, VirtqueueState, errors, ring as ring_module
from virtio.queue.ring import IMPLEMENTATIONS, RingC, RingPy


def test_constructor_and_setters_validate(ring):
    for bad in (0, 32769, 1.5, True):
        with pytest.raises(UsageError):
            Virtqueue(bad, ring=ring)
    with pytest.raises(UsageError):
        Virtqueue(8, ring=object)
    with pytest.raises(UsageError):
        Virtqueue(8, ring=ring, max_segments=0)
    queue = Virtqueue(8, ring=ring)
    for attr, bad in (("size", 0x10000), ("size", -1), ("desc_addr", 1 << 64), ("driver_addr", "x")):
        with pytest.raises(UsageError):
            setattr(queue, attr, bad)
    with pytest.raises(UsageError):
        queue.pop_batch(None, -1)  # type: ignore[arg-type]
    assert queue.max_size == queue.size == 8 and queue.max_segments == 1024
    assert queue.implementation == ("cython" if ring is RingC else "python")


def test_set_features(ring):
    queue = Virtqueue(8, ring=ring)
    queue.set_features(1 << 29 | 1 << 35)
    assert (queue.event_idx, queue.in_order, queue.indirect) == (True, True, False)
    queue.set_features(1 << 28)
    assert (queue.event_idx, queue.in_order, queue.indirect) == (False, False, True)
    queue.enabled = True
    assert queue.ready


def test_push_misuse_raises_before_writing(make, memory):
    queue, driver = make(8)
    for _ in range(2):
        driver.add([b"x"], [8])
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    used_idx = driver.layout.device_addr + 2
    bad_batches = [
        [(chains[0], 9)],  # more than the chain's writable bytes
        [(chains[0], -1)],
        [(chains[0], 0), "nonsense"],
        [(chains[0], 0), (8, 0)],  # id beyond the queue size
        [(chains[0], 0), (object(), 0)],
        [(0, 0), (1, 0), (2, 0)],  # more than in flight
    ]
    for batch in bad_batches:
        with pytest.raises(UsageError):
            queue.push_batch(memory, batch)
        assert memory.load_u16(used_idx) == 0 and queue.in_flight == 2
    queue.reset()
    driver.configure(queue)
    assert len(queue.pop_batch(memory, 8)) == 2  # the reset queue reads the ring afresh
    with pytest.raises(UsageError, match="reset"):
        queue.push_batch(memory, [(chains[0], 0)])  # popped before the reset


def test_push_by_head_id_and_generator(make, memory):
    queue, driver = make(8)
    heads = [driver.add([b"x"], [8]) for _ in range(2)]
    driver.kick()
    queue.pop_batch(memory, 8)
    assert queue.push_batch(memory, ((h, 1) for h in reversed(heads)))
    assert [u.id for u in driver.reap()] == list(reversed(heads))
    assert queue.push_batch(memory, []) is False


def test_packed_push_misuse(make, memory):
    queue, driver = make(8, packed=True)
    for _ in range(2):
        driver.add([b"x"], [8])
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    for batch in ([(chains[0], 0), (chains[0], 0)], [(5, 0)], [(chains[1], 0), (chains[1].head, 0)]):
        with pytest.raises(UsageError):
            queue.push_batch(memory, batch)
    assert queue.in_flight == 2
    assert queue.push_batch(memory, [(chains[1].head, 0), (chains[0], 0)])  # ids work too
    assert queue.in_flight == 0


def test_broken_trace_event(make, memory):
    queue, driver = make(8)
    queue.name = "q0"
    driver.raw_publish([9])
    with RecordingSink("virtio.queue.*") as rec:
        queue.pop_batch(memory, 8)
        queue.pop_batch(memory, 8)  # already broken: no second event
    assert rec.names() == ["virtio.queue.broken"]
    fields = rec.events[0][1]
    assert fields["queue"] == "q0" and fields["kind"] == "DescriptorIndexError" and fields["section"] == "2.7.5"


def test_broken_reason_holds_no_ram_windows(make, memory):
    queue, driver = make(8)
    driver.raw_publish([12])
    queue.pop_batch(memory, 8)
    reason = queue.broken_reason
    assert reason is not None and reason.__traceback__ is None and reason.__context__ is None


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("features", [{}, {"event_idx": True}, {"in_order": True}])
def test_snapshot_round_trip_mid_flight(ring, make, memory, packed, features):
    queue, driver = make(8, packed=packed, **features)
    for _ in range(3):  # a lap and a bit, with buffers in flight at the snapshot
        ids = [driver.add([b"x"], [8]) for _ in range(3)]
        driver.kick()
        chains = queue.pop_batch(memory, 8)
        queue.push_batch(memory, [(c, 8) for c in chains[:1]])
        driver.reap()
        state = queue.state()
        data = to_dict(state)
        assert from_dict(VirtqueueState, data) == state
        clone = Virtqueue(8, packed=packed, ring=ring)
        clone.restore(from_dict(VirtqueueState, data))
        assert clone.state() == state
        # The restored queue completes the in-flight buffers by id, then carries on.
        driver.set_interrupts(True)
        assert clone.push_batch(memory, [(c.head, 8) for c in chains[1:]]) is True
        assert sorted(u.id for u in driver.reap()) == sorted(ids[1:])
        queue = clone
    assert queue.in_flight == 0 and not queue.broken


def test_restore_is_strict_and_all_or_nothing(ring, make, memory):
    queue, driver = make(8, packed=True)
    for _ in range(2):
        driver.add([b"x"], [8, 8])
    driver.kick()
    queue.pop_batch(memory, 8)
    good = queue.state()
    assert good.inflight == ((0, 3), (1, 3))
    bad = [
        dict(version=2),
        dict(packed=False),
        dict(max_size=16),
        dict(size=9),
        dict(size=0),
        dict(desc_addr=-1),
        dict(ready=1),
        dict(next_avail=8),
        dict(inflight=((0, 3), (0, 3))),
        dict(inflight=((0, 3), (9, 3))),
        dict(inflight=((0, 3),)),  # positions span 6 descriptors
        dict(inflight=((0, 3), (1, 0))),
        dict(inflight=[(0, 3), (1, 3)]),
        dict(in_order_next=1),
        dict(broken=5),
    ]
    target = Virtqueue(8, packed=True, ring=ring)
    before = target.state()
    for change in bad:
        with pytest.raises(SnapshotError):
            target.restore(dataclasses.replace(good, **change))
        assert target.state() == before
    with pytest.raises(SnapshotError):
        target.restore("state")  # type: ignore[arg-type]
    split = Virtqueue(8, ring=ring)
    split_state = split.state()
    for change in (dict(next_avail=9, next_used=0), dict(avail_wrap=False), dict(inflight=((0, 1),)),
                   dict(in_order_next=8)):
        with pytest.raises(SnapshotError):
            split.restore(dataclasses.replace(split_state, **change))


def test_restore_broken_queue_stays_broken(make, memory, ring):
    queue, driver = make(8)
    driver.raw_publish([9])
    queue.pop_batch(memory, 8)
    clone = Virtqueue(8, ring=ring)
    clone.restore(queue.state())
    assert clone.broken and isinstance(clone.broken_reason, errors.RestoredBrokenError)
    assert "2.7.5" in str(clone.broken_reason)


def test_selector_exports_both_implementations():
    assert IMPLEMENTATIONS["python"] is RingPy
    assert ring_module.IMPLEMENTATION == IMPLEMENTATION
    assert _accel.implementations()["virtio.queue.ring"] == IMPLEMENTATION
    if _accel.NO_EXTENSIONS:
        assert RingC is None and IMPLEMENTATION == "python"
    if RingC is not None:
        assert IMPLEMENTATION == "cython" and ring_module.Ring is RingC
        from virtio.queue import _ring_c

        assert _ring_c.COMPILED is True
    from virtio.queue import _ring_py

    assert _ring_py.COMPILED is False
