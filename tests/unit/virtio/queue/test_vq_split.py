"""Split virtqueue (VIRTIO 1.2 §2.7): one test per device-checkable MUST clause, named after
its section, plus the broken-queue contract: a violation never raises, breaks the queue
(sticky until reset) and pop returns the chains parsed before it."""

from __future__ import annotations

import pytest

from devmodels import DenialOfService, GuestMemory, MemoryRegion
from virtio.queue import Virtqueue, errors
from virtio.queue.defs import (
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
)
from virtio.testing import make_driver

NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT


def broken_by(queue, memory, kind):
    chains = queue.pop_batch(memory, 64)
    assert queue.broken, "the queue should be broken"
    assert isinstance(queue.broken_reason, kind), queue.broken_reason
    return chains


def table(memory, gpa, entries):
    """Write an indirect table of (addr, len, flags, next) entries."""
    for j, (addr, length, flags, nxt) in enumerate(entries):
        memory.write(gpa + 16 * j, addr.to_bytes(8, "little") + length.to_bytes(4, "little")
                     + flags.to_bytes(2, "little") + nxt.to_bytes(2, "little"))


def test_pop_push_round_trip(make, memory):
    queue, driver = make(8)
    head = driver.add([b"request"], [64], token="t")
    assert driver.kick()
    (chain,) = queue.pop_batch(memory, 8)
    assert chain.head == head and chain.n_desc == 2
    assert chain.readable == [(driver.outstanding[head].readable[0][0], 7)]
    assert chain.n_readable == 1 and chain.n_writable == 1 and chain.writable_len == 64
    gpa, _ = chain.writable[0]
    memory.write(gpa, b"answer")
    assert queue.push_batch(memory, [(chain, 6)]) is True
    (used,) = driver.reap()
    assert (used.id, used.written, used.token, used.read(memory)) == (head, 6, "t", b"answer")
    assert queue.in_flight == 0 and not queue.broken


def test_spec_2_7_queue_size_power_of_two(make, memory):
    queue, driver = make(8)
    queue.ready = False
    queue.size = 6
    queue.ready = True
    broken_by(queue, memory, errors.QueueSizeError)


def test_spec_2_7_queue_size_not_above_maximum(ring, memory):
    driver = make_driver(memory, 16)
    queue = Virtqueue(8, ring=ring)
    driver.configure(queue)
    broken_by(queue, memory, errors.QueueSizeError)


@pytest.mark.parametrize("area, offset", [("desc_addr", 8), ("driver_addr", 1), ("device_addr", 2)])
def test_spec_2_7_1_ring_parts_aligned(make, memory, area, offset):
    queue, driver = make(8)
    setattr(queue, area, getattr(queue, area) + offset)
    broken_by(queue, memory, errors.RingAddressError)


@pytest.mark.parametrize("area", ["desc_addr", "driver_addr", "device_addr"])
def test_spec_2_7_ring_parts_in_ram(make, memory, area):
    queue, driver = make(8)
    setattr(queue, area, (1 << 20) - 16)  # runs off the end of RAM
    broken_by(queue, memory, errors.RingAddressError)
    assert queue.broken_reason.gpa == (1 << 20) - 16


def test_spec_2_7_used_ring_must_be_writable(ring):
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 16)])
    driver = make_driver(memory, 8)
    queue = Virtqueue(8, ring=ring)
    driver.configure(queue)
    import mmap

    buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)
    memory.add_region(MemoryRegion(1 << 20, buf, readonly=True))
    queue.device_addr = 1 << 20
    broken_by(queue, memory, errors.RingAddressError)


def test_spec_2_7_4_2_writable_descriptors_come_last(make, memory):
    queue, driver = make(8)
    driver.raw_desc(0, 0x8000, 16, WRITE | NEXT, 1)
    driver.raw_desc(1, 0x9000, 16, 0, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.DescriptorOrderError)


