"""Packed virtqueue (VIRTIO 1.2 §2.8): device-checkable MUST clauses by section, wrap
counters, event suppression and IN_ORDER. Packed rings have no anchor implementation
(CONVENTIONS: simulators), so the driver side here is the simulator plus raw descriptors."""

from __future__ import annotations

import pytest

from devmodels import DenialOfService
from virtio.queue import errors
from virtio.queue.defs import (
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
)

NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT


def broken_by(queue, memory, kind):
    chains = queue.pop_batch(memory, 64)
    assert queue.broken and isinstance(queue.broken_reason, kind), queue.broken_reason
    return chains


def ptable(memory, gpa, entries):
    for j, (addr, length, flags) in enumerate(entries):
        memory.write(gpa + 16 * j, addr.to_bytes(8, "little") + length.to_bytes(4, "little") + bytes(2)
                     + flags.to_bytes(2, "little"))


def test_round_trip(make, memory):
    queue, driver = make(8, packed=True)
    bid = driver.add([b"hello"], [32], token="t")
    assert driver.kick()
    (chain,) = queue.pop_batch(memory, 8)
    assert (chain.head, chain.n_desc, chain.readable_len, chain.writable_len) == (bid, 2, 5, 32)
    memory.write(chain.writable[0][0], b"ok")
    assert queue.push_batch(memory, [(chain, 2)]) is True
    (used,) = driver.reap()
    assert (used.id, used.written, used.token, used.read(memory)) == (bid, 2, "t", b"ok")


def test_spec_2_8_queue_size_need_not_be_power_of_two(make, memory):
    queue, driver = make(5, packed=True)
    for _lap in range(4):  # several laps: the wrap counters flip (§2.8.1)
        ids = [driver.add([b"a"], [8]) for _ in range(2)]
        driver.kick()
        chains = queue.pop_batch(memory, 8)
        assert [c.head for c in chains] == ids
        queue.push_batch(memory, [(c, 8) for c in chains])
        assert [u.id for u in driver.reap()] == ids
    assert not queue.broken


@pytest.mark.parametrize("size", [0, 9])
def test_spec_2_8_queue_size_in_range(make, memory, size):
    queue, driver = make(8, packed=True)
    queue.size = size
    broken_by(queue, memory, errors.QueueSizeError)


@pytest.mark.parametrize("area, offset", [("desc_addr", 8), ("driver_addr", 2), ("device_addr", 2)])
def test_spec_2_8_11_parts_aligned(make, memory, area, offset):
    queue, driver = make(8, packed=True)
    setattr(queue, area, getattr(queue, area) + offset)
    broken_by(queue, memory, errors.RingAddressError)


def test_spec_2_8_1_wrap_counters_and_used_flags(make, memory):
    queue, driver = make(4, packed=True)
    for lap in range(3):
        ids = [driver.add([b"x"]) for _ in range(4)]
        driver.kick()
        chains = queue.pop_batch(memory, 8)
        queue.push_batch(memory, [(c, 0) for c in chains])
        flags = memory.load_u16(driver.layout.desc_addr + 14)
        used = bool(flags & VIRTQ_DESC_F_USED)
        # §2.8.1: a used descriptor has AVAIL == USED == the device wrap counter of its lap.
        assert used == bool(flags & VIRTQ_DESC_F_AVAIL) == (lap % 2 == 0)
        assert [u.id for u in driver.reap()] == ids
    assert queue.used_wrap is False and queue.avail_wrap is False  # three laps: three flips


def test_spec_2_8_15_only_available_descriptors_are_used(make, memory):
    queue, driver = make(4, packed=True)
    flags = driver.avail_flags(False)  # available for the wrong wrap counter
    driver.raw_desc(0, 0x8000, 16, 0, flags)
    assert queue.pop_batch(memory, 4) == [] and not queue.broken
    driver.raw_desc(0, 0x8000, 16, 0, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)  # looks used
    assert queue.pop_batch(memory, 4) == [] and not queue.broken


def test_spec_2_8_6_buffer_id_from_last_descriptor_and_one_used_descriptor(make, memory):
    queue, driver = make(8, packed=True)
    flags = driver.avail_flags()
    driver.raw_desc(1, 0x9000, 16, 2, WRITE | flags)
    driver.raw_desc(2, 0x9100, 16, 5, WRITE | flags)
    driver.raw_desc(0, 0x8000, 16, 7, NEXT | flags)
    driver.raw_desc(1, 0x9000, 16, 2, WRITE | NEXT | flags)
    (chain,) = queue.pop_batch(memory, 8)
    assert chain.head == 5 and chain.n_desc == 3
    assert chain.readable == [(0x8000, 16)] and chain.writable == [(0x9000, 16), (0x9100, 16)]
    queue.push_batch(memory, [(chain, 20)])
    assert memory.load_u16(driver.layout.desc_addr + 12) == 5  # written over the list's first slot
    assert queue.next_used == 3  # and the device skipped the rest of the list


