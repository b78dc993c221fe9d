"""Block backends driven the way a device does: many requests in flight against guest RAM of
a ``Machine``, completions collected on the device's thread when ``notify`` wakes it."""

from __future__ import annotations

import os
import random
import threading

import pytest

from devmodels import Machine
from devmodels.backends import BlockBackend, BlockCompletion, BlockOp, BlockRequest, BlockStatus
from devmodels.backends.block import MemoryDiskBackend, RawFileBackend

DISK = 8 << 20
SECTOR = 512


@pytest.fixture
def machine():
    with Machine(ram_size=32 << 20, ram_backing="memfd") as m:
        yield m


def make_backend(kind: str, tmp_path) -> BlockBackend:
    if kind == "memory":
        return MemoryDiskBackend(DISK)
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(DISK)
    try:
        return RawFileBackend(path, direct=(kind == "direct"), workers=4, queue_depth=16)
    except Exception as exc:  # O_DIRECT on a filesystem without it
        pytest.skip(str(exc))


class DeviceLoop:
    """What a device's thread does: submit, sleep until notified, collect."""

    def __init__(self, backend: BlockBackend) -> None:
        self.backend = backend
        self.wake = threading.Event()
        backend.set_notify(self.wake.set)
        self.done: dict[object, BlockCompletion] = {}

    def collect(self, count: int) -> None:
        while len(self.done) < count:
            for completion in self.backend.completions():
                assert completion.tag not in self.done, "a completion arrived twice"
                self.done[completion.tag] = completion
            if len(self.done) < count:
                assert self.wake.wait(60), "hang guard"
                self.wake.clear()


@pytest.mark.parametrize("kind", ["memory", "buffered", "direct"])
def test_many_requests_in_flight_round_trip(machine, tmp_path, kind):
    memory = machine.memory
    backend = make_backend(kind, tmp_path)
    rng = random.Random(1234)
    loop = DeviceLoop(backend)
    # 256 writes of 1..16 sectors, each to its own disk slot, from scattered guest buffers
    # split into odd-sized segments.
    slots = list(range(DISK // (16 * SECTOR)))
    rng.shuffle(slots)
    expected: dict[int, bytes] = {}
    for n in range(256):
        length = rng.randint(1, 16) * SECTOR
        data = rng.randbytes(length)
        gpa = 0x10000 + n * 0x10000 + rng.randint(0, 511)
        memory.write(gpa, data)
        cut = rng.randint(0, length)
        offset = slots[n] * 16 * SECTOR
        expected[offset] = data
        backend.submit(BlockRequest(BlockOp.WRITE, offset, length, [(gpa, cut), (gpa + cut, length - cut)], tag=n), memory)
    backend.submit(BlockRequest(BlockOp.FLUSH, 0, 0, tag="flush"), memory)
    loop.collect(257)
    assert all(c.status is BlockStatus.OK for c in loop.done.values())
    memory.fill(0x10000, 256 * 0x10000, 0)
    loop.done.clear()
    reads = {}
    for n, (offset, data) in enumerate(expected.items()):
        gpa = 0x1200000 + n * 0x2000 + 3
        reads[n] = (gpa, data)
        backend.submit(BlockRequest(BlockOp.READ, offset, len(data), [(gpa, len(data))], tag=n), memory)
    loop.collect(len(reads))
    for n, (gpa, data) in reads.items():
        assert loop.done[n].status is BlockStatus.OK and loop.done[n].transferred == len(data)
        assert memory.read(gpa, len(data)) == data
    backend.close()


def test_close_with_io_in_flight(machine, tmp_path):
    memory = machine.memory
    backend = make_backend("buffered", tmp_path)
    payload = os.urandom(64 * 1024)
    memory.write(0x100000, payload)
    for n in range(64):
        backend.submit(BlockRequest(BlockOp.WRITE, n * len(payload), len(payload), [(0x100000, len(payload))], tag=n), memory)
    backend.close()  # waits for all 64
    tags = sorted(c.tag for c in backend.completions())
    assert tags == list(range(64))
    with open(tmp_path / "disk.img", "rb") as f:
        for _ in range(64):
            assert f.read(len(payload)) == payload


def test_drain_before_removing_guest_ram(machine, tmp_path):
    """Interface rule 3: after drain() no view into RAM is held, so the region can go."""
    memory = machine.memory
    backend = make_backend("buffered", tmp_path)
    for n in range(32):
        backend.submit(BlockRequest(BlockOp.READ, n * 4096, 4096, [(n * 4096, 4096)], tag=n), memory)
    backend.drain()
    region = memory.remove_region(0)
    region.close()  # an mmap with exported views would raise BufferError here
    backend.submit(BlockRequest(BlockOp.READ, 0, 512, [(0, 512)], tag="gone"), memory)
    backend.drain()
    completions = {c.tag: c for c in backend.completions()}
    assert completions["gone"].status is BlockStatus.IO_ERROR
    assert all(completions[n].status is BlockStatus.OK for n in range(32))
    backend.close()
