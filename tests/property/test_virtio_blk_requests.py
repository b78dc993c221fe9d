"""Properties of virtio-blk under random requests (Firecracker ``parse_random_requests``).

- Any chain a guest can build (random header bytes, framing, segment addresses in or out
  of RAM, lengths, types) is answered: the device never raises, every chain comes back,
  the status is OK/IOERR/UNSUPP (or the used length is 0 when there is no status byte),
  and the backend only ever sees requests inside the disk, sector aligned, whose data
  segments are guest RAM.
- Python and Cython rings give the same answers to the same requests (CONVENTIONS: differential).
- A random sequence of well-formed writes and reads, each framed at random, behaves like a
  byte array.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels import GuestMemory, MemoryRegion
from devmodels.backends import BlockRequest, MemoryDiskBackend
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from virtio.blk.testing import BlkDriver
from virtio.defs import VIRTIO_F_RING_PACKED
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS

RAM = 4 << 20
DISK = 256 << 10
SECTORS = DISK // 512
TYPES = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD,
         VIRTIO_BLK_T_WRITE_ZEROES, 2, 10, 14, 0xFFFF_FFFF]


class Watch:
    """A backend that checks every request it is given."""

    def __init__(self, memory: GuestMemory) -> None:
        self.inner = MemoryDiskBackend(DISK)
        self.memory = memory
        self.bad: list[str] = []
        self.capacity = DISK
        self.readonly = False
        self.logical_block_size = 512
        self.supports_discard = self.inner.supports_discard

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        if request.length and (request.offset % 512 or request.length % 512 or request.offset + request.length > DISK):
            self.bad.append(f"range {request.offset}+{request.length}")
        for gpa, length in request.segments:
            if not memory.check_range(gpa, length):
                self.bad.append(f"segment {gpa:#x}+{length}")
        self.inner.submit(request, memory)

    def completions(self) -> list[Any]:
        return self.inner.completions()

    def drain(self) -> None:
        self.inner.drain()

    def set_notify(self, notify: Any) -> None:
        self.inner.set_notify(notify)


segment = st.one_of(
    st.integers(1, 4096).map(lambda n: ("alloc", n)),
    st.tuples(st.integers(0, 2 * RAM), st.integers(0, 4096)).map(lambda t: ("raw", t)),
)
header = st.builds(
    lambda t, r, s: struct.pack("<IIQ", t, r, s),
    st.sampled_from(TYPES),
    st.integers(0, 2**32 - 1),
    st.one_of(st.integers(0, SECTORS + 4), st.integers(0, 2**64 - 1)),
)
request = st.fixed_dictionaries(
    {
        "header": header,
        "header_cut": st.integers(1, 16),
        "data": st.binary(max_size=2048),
        "readable": st.lists(segment, max_size=2),
        "writable": st.lists(segment, max_size=3),
        "indirect": st.booleans(),
    }
)


def _device(memory: GuestMemory, backend: Any, ring: Any, packed: bool) -> tuple[VirtioBlkDevice, BlkDriver]:
    device = VirtioBlkDevice(memory, backend, queue_size=64,
                             queue_factory=lambda size, p: Virtqueue(size, packed=p, ring=ring))
    accept = device.features.offered & ~(0 if packed else 1 << VIRTIO_F_RING_PACKED)
    return device, BlkDriver(device, accept=accept, data_size=1 << 20)


def _place(driver: BlkDriver, req: dict[str, Any]) -> None:
    readable: list[Any] = [req["header"][: req["header_cut"]], req["header"][req["header_cut"] :], req["data"]]
    for kind, value in req["readable"]:
        readable.append(bytes(value) if kind == "alloc" else value)
    writable = [value for _, value in req["writable"]]
    driver.request(0, raw_readable=[r for r in readable if r != b""] or [b"\0"], raw_writable=writable,
                   indirect=req["indirect"])


def _run(ring: Any, packed: bool, requests: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], list[str], bytes]:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
    backend = Watch(memory)
    device, driver = _device(memory, backend, ring, packed)
    for req in requests:
        _place(driver, req)
    driver.kick()
    results = driver.complete()
    out = [(r.token, r.status, r.used_len) for r in sorted(results, key=lambda r: r.token)]
    assert len(out) == len(requests), "every chain comes back"
    for _, status, used in out:
        assert status in (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP) or used == 0
    return out, backend.bad, backend.inner.read_at(0, DISK)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=6), packed=st.booleans())
def test_random_chains_are_answered_and_the_backend_sees_only_valid_requests(requests, packed):
    for ring in IMPLEMENTATIONS.values():
        _, bad, _ = _run(ring, packed, requests)
        assert bad == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=6), packed=st.booleans())
def test_python_and_cython_rings_agree(requests, packed):
    answers = {name: _run(ring, packed, requests) for name, ring in IMPLEMENTATIONS.items()}
    assert len({repr(a) for a in answers.values()}) == 1


op = st.one_of(
    st.tuples(st.just("w"), st.integers(0, SECTORS - 8), st.integers(1, 8), st.integers(0, 255),
              st.sampled_from([0, 512, 700])),
    st.tuples(st.just("r"), st.integers(0, SECTORS - 8), st.integers(1, 8), st.just(0),
              st.sampled_from([0, 512, 333])),
    st.tuples(st.just("z"), st.integers(0, SECTORS - 8), st.integers(1, 8), st.just(0), st.just(0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=12), packed=st.booleans(), ring=st.sampled_from(sorted(IMPLEMENTATIONS)))
def test_reads_and_writes_behave_like_a_byte_array(ops, packed, ring):
    memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
    backend = MemoryDiskBackend(DISK)
    _, driver = _device(memory, backend, IMPLEMENTATIONS[ring], packed)
    model = bytearray(DISK)
    for kind, sector, count, fill, split in ops:
        length = 512 * count
        if kind == "w":
            data = bytes((fill + i) & 0xFF for i in range(length))
            assert driver.write(sector, data, data_split=split).status == VIRTIO_BLK_S_OK
            model[512 * sector : 512 * sector + length] = data
        elif kind == "z":
            segment_bytes = struct.pack("<QII", sector, count, 0)
            assert driver.submit(VIRTIO_BLK_T_WRITE_ZEROES, data=segment_bytes).status == VIRTIO_BLK_S_OK
            model[512 * sector : 512 * sector + length] = bytes(length)
        else:
            result = driver.read(sector, count, data_split=split)
            assert result.status == VIRTIO_BLK_S_OK
            assert result.data == bytes(model[512 * sector : 512 * sector + length])
    assert backend.read_at(0, DISK) == bytes(model)