def test_spec_2_7_4_2_writable_last_inside_indirect_table(make, memory):
    queue, driver = make(8)
    table(memory, 0x20000, [(0x8000, 16, WRITE | NEXT, 1), (0x9000, 16, 0, 0)])
    driver.raw_desc(0, 0x20000, 32, INDIRECT, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.DescriptorOrderError)


def test_spec_2_7_5_2_chain_shorter_than_2_pow_32_bytes(make, memory):
    queue, driver = make(8)
    driver.raw_desc(0, 0x8000, 0x8000_0000, NEXT, 1)
    driver.raw_desc(1, 0x9000, 0x7FFF_FFFF, WRITE, 0)
    driver.raw_desc(2, 0x8000, 0x8000_0000, NEXT, 3)
    driver.raw_desc(3, 0x9000, 0x8000_0000, WRITE, 0)
    driver.raw_publish([0, 2])
    chains = broken_by(queue, memory, errors.ChainBytesError)
    assert [c.head for c in chains] == [0]  # 2**32 - 1 bytes is fine
    assert chains[0].readable_len + chains[0].writable_len == 0xFFFF_FFFF


def test_spec_2_7_5_2_no_loops(make, memory):
    queue, driver = make(8)
    driver.raw_desc(0, 0x8000, 16, NEXT, 1)
    driver.raw_desc(1, 0x9000, 16, NEXT, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.ChainLoopError)


def test_spec_2_7_5_chain_of_whole_table_is_fine(make, memory):
    queue, driver = make(8)
    for i in range(8):
        driver.raw_desc(i, 0x8000 + 0x100 * i, 16, NEXT if i < 7 else 0, i + 1)
    driver.raw_publish([0])
    (chain,) = queue.pop_batch(memory, 8)
    assert chain.n_readable == 8 and not queue.broken


@pytest.mark.parametrize("where", ["head", "next"])
def test_spec_2_7_5_indices_inside_table(make, memory, where):
    queue, driver = make(8)
    if where == "head":
        driver.raw_publish([8])
    else:
        driver.raw_desc(0, 0x8000, 16, NEXT, 8)
        driver.raw_publish([0])
    broken_by(queue, memory, errors.DescriptorIndexError)
    assert queue.broken_reason.index == 8


@pytest.mark.parametrize("length", [0, 8, 24])
def test_spec_2_7_5_3_indirect_table_length_multiple_of_16(make, memory, length):
    queue, driver = make(8)
    driver.raw_desc(0, 0x20000, length, INDIRECT, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.IndirectTableError)
    assert queue.broken_reason.length == length


def test_spec_2_7_5_3_indirect_table_wholly_in_ram(make, memory):
    queue, driver = make(8)
    driver.raw_desc(0, (1 << 20) - 16, 32, INDIRECT, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.IndirectTableError)


def test_spec_2_7_5_3_1_no_nested_indirect(make, memory):
    queue, driver = make(8)
    table(memory, 0x20000, [(0x8000, 16, NEXT, 1), (0x30000, 16, INDIRECT, 0)])
    driver.raw_desc(0, 0x20000, 32, INDIRECT, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.NestedIndirectError)


def test_spec_2_7_5_3_1_no_indirect_with_next(make, memory):
    queue, driver = make(8)
    table(memory, 0x20000, [(0x8000, 16, 0, 0)])
    driver.raw_desc(0, 0x20000, 16, INDIRECT | NEXT, 1)
    driver.raw_desc(1, 0x9000, 16, WRITE, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.IndirectNextError)


def test_spec_2_7_5_3_1_indirect_only_when_negotiated(make, memory):
    queue, driver = make(8)
    queue.indirect = False
    driver.add([b"x"], [8], indirect=True)
    driver.kick()
    broken_by(queue, memory, errors.IndirectFeatureError)


