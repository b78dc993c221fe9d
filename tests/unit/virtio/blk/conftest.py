"""Fixtures for the virtio-blk tests: both ring implementations, split and packed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devmodels import GuestMemory, MemoryRegion
from devmodels.backends import BlockCompletion, BlockRequest, MemoryDiskBackend
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def queue_factory(request: pytest.FixtureRequest) -> Callable[[int, bool], Any]:
    """A queue factory for every ring implementation in this process (CONVENTIONS: differential)."""
    ring = IMPLEMENTATIONS[request.param]
    return lambda size, packed: Virtqueue(size, packed=packed, ring=ring)


@pytest.fixture(params=[False, True], ids=["split", "packed"])
def packed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory([MemoryRegion.from_bytearray(0, 8 << 20)])
    yield mem
    mem.close()


class RecordingBackend:
    """A ``MemoryDiskBackend`` that records what reaches it and can fail on demand."""

    def __init__(self, inner: MemoryDiskBackend) -> None:
        self.inner = inner
        self.submitted: list[BlockRequest] = []
        self.fail_ops: set[Any] = set()
        self.held: list[tuple[BlockRequest, GuestMemory]] = []
        self.hold = False
        self.injected: list[BlockCompletion] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    @property
    def readonly(self) -> bool:
        return self.inner.readonly

    @property
    def logical_block_size(self) -> int:
        return self.inner.logical_block_size

    @property
    def supports_discard(self) -> bool:
        return self.inner.supports_discard

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        self.submitted.append(request)
        if request.op in self.fail_ops:
            from devmodels.backends import BlockStatus

            self.injected.append(BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, "injected"))
            return
        if self.hold:
            self.held.append((request, memory))
            return
        self.inner.submit(request, memory)

    def release(self) -> None:
        held, self.held = self.held, []
        for request, memory in held:
            self.inner.submit(request, memory)

    def completions(self) -> list[BlockCompletion]:
        injected, self.injected = self.injected, []
        return injected + self.inner.completions()

    def drain(self) -> None:
        self.release()
        self.inner.drain()


@pytest.fixture
def disk() -> Iterator[RecordingBackend]:
    backend = RecordingBackend(MemoryDiskBackend(1 << 20))
    yield backend
    backend.inner.close()