def test_spec_2_8_6_every_descriptor_of_a_list_available(make, memory):
    queue, driver = make(8, packed=True)
    flags = driver.avail_flags()
    driver.raw_desc(0, 0x8000, 16, 0, NEXT | flags)
    driver.raw_desc(1, 0x9000, 16, 0, 0)  # not (yet) available
    broken_by(queue, memory, errors.PackedChainError)


def test_spec_2_8_7_indirect_table_sequential_only_write_flag_counts(make, memory):
    queue, driver = make(8, packed=True)
    ptable(memory, 0x20000, [(0x8000, 16, NEXT), (0x9000, 8, WRITE | INDIRECT), (0x9100, 8, WRITE)])
    driver.raw_desc(0, 0x20000, 48, 3, INDIRECT | WRITE | driver.avail_flags())
    (chain,) = queue.pop_batch(memory, 8)
    assert chain.readable == [(0x8000, 16)] and chain.writable == [(0x9000, 8), (0x9100, 8)]
    assert (chain.head, chain.n_desc) == (3, 1)


@pytest.mark.parametrize("length", [0, 20])
def test_spec_2_8_7_indirect_table_length(make, memory, length):
    queue, driver = make(8, packed=True)
    driver.raw_desc(0, 0x20000, length, 0, INDIRECT | driver.avail_flags())
    broken_by(queue, memory, errors.IndirectTableError)


def test_spec_2_8_19_indirect_not_in_a_next_list(make, memory):
    queue, driver = make(8, packed=True)
    flags = driver.avail_flags()
    ptable(memory, 0x20000, [(0x8000, 16, 0)])
    driver.raw_desc(1, 0x20000, 16, 0, INDIRECT | flags)
    driver.raw_desc(0, 0x8000, 16, 0, NEXT | flags)
    broken_by(queue, memory, errors.IndirectNextError)
    queue2, driver2 = make(8, packed=True)
    driver2.raw_desc(1, 0x8000, 16, 0, flags)
    driver2.raw_desc(0, 0x20000, 16, 0, INDIRECT | NEXT | flags)
    broken_by(queue2, memory, errors.IndirectNextError)


def test_spec_2_8_19_indirect_only_when_negotiated(make, memory):
    queue, driver = make(8, packed=True)
    queue.indirect = False
    driver.add([b"x"], indirect=True)
    driver.kick()
    broken_by(queue, memory, errors.IndirectFeatureError)


def test_spec_2_8_17_list_not_longer_than_queue_size(make, memory):
    queue, driver = make(4, packed=True)
    for pos in range(4):
        driver.raw_desc(pos, 0x8000, 16, 0, NEXT | driver.avail_flags(True))
    broken_by(queue, memory, errors.ChainTooLongError)


def test_spec_2_8_17_indirect_list_not_longer_than_queue_size(make, memory):
    queue, driver = make(4, packed=True)
    ptable(memory, 0x20000, [(0x8000, 16, 0)] * 5)
    driver.raw_desc(0, 0x20000, 80, 0, INDIRECT | driver.avail_flags())
    broken_by(queue, memory, errors.ChainTooLongError)


def test_spec_2_8_17_writable_descriptors_come_last(make, memory):
    queue, driver = make(8, packed=True)
    flags = driver.avail_flags()
    driver.raw_desc(1, 0x9000, 16, 0, flags)
    driver.raw_desc(0, 0x8000, 16, 0, WRITE | NEXT | flags)
    broken_by(queue, memory, errors.DescriptorOrderError)


def test_spec_2_8_17_only_free_descriptors_made_available(make, memory):
    queue, driver = make(4, packed=True)
    for _ in range(3):
        driver.add([b"x"])
    driver.kick()
    assert len(queue.pop_batch(memory, 8)) == 3
    # Three descriptors are in flight; a two-descriptor list cannot fit the one free slot.
    driver.raw_desc(0, 0x8000, 16, 3, driver.avail_flags(False))
    driver.raw_desc(3, 0x8000, 16, 3, NEXT | driver.avail_flags(True))
    broken_by(queue, memory, errors.RingOverrunError)
    assert isinstance(queue.broken_reason, DenialOfService)