def test_spec_2_7_5_3_1_chain_not_longer_than_queue_size(make, memory):
    queue, driver = make(4)
    table(memory, 0x20000, [(0x8000 + 16 * j, 16, NEXT if j < 4 else 0, j + 1) for j in range(5)])
    driver.raw_desc(0, 0x20000, 5 * 16, INDIRECT, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.ChainTooLongError)


def test_spec_2_7_5_3_indirect_next_inside_table_and_no_loops(make, memory):
    queue, driver = make(8)
    table(memory, 0x20000, [(0x8000, 16, NEXT, 2)])
    driver.raw_desc(0, 0x20000, 16, INDIRECT, 0)
    table(memory, 0x21000, [(0x8000, 16, NEXT, 1), (0x9000, 16, NEXT, 0)])
    driver.raw_desc(1, 0x21000, 32, INDIRECT, 0)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.DescriptorIndexError)
    queue2, driver2 = make(8)
    driver2.raw_desc(1, 0x21000, 32, INDIRECT, 0)
    driver2.raw_publish([1])
    broken_by(queue2, memory, errors.ChainLoopError)


def test_spec_2_7_5_3_2_ignores_write_flag_of_indirect_descriptor(make, memory):
    queue, driver = make(8)
    table(memory, 0x20000, [(0x8000, 16, NEXT, 1), (0x9000, 32, WRITE, 0)])
    driver.raw_desc(0, 0x20000, 32, INDIRECT | WRITE, 0)
    driver.raw_publish([0])
    (chain,) = queue.pop_batch(memory, 8)
    assert chain.readable == [(0x8000, 16)] and chain.writable == [(0x9000, 32)] and chain.n_desc == 1


def test_spec_2_7_5_3_2_direct_descriptors_then_one_indirect(make, memory):
    queue, driver = make(8)
    table(memory, 0x20000, [(0x9000, 32, WRITE, 0)])
    driver.raw_desc(0, 0x8000, 16, NEXT, 1)
    driver.raw_desc(1, 0x20000, 16, INDIRECT, 0)
    driver.raw_publish([0])
    (chain,) = queue.pop_batch(memory, 8)
    assert chain.readable == [(0x8000, 16)] and chain.writable == [(0x9000, 32)] and chain.n_desc == 2


def test_spec_2_7_6_1_avail_idx_not_ahead_by_more_than_queue_size(make, memory):
    queue, driver = make(8)
    driver.raw_desc(0, 0x8000, 16, 0, 0)
    driver.raw_publish([0], idx=9)
    broken_by(queue, memory, errors.AvailIndexError)
    assert isinstance(queue.broken_reason, DenialOfService)


def test_spec_2_7_6_1_avail_idx_never_decreases(make, memory):
    queue, driver = make(8)
    for _ in range(3):
        driver.add([b"x"])
    driver.kick()
    assert len(queue.pop_batch(memory, 8)) == 3
    driver.raw_publish([], idx=1)
    broken_by(queue, memory, errors.AvailIndexError)


def test_spec_2_7_7_2_flags_without_event_idx(make, memory):
    queue, driver = make(8)
    for notify_wanted in (True, False, True):
        driver.set_interrupts(notify_wanted)
        driver.add([b"x"], [4])
        driver.kick()
        (chain,) = queue.pop_batch(memory, 8)
        assert queue.push_batch(memory, [(chain, 0)]) is notify_wanted
        driver.reap()
    assert memory.load_u16(driver.layout.driver_addr) == 0  # last set_interrupts(True)
    assert VIRTQ_AVAIL_F_NO_INTERRUPT == 1


def test_spec_2_7_7_2_used_event(make, memory):
    queue, driver = make(8, event_idx=True)
    heads = [driver.add([b"x"], [4]) for _ in range(4)]
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    driver.set_interrupts(True, used_event=2)  # notify when the entry with idx 2 is written
    assert queue.push_batch(memory, [(chains[0], 0), (chains[1], 0)]) is False
    assert queue.push_batch(memory, [(chains[2], 0)]) is True
    assert queue.push_batch(memory, [(chains[3], 0)]) is False
    assert [u.id for u in driver.reap()] == heads


