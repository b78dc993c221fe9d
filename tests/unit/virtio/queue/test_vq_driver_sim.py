"""virtio.testing: the driver simulator itself (layout, adding, kicking, reaping, and its
checks on what a device writes)."""

from __future__ import annotations

import pytest

from devmodels import GuestMemory, MemoryRegion, UsageError
from virtio.queue import Virtqueue
from virtio.testing import DeviceProtocolError, PackedDriver, RingLayout, SplitDriver, make_driver


def test_layouts_follow_spec_sizes_and_alignment():
    split = RingLayout.at(0x1003, 256, packed=False)
    assert split.desc_addr == 0x1010 and split.desc_addr % 16 == 0
    assert split.driver_addr == split.desc_addr + 16 * 256
    assert split.device_addr % 4 == 0 and split.device_addr >= split.driver_addr + 6 + 2 * 256
    assert split.end == split.device_addr + 6 + 8 * 256
    packed = RingLayout.at(0x1000, 5, packed=True)
    assert (packed.driver_addr, packed.device_addr, packed.end) == (0x1000 + 80, 0x1000 + 84, 0x1000 + 88)


def test_make_driver_and_validation():
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    assert isinstance(make_driver(memory, 8), SplitDriver)
    assert isinstance(make_driver(memory, 6, packed=True), PackedDriver)
    with pytest.raises(UsageError):
        SplitDriver(memory, 6)
    with pytest.raises(UsageError):
        PackedDriver(memory, 0)


@pytest.mark.parametrize("packed", [False, True])
def test_exhaustion_is_usage_error(ring, packed):
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    driver = make_driver(memory, 4, packed=packed, data_size=4096)
    with pytest.raises(UsageError):
        driver.add([b"a"] * 5)
    with pytest.raises(UsageError):
        driver.add()
    driver.add([b"a"], [1])
    with pytest.raises(UsageError):
        driver.add([], [8192])


@pytest.mark.parametrize("packed", [False, True])
def test_unknown_used_id_is_a_device_bug(make, memory, packed):
    queue, driver = make(4, packed=packed)
    driver.add([b"x"])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 4)
    queue.push_batch(memory, [(chain, 0)])
    if packed:
        memory.store_u16(driver.layout.desc_addr + 12, 3)
    else:
        memory.store_u32(driver.layout.device_addr + 4, 3)
    with pytest.raises(DeviceProtocolError):
        driver.reap()


def test_used_length_beyond_buffer_is_a_device_bug(make, memory):
    queue, driver = make(4)
    driver.add([], [8])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 4)
    queue.push_batch(memory, [(chain, 8)])
    memory.store_u32(driver.layout.device_addr + 8, 9)
    with pytest.raises(DeviceProtocolError):
        driver.reap()


@pytest.mark.parametrize("packed", [False, True])
def test_kick_honours_event_suppression(make, memory, packed):
    queue, driver = make(8, packed=packed, event_idx=True)
    driver.add([b"x"])
    assert driver.kick() is True
    queue.pop_batch(memory, 8)  # moves the event past what it consumed
    driver.add([b"y"])
    driver.add([b"z"])
    assert driver.kick() is True  # the first new buffer is the one the device waits for
    driver.add([b"w"])
    assert driver.kick() is False  # the device has not caught up, it already knows
    queue.disable_notification(memory)
    chains = queue.pop_batch(memory, 8)
    assert len(chains) == 3


@pytest.mark.parametrize("packed", [False, True])
def test_indirect_buffers_round_trip(make, memory, packed):
    queue, driver = make(4, packed=packed)
    bid = driver.add([b"head", b"er"], [4, 4], indirect=True, token=1)
    driver.kick()
    (chain,) = queue.pop_batch(memory, 4)
    assert chain.n_desc == 1 and chain.n_readable == 2 and chain.n_writable == 2
    assert [memory.read(g, n) for g, n in chain.readable] == [b"head", b"er"]
    memory.write(chain.writable[0][0], b"abcd")
    memory.write(chain.writable[1][0], b"ef")
    queue.push_batch(memory, [(chain, 6)])
    (used,) = driver.reap()
    assert (used.id, used.token, used.read(memory)) == (bid, 1, b"abcdef")


def test_virtqueue_configured_by_driver(ring):
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    driver = make_driver(memory, 16, packed=True, event_idx=True, in_order=True)
    queue = Virtqueue(16, packed=True, ring=ring)
    driver.configure(queue)
    assert (queue.size, queue.desc_addr, queue.driver_addr, queue.device_addr) == (
        16, driver.layout.desc_addr, driver.layout.driver_addr, driver.layout.device_addr)
    assert queue.ready and queue.event_idx and queue.in_order