def test_buffer_id_in_range_and_not_in_flight_twice(make, memory):
    queue, driver = make(4, packed=True)
    driver.raw_desc(0, 0x8000, 16, 4, driver.avail_flags())
    broken_by(queue, memory, errors.BufferIdError)
    queue2, driver2 = make(4, packed=True)
    driver2.raw_desc(0, 0x8000, 16, 1, driver2.avail_flags())
    driver2.raw_desc(1, 0x8000, 16, 1, driver2.avail_flags())
    chains = broken_by(queue2, memory, errors.BufferIdInUseError)
    assert [c.head for c in chains] == [1]


def test_spec_2_8_3_used_write_flag_and_length(make, memory):
    queue, driver = make(8, packed=True)
    for _ in range(2):
        driver.add([b"x"], [64])
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    queue.push_batch(memory, [(chains[0], 0), (chains[1], 33)])
    desc = driver.layout.desc_addr
    assert not memory.load_u16(desc + 14) & WRITE
    assert memory.load_u16(desc + 32 + 14) & WRITE and memory.load_u32(desc + 32 + 8) == 33  # after a 2-desc list


def test_spec_2_8_10_driver_event_suppression_flags(make, memory):
    queue, driver = make(8, packed=True)
    for enable, expected in ((False, False), (True, True)):
        driver.set_interrupts(enable)
        driver.add([b"x"])
        driver.kick()
        (chain,) = queue.pop_batch(memory, 8)
        assert queue.push_batch(memory, [(chain, 0)]) is expected
        driver.reap()


def test_spec_2_8_14_descriptor_event_with_event_idx(make, memory):
    queue, driver = make(4, packed=True, event_idx=True)
    ids = [driver.add([b"x"]) for _ in range(4)]
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    driver.set_interrupts(True, at=(2, True))  # notify when position 2 (first lap) is used
    assert queue.push_batch(memory, [(chains[0], 0), (chains[1], 0)]) is False
    assert queue.push_batch(memory, [(chains[2], 0), (chains[3], 0)]) is True
    assert [u.id for u in driver.reap()] == ids
    driver.set_interrupts(True, at=(1, True))  # a position of the lap already passed
    driver.add([b"y"])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 8)
    assert queue.push_batch(memory, [(chain, 0)]) is False


def test_spec_2_8_14_device_event_structure(make, memory):
    queue, driver = make(4, packed=True, event_idx=True)
    area = driver.layout.device_addr
    driver.add([b"x"])
    driver.kick()
    queue.pop_batch(memory, 8)
    assert (memory.load_u16(area), memory.load_u16(area + 2)) == (1 | 1 << 15, RING_EVENT_FLAGS_DESC)
    queue.disable_notification(memory)
    assert memory.load_u16(area + 2) == RING_EVENT_FLAGS_DISABLE
    driver.add([b"y"])
    assert driver.kick() is False
    assert queue.enable_notification(memory) is True
    queue2, driver2 = make(4, packed=True)
    queue2.disable_notification(memory)
    assert queue2.enable_notification(memory) is False
    assert memory.load_u16(driver2.layout.device_addr + 2) == RING_EVENT_FLAGS_ENABLE


def test_spec_2_8_8_in_order_batch(make, memory):
    queue, driver = make(16, packed=True, in_order=True)
    ids = [driver.add([b"x"], [16, 16]) for _ in range(3)]
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    queue.push_batch(memory, [(chains[0], 32), (chains[1], 32), (chains[2], 5)])
    desc = driver.layout.desc_addr
    assert memory.load_u16(desc + 12) == ids[2]  # one used descriptor, over the batch's first slot
    assert not memory.load_u16(desc + 3 * 16 + 14) & VIRTQ_DESC_F_USED  # the next lists' slots untouched
    assert queue.next_used == 9 and queue.used_wrap is True
    assert [(u.id, u.written) for u in driver.reap()] == [(ids[0], 32), (ids[1], 32), (ids[2], 5)]


def test_in_order_push_must_follow_pop_order(make, memory):
    from devmodels import UsageError

    queue, driver = make(8, packed=True, in_order=True)
    for _ in range(2):
        driver.add([b"x"], [8])
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    with pytest.raises(UsageError):
        queue.push_batch(memory, [(chains[1], 0)])
    assert queue.in_flight == 2 and memory.load_u16(driver.layout.desc_addr + 14) & VIRTQ_DESC_F_AVAIL


def test_out_of_order_completion(make, memory):
    queue, driver = make(16, packed=True)
    ids = [driver.add([b"x"], [8] * (k + 1)) for k in range(3)]
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    queue.push_batch(memory, [(chains[2], 1)])
    queue.push_batch(memory, [(chains[0], 2), (chains[1], 3)])
    assert [(u.id, u.written) for u in driver.reap()] == [(ids[2], 1), (ids[0], 2), (ids[1], 3)]
    assert queue.in_flight == 0 and queue.next_used == queue.next_avail == 9