def test_spec_2_7_8_2_used_entries_then_idx(make, memory):
    queue, driver = make(8)
    heads = [driver.add([b"x"], [16]) for _ in range(3)]
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    queue.push_batch(memory, [(chains[2], 5), (chains[0], 7)])
    used = driver.layout.device_addr
    assert memory.load_u16(used + 2) == 2
    assert [memory.load_u32(used + 4 + 8 * i + k) for i in range(2) for k in (0, 4)] == [heads[2], 5, heads[0], 7]


def test_spec_2_7_9_in_order_batch_uses_one_entry(make, memory):
    queue, driver = make(8, in_order=True)
    heads = [driver.add([b"x"], [16]) for _ in range(3)]
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    queue.push_batch(memory, [(chains[0], 16), (chains[1], 16), (chains[2], 3)])
    used = driver.layout.device_addr
    assert memory.load_u16(used + 2) == 3  # idx moves by the batch size
    assert (memory.load_u32(used + 4), memory.load_u32(used + 8)) == (heads[2], 3)  # one entry, in slot 0
    assert [(u.id, u.written) for u in driver.reap()] == [(heads[0], 16), (heads[1], 16), (heads[2], 3)]


def test_spec_2_7_9_in_order_partial_buffer_gets_its_own_entry(make, memory):
    queue, driver = make(8, in_order=True)
    heads = [driver.add([b"x"], [16]) for _ in range(3)]
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    queue.push_batch(memory, [(chains[0], 4), (chains[1], 16), (chains[2], 16)])
    assert [(u.id, u.written) for u in driver.reap()] == [(heads[0], 4), (heads[1], 16), (heads[2], 16)]
    assert memory.load_u32(driver.layout.device_addr + 4 + 8) == heads[2]  # entries in slots 0 and 1


def test_spec_2_7_5_2_in_order_descriptors_in_ring_order(make, memory):
    queue, driver = make(8, in_order=True)
    driver.raw_desc(0, 0x8000, 16, NEXT, 2)
    driver.raw_publish([0])
    broken_by(queue, memory, errors.InOrderError)
    queue2, driver2 = make(8, in_order=True)
    driver2.raw_desc(3, 0x8000, 16, 0, 0)
    driver2.raw_publish([3])  # the first chain must start at descriptor 0
    broken_by(queue2, memory, errors.InOrderError)


def test_spec_2_7_10_2_avail_event_and_used_flags(make, memory):
    queue, driver = make(8, event_idx=True)
    driver.add([b"x"])
    driver.add([b"y"])
    assert driver.kick()  # avail_event 0: the first publication notifies
    queue.pop_batch(memory, 8)
    avail_event = driver.layout.device_addr + 4 + 8 * 8
    assert memory.load_u16(avail_event) == 2  # notify me once you publish entry 2
    assert memory.load_u16(driver.layout.device_addr) == 0  # flags stay 0 with EVENT_IDX
    queue2, driver2 = make(8)
    queue2.disable_notification(memory)
    assert memory.load_u16(driver2.layout.device_addr) == VIRTQ_USED_F_NO_NOTIFY
    driver2.add([b"x"])
    assert driver2.kick() is False
    assert queue2.enable_notification(memory) is True  # work arrived while suppressed
    assert memory.load_u16(driver2.layout.device_addr) == 0


