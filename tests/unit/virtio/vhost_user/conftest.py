"""A vhost-user back-end thread serving a virtio-blk device, and a fake front-end."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devmodels import GuestMemory
from devmodels.backends import MemoryDiskBackend
from virtio.blk import VirtioBlkDevice
from virtio.blk.layouts import VIRTIO_BLK_REQ_HDR
from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS
from virtio.testing import make_driver
from virtio.vhost_user import VhostUserServer
from virtio.vhost_user.testing import FakeFrontEnd, SharedRam


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Served:
    device: Any
    server: VhostUserServer
    frontend: FakeFrontEnd
    ram: SharedRam
    disk: MemoryDiskBackend

    def reconnect(self) -> FakeFrontEnd:
        """Drop the front-end and attach a new one on a fresh socketpair."""
        self.frontend.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        wait_until(lambda: not self.server.connected)
        self.server.adopt(ours)
        self.frontend = FakeFrontEnd(theirs, self.ram, timeout=5.0)
        return self.frontend


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def ring_impl(request: pytest.FixtureRequest) -> Any:
    return IMPLEMENTATIONS[request.param]


@pytest.fixture(params=[False, True], ids=["split", "packed"])
def packed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def served(ring_impl: Any) -> Iterator[Served]:
    disk = MemoryDiskBackend(1 << 20)
    device = VirtioBlkDevice(
        GuestMemory(), disk, num_queues=2, queue_size=64,
        queue_factory=lambda size, packed: Virtqueue(size, packed=packed, ring=ring_impl),
    )
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = VhostUserServer(device)
    server.adopt(ours)
    server.start()
    ram = SharedRam.create()
    frontend = FakeFrontEnd(theirs, ram, timeout=5.0)
    yield Served(device, server, frontend, ram, disk)
    frontend.close()
    server.close()
    ram.close()
    disk.close()


def blk_features(frontend: FakeFrontEnd, packed: bool) -> int:
    features = frontend.get_features()
    return features if packed else features & ~(1 << VIRTIO_F_RING_PACKED)


def ring_driver(served: Served, packed: bool, features: int, base: int = 0x100000) -> Any:
    return make_driver(served.ram.memory, 64, packed=packed, base=base,
                       event_idx=bool(features >> VIRTIO_F_EVENT_IDX & 1))


def blk_io(served: Served, driver: Any, index: int, requests: list[tuple[int, int, bytes, int]]) -> list[Any]:
    """Place (type, sector, data, read_len) requests, kick, wait for the call, reap."""
    for kind, sector, data, read_len in requests:
        readable = [VIRTIO_BLK_REQ_HDR.pack(kind, 0, sector)] + ([data] if data else [])
        writable = ([read_len] if read_len else []) + [1]
        driver.add(readable, writable, token=(kind, sector))
    if driver.kick():
        served.frontend.kick(index)
    got: list[Any] = []
    while len(got) < len(requests):
        assert served.frontend.wait_call(index), f"no call after {len(got)} of {len(requests)}"
        got += driver.reap()
        driver.set_interrupts(True)
    return got
