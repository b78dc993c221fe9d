"""``Virtqueue.reread_chain`` / ``reread_buffer``: the ring entry points inflight resubmission
uses (``virtio.queue`` rule 6), on both ring implementations (the Cython one must give the
same chains and break on the same rings as the reference)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from devmodels import GuestMemory, MemoryRegion, UsageError
from virtio.queue import Virtqueue
from virtio.queue.errors import ChainLoopError
from virtio.queue.ring import IMPLEMENTATIONS
from virtio.testing import make_driver

SIZE = 16


def memory() -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, 4 << 20)])


def filled(packed: bool, impl: Any) -> tuple[GuestMemory, Any, Virtqueue, list[Any]]:
    ram = memory()
    driver = make_driver(ram, SIZE, packed=packed, base=0x10000)
    queue = Virtqueue(SIZE, packed=packed, ring=impl)
    driver.configure(queue)
    driver.add([b"h" * 16], [512, 1])
    driver.add([b"x" * 16, b"y" * 100], [1], indirect=True)
    driver.add([b"z" * 16], [4096, 1])
    driver.kick()
    return ram, driver, queue, queue.pop_batch(ram, 8)


def descriptors(ram: GuestMemory, driver: Any, chain: Any, position: int) -> bytes:
    return ram.read(driver.layout.desc_addr + 16 * position, 16 * chain.n_desc)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_split_chains_read_again_by_head_are_the_chains_popped(impl):
    ram, driver, queue, chains = filled(False, IMPLEMENTATIONS[impl])
    state = queue.state()
    again = Virtqueue(SIZE, ring=IMPLEMENTATIONS[impl])
    again.restore(state)  # a new device instance: positions restored, chains not
    reread = [again.reread_chain(ram, chain.head) for chain in chains]
    assert [c.to_tuple() for c in reread] == [c.to_tuple() for c in chains]
    assert again.next_avail == queue.next_avail  # nothing moved
    assert again.push_batch(ram, [(reread[1], 1), (reread[0], 513)]) is not None
    assert [u.id for u in driver.reap()] == [chains[1].head, chains[0].head]


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_packed_buffers_read_again_from_copies_survive_their_slots_being_used(impl):
    ram, driver, queue, chains = filled(True, IMPLEMENTATIONS[impl])
    copies, position = [], 0
    for chain in chains:
        copies.append(descriptors(ram, driver, chain, position))
        position += chain.n_desc
    queue.push(ram, chains[2], 1)  # out of order: its used descriptor overwrites slot 0
    state = queue.state()
    again = Virtqueue(SIZE, packed=True, ring=IMPLEMENTATIONS[impl])
    again.restore(state)
    reread = [again.reread_buffer(ram, copy) for copy in copies[:2]]
    assert [c.to_tuple() for c in reread] == [c.to_tuple() for c in chains[:2]]
    assert again.push_batch(ram, [(reread[0], 513), (reread[1], 1)])
    assert sorted(u.id for u in driver.reap()) == sorted(c.head for c in chains)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_a_changed_chain_breaks_the_queue_the_same_way_in_both(impl):
    ram, driver, queue, chains = filled(False, IMPLEMENTATIONS[impl])
    again = Virtqueue(SIZE, ring=IMPLEMENTATIONS[impl])
    again.restore(queue.state())
    driver.raw_desc(chains[0].head, 0x1000, 16, 1, chains[0].head)  # NEXT to itself: a loop
    assert again.reread_chain(ram, chains[0].head) is None
    assert isinstance(again.broken_reason, ChainLoopError)
    assert again.reread_chain(ram, chains[2].head) is None  # broken is sticky


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_packed_copies_that_do_not_hold_together_break_the_queue(impl):
    ram, driver, queue, chains = filled(True, IMPLEMENTATIONS[impl])
    copy = descriptors(ram, driver, chains[0], 0)
    state = queue.state()
    for bad in (copy[:16] + copy[:16],  # NEXT missing in the first of two
                copy[:8] + bytes(4) + copy[12:14] + b"\x04\x00"):  # INDIRECT with a zero-length table
        again = Virtqueue(SIZE, packed=True, ring=IMPLEMENTATIONS[impl])
        again.restore(replace(state))
        assert again.reread_buffer(ram, bad) is None and again.broken


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_host_misuse_is_a_usage_error(impl):
    ram, driver, queue, chains = filled(True, IMPLEMENTATIONS[impl])
    with pytest.raises(UsageError):
        queue.reread_chain(ram, 0)  # packed
    with pytest.raises(UsageError):
        queue.reread_buffer(ram, b"\0" * 17)
    first = bytearray(descriptors(ram, driver, chains[0], 0)[:16])
    first[14] &= ~1  # no NEXT: a one-descriptor buffer 0, which is in flight with three
    with pytest.raises(UsageError):
        queue.reread_buffer(ram, bytes(first))
    split = Virtqueue(SIZE, ring=IMPLEMENTATIONS[impl])
    with pytest.raises(UsageError):
        split.reread_buffer(ram, b"\0" * 16)
    with pytest.raises(UsageError):
        split.reread_chain(ram, 0x10000)
