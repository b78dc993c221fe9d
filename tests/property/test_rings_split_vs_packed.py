"""Split and packed rings must mean the same thing (the packed ring has no anchor
implementation, so it is checked against the split ring's semantics): for the same
buffers, added and completed in the same order by a driver, the device pops the same
segments and the driver reaps the same (buffer, written length) pairs, with the same
notification decisions when it asks to be notified of the next used buffer."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import GuestMemory, MemoryRegion, UsageError
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS
from virtio.testing import make_driver

buffer_st = st.tuples(
    st.lists(st.integers(1, 64), max_size=3),  # device-readable sizes
    st.lists(st.integers(1, 64), max_size=3),  # device-writable sizes
    st.integers(0, 3).map(lambda v: v == 0),  # through an indirect table
).filter(lambda b: b[0] or b[1])

round_st = st.tuples(
    st.lists(buffer_st, min_size=1, max_size=6),
    st.integers(0, 2**32),  # seed of the completion order
    st.lists(st.floats(0, 1), min_size=6, max_size=6),  # fraction of each writable area written
)


def run(ring: Any, packed: bool, size: int, event_idx: bool, in_order: bool, rounds: list[Any]) -> list[Any]:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    driver = make_driver(memory, size, packed=packed, event_idx=event_idx, in_order=in_order, data_base=0x40000)
    queue = Virtqueue(size, packed=packed, ring=ring)
    driver.configure(queue)
    trace: list[Any] = []
    token = 0
    for buffers, seed, fractions in rounds:
        added = []
        for readable, writable, indirect in buffers:
            if len(readable) + len(writable) > size:
                continue  # §2.7.5.3.1/§2.8.17: longer than the queue; the driver must not
            try:
                driver.add([bytes([n]) * n for n in readable], writable, indirect=indirect, token=token)
            except UsageError:
                continue  # ring full: identical for both layouts (same descriptor accounting)
            added.append(token)
            token += 1
        trace.append(("kick", driver.kick() if added else None, added))
        chains = queue.pop_batch(memory, size)
        trace.append(("pop", [(c.n_desc, c.readable, c.writable, c.readable_len, c.writable_len) for c in chains]))
        order = list(range(len(chains)))
        if not in_order:
            random.Random(seed).shuffle(order)
        for k, index in enumerate(order):
            chain = chains[index]
            driver.set_interrupts(True)  # "notify me of the next used buffer"
            written = int(chain.writable_len * fractions[k % len(fractions)])
            notify = queue.push_batch(memory, [(chain, written)])
            trace.append(("push", notify))
        trace.append(("reap", [(u.token, u.written, u.readable, u.writable) for u in driver.reap()]))
        assert not queue.broken, queue.broken_reason
    return trace


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from([2, 4, 8, 16]),
    event_idx=st.booleans(),
    in_order=st.booleans(),
    rounds=st.lists(round_st, min_size=1, max_size=6),
)
def test_split_and_packed_agree(size: int, event_idx: bool, in_order: bool, rounds: list[Any]) -> None:
    for _, ring in sorted(IMPLEMENTATIONS.items()):
        split = run(ring, False, size, event_idx, in_order, rounds)
        packed = run(ring, True, size, event_idx, in_order, rounds)
        assert split == packed
