"""The ``Chain`` protocol describes what both ring implementations pop (issue 16 item 8)."""

from __future__ import annotations

import pytest

from virtio.queue import Chain, Segment


@pytest.mark.parametrize("packed", [False, True])
def test_popped_chains_satisfy_the_protocol(make, memory, packed):
    queue, driver = make(8, packed=packed)
    driver.add([b"header"], [64, 1])
    driver.kick()
    (chain,) = queue.pop_batch(memory, 8)
    assert isinstance(chain, Chain)
    readable: list[Segment] = chain.readable
    assert [length for _, length in readable] == [6] and [n for _, n in chain.writable] == [64, 1]
    assert (chain.n_readable, chain.n_writable, chain.readable_len, chain.writable_len) == (1, 2, 6, 65)
    assert chain.to_tuple()[0] == chain.head

