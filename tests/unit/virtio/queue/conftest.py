"""Fixtures for the virtqueue tests: every test runs on each ring implementation present
(pure Python always, Cython when built), in the same process (CONVENTIONS: differential)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devmodels import GuestMemory, MemoryRegion
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS
from virtio.testing import make_driver

RAM_SIZE = 1 << 20


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def ring(request: pytest.FixtureRequest) -> Any:
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def memory() -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, RAM_SIZE)])


@pytest.fixture
def make(ring: Any, memory: GuestMemory) -> Callable[..., Any]:
    """``make(size, packed=False, event_idx=False, in_order=False, **queue_kwargs) -> (queue, driver)``."""

    def build(size: int = 8, *, packed: bool = False, event_idx: bool = False, in_order: bool = False, **kwargs: Any):
        driver = make_driver(memory, size, packed=packed, event_idx=event_idx, in_order=in_order)
        queue = Virtqueue(kwargs.pop("max_size", size), packed=packed, ring=ring, **kwargs)
        driver.configure(queue)
        return queue, driver

    return build