def test_chains_before_violation_returned_then_sticky_until_reset(make, memory):
    queue, driver = make(8)
    driver.raw_desc(0, 0x8000, 16, 0, 0)
    driver.raw_desc(1, 0x8000, 16, NEXT, 9)
    driver.raw_desc(2, 0x8000, 16, 0, 0)
    driver.raw_publish([0, 1, 2])
    chains = broken_by(queue, memory, errors.DescriptorIndexError)
    assert [c.head for c in chains] == [0]
    assert queue.pop_batch(memory, 8) == []
    assert queue.push_batch(memory, [(chains[0], 0)]) is False  # nothing written once broken
    assert memory.load_u16(driver.layout.device_addr + 2) == 0
    assert queue.enable_notification(memory) is False
    queue.reset()
    assert not queue.broken and queue.broken_reason is None and not queue.ready


def test_max_segments_limit(make, memory):
    queue, driver = make(8, max_segments=2)
    driver.add([b"a", b"b"], [4])
    driver.kick()
    broken_by(queue, memory, errors.ChainTooLongError)


def test_budget_limits_and_resumes(make, memory):
    queue, driver = make(8)
    heads = [driver.add([b"x"]) for _ in range(5)]
    driver.kick()
    first = queue.pop_batch(memory, 2)
    rest = queue.pop_batch(memory, 8)
    assert [c.head for c in first + rest] == heads
    assert queue.pop_batch(memory, 8) == [] and queue.in_flight == 5


def test_not_ready_does_nothing(make, memory):
    queue, driver = make(8)
    driver.add([b"x"])
    driver.kick()
    queue.ready = False
    assert queue.pop_batch(memory, 8) == []
    assert queue.push_batch(memory, [(0, 0)]) is False
    assert not queue.broken


def test_segments_are_copies(make, memory):
    queue, driver = make(8)
    head = driver.add([(0x8000, 16)], [(0x9000, 32)])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 8)
    driver.raw_desc(head, 0xDEAD0, 1, 0, 0)  # the driver rewrites the descriptor afterwards
    assert chain.readable == [(0x8000, 16)] and chain.writable == [(0x9000, 32)]
    assert chain.to_tuple() == (head, 2, ((0x8000, 16),), ((0x9000, 32),))
    assert "Chain(head=" in repr(chain)


def test_indirect_tables_in_several_regions(ring):
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20), MemoryRegion.from_bytearray(2 << 20, 1 << 20)])
    driver = make_driver(memory, 8)
    queue = Virtqueue(8, ring=ring)
    driver.configure(queue)
    far = 2 << 20
    table(memory, 0x20000, [(0x8000, 16, 0, 0)])
    table(memory, far + 0x100, [(0x9000, 32, WRITE, 0)])
    table(memory, 0x20100, [(0xA000, 8, 0, 0)])
    driver.raw_desc(0, 0x20000, 16, INDIRECT, 0)
    driver.raw_desc(1, far + 0x100, 16, INDIRECT, 0)
    driver.raw_desc(2, 0x20100, 16, INDIRECT, 0)
    driver.raw_desc(3, (2 << 20) - 16, 32, INDIRECT, 0)  # runs past the first region into a hole
    driver.raw_publish([0, 1, 2, 3])
    chains = broken_by(queue, memory, errors.IndirectTableError)
    assert [c.readable + c.writable for c in chains] == [[(0x8000, 16)], [(0x9000, 32)], [(0xA000, 8)]]


def test_behind_an_iommu(ring):
    """With a translator every ring access goes through GuestMemory's own checks."""
    offset = 0x4_0000_0000

    def translate(iova, length, access):
        return iova - offset

    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)], translate=translate)
    driver = make_driver(GuestMemory([memory.regions[0]]), 8)  # the driver writes guest-physical
    queue = Virtqueue(8, ring=ring)
    driver.configure(queue)
    for area in ("desc_addr", "driver_addr", "device_addr"):
        setattr(queue, area, getattr(queue, area) + offset)
    head = driver.add([b"abc"], [8])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 8)  # segment addresses stay as the driver wrote them
    assert chain.head == head and chain.readable_len == 3 and not queue.broken, queue.broken_reason
    queue.push_batch(memory, [(chain, 8)])
    assert [u.written for u in driver.reap()] == [8]
