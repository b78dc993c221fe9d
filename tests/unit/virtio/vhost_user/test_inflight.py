"""Inflight I/O tracking (vhost-user.rst § Inflight I/O tracking; session rule 7).

Two levels:

- the region trackers alone (``SplitInflight``, ``PackedInflight``): a back-end killed
  between any two of the protocol's steps leaves a region that ``recover`` reads right
  (nothing completed twice, nothing in flight forgotten), and a region that does not
  hold together is refused;
- a back-end killed with requests in flight: a first server takes requests, completes
  some out of order and holds the others (a disk that never answers them), then stops
  without draining (the loop thread ends; nothing of its teardown runs, as after
  ``kill -9``). A second server on a new device gets what QEMU sends on reconnect
  (SET_INFLIGHT_FD with the same buffer, the ring with its used index as base) and must
  complete every held request exactly once, with the data on the disk.
"""

from __future__ import annotations

import mmap
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from devmodels import GuestMemory
from devmodels.backends import BlockOp, BlockRequest, MemoryDiskBackend
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from virtio.blk.layouts import VIRTIO_BLK_REQ_HDR
from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED
from virtio.net import VirtioNetDevice
from virtio.queue import Virtqueue
from virtio.testing import make_driver
from virtio.vhost_user import VhostUserServer
from virtio.vhost_user.defs import (
    VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD,
    VHOST_USER_SET_INFLIGHT_FD,
)
from virtio.vhost_user.inflight import InflightBuffer, InflightError, region_size
from virtio.vhost_user.inflight_packed import PackedInflight
from virtio.vhost_user.inflight_split import SplitInflight
from virtio.vhost_user.messages import encode_inflight
from virtio.vhost_user.testing import FakeFrontEnd, SharedRam

from .conftest import wait_until

SECTOR = 512
DATA = {sector: bytes([sector & 0xFF]) * 4096 for sector in range(0, 512, 8)}


# -- the split region --------------------------------------------------------------------------


def region(size: int = 8) -> mmap.mmap:
    return mmap.mmap(-1, region_size(size))


def test_split_recovers_the_heads_still_in_flight_in_the_order_they_were_taken():
    m = region()
    t = SplitInflight(m, 0, 8, 8)
    t.initialize(0)
    t.popped([5, 2, 7])
    t.pushing([2])
    t.pushed(True, 1)
    again = SplitInflight(m, 0, 8, 8)
    assert again.valid
    rec = again.recover(1)
    assert rec.resubmit == (5, 7) and rec.used == 1
    assert again.counter == 3


def test_split_killed_after_the_used_index_moved_does_not_resubmit_that_batch():
    m = region()
    t = SplitInflight(m, 0, 8, 8)
    t.initialize(10)
    t.popped([1, 2, 3])
    t.pushing([3, 1])  # linked into the last-batch list, then the ring publishes idx 12 ...
    # ... and the back-end dies before clearing them.
    rec = SplitInflight(m, 0, 8, 8).recover(12)
    assert rec.resubmit == (2,)
    assert SplitInflight(m, 0, 8, 8).recover(12).resubmit == (2,)  # the region was fixed


def test_split_killed_before_the_used_index_moved_resubmits_the_batch():
    m = region()
    t = SplitInflight(m, 0, 8, 8)
    t.initialize(0)
    t.popped([1, 2])
    t.pushing([2])
    assert SplitInflight(m, 0, 8, 8).recover(0).resubmit == (1, 2)


def test_split_push_not_published_keeps_the_heads_in_flight():
    m = region()
    t = SplitInflight(m, 0, 8, 8)
    t.initialize(0)
    t.popped([4])
    t.pushing([4])
    t.pushed(False, 0)
    assert SplitInflight(m, 0, 8, 8).recover(0).resubmit == (4,)


@pytest.mark.parametrize("damage", ["inflight_flag", "head_past_size", "used_far_ahead", "version", "batch_head"])
def test_split_region_that_does_not_hold_together_is_refused(damage):
    m = region()
    t = SplitInflight(m, 0, 8, 4)
    t.initialize(0)
    t.popped([1])
    used = 0
    if damage == "inflight_flag":
        m[16 + 16 * 1] = 7
    elif damage == "head_past_size":
        m[16 + 16 * 6] = 1  # an entry the 4-entry ring cannot have
    elif damage == "used_far_ahead":
        used = 100
    elif damage == "version":
        m[8:10] = b"\x09\x00"
    elif damage == "batch_head":
        m[12:14] = (9).to_bytes(2, "little")
        used = 1
    with pytest.raises(InflightError):
        SplitInflight(m, 0, 8, 4).recover(used)


# -- the packed region ---------------------------------------------------------------------------

AVAIL = 1 << 7
USED = 1 << 15


def pdesc(addr: int, length: int, buffer_id: int, flags: int) -> bytes:
    return addr.to_bytes(8, "little") + length.to_bytes(4, "little") + buffer_id.to_bytes(2, "little") + \
        flags.to_bytes(2, "little")


def test_packed_recovers_copies_of_the_buffers_in_flight():
    m = region()
    t = PackedInflight(m, 0, 8, 8)
    t.initialize(0, True)
    a = pdesc(0x1000, 16, 0, 1 | AVAIL) + pdesc(0x2000, 512, 0, 2 | AVAIL)  # NEXT, then WRITE
    b = pdesc(0x3000, 16, 3, AVAIL)
    c = pdesc(0x4000, 32, 1, 4 | AVAIL)
    t.popped([a, b, c])
    t.pushing([3])  # b completes first, out of order
    t.pushed(True, 1, True)
    rec = PackedInflight(m, 0, 8, 8).recover(lambda pos: USED | AVAIL)  # nothing in progress: not read
    assert rec.used == 1 and rec.used_wrap
    assert rec.resubmit == (a, c) and rec.counts == (2, 1) and rec.ids == (0, 1)


@pytest.mark.parametrize("published", [False, True])
def test_packed_killed_mid_push_commits_or_rolls_back_by_the_descriptor_flags(published):
    m = region()
    t = PackedInflight(m, 0, 8, 8)
    t.initialize(6, True)
    a = pdesc(0x1000, 16, 2, AVAIL)
    b = pdesc(0x3000, 16, 5, AVAIL)
    t.popped([a, b])
    t.pushing([5])  # region says used 7, ring not yet (or already) published
    flags_at_6 = (AVAIL | USED) if published else AVAIL  # used for wrap 1 / still available
    rec = PackedInflight(m, 0, 8, 8).recover(lambda pos: flags_at_6 if pos == 6 else 0)
    if published:
        assert rec.used == 7 and rec.ids == (2,)
    else:
        assert rec.used == 6 and rec.ids == (2, 5)


def test_packed_wraps_the_used_position():
    m = region()
    t = PackedInflight(m, 0, 8, 8)
    t.initialize(7, True)
    a = pdesc(0x1000, 16, 0, 1 | AVAIL) + pdesc(0x2000, 16, 0, AVAIL)
    t.popped([a])
    t.pushing([0])
    t.pushed(True, 1, False)
    rec = PackedInflight(m, 0, 8, 8).recover(lambda pos: 0)
    assert (rec.used, rec.used_wrap, rec.resubmit) == (1, False, ())


def test_packed_push_of_a_buffer_never_taken_stops_tracking_and_invalidates_the_region():
    m = region()
    t = PackedInflight(m, 0, 8, 8)
    t.initialize(0, True)
    t.pushing([4])
    assert t.broken and not PackedInflight(m, 0, 8, 8).valid


@pytest.mark.parametrize("damage", ["free_cycle", "count", "shared_entry", "used_past_size", "wrap"])
def test_packed_region_that_does_not_hold_together_is_refused(damage):
    m = region()
    t = PackedInflight(m, 0, 8, 8)
    t.initialize(0, True)
    t.popped([pdesc(0x1000, 16, 1, 1 | AVAIL) + pdesc(0x2000, 16, 1, AVAIL)])
    entry = lambda i: 32 + 32 * i  # noqa: E731
    if damage == "free_cycle":
        m[entry(3) + 2 : entry(3) + 4] = (2).to_bytes(2, "little")  # 2 -> 3 -> 2
    elif damage == "count":
        m[entry(0) + 6 : entry(0) + 8] = (9).to_bytes(2, "little")
    elif damage == "shared_entry":
        m[entry(0) + 2 : entry(0) + 4] = (5).to_bytes(2, "little")  # its second entry is a free one
    elif damage == "used_past_size":
        m[16:18] = m[18:20] = (8).to_bytes(2, "little")
    elif damage == "wrap":
        m[20] = m[21] = 2
    with pytest.raises(InflightError):
        PackedInflight(m, 0, 8, 8).recover(lambda pos: 0)


def test_buffer_shapes_are_checked():
    with pytest.raises(InflightError):
        InflightBuffer.create(0, 128)
    with pytest.raises(InflightError):
        InflightBuffer.create(1, 40000)
    fd, size = InflightBuffer.create(2, 128)
    assert size == 2 * region_size(128) and os.fstat(fd).st_size == size
    with pytest.raises(InflightError):
        InflightBuffer.adopt(os.dup(fd), size + 4096, 0, 2, 128)  # longer than the file
    with pytest.raises(InflightError):
        InflightBuffer.adopt(os.dup(fd), 64, 0, 2, 128)  # cannot hold the regions
    pipe_r, pipe_w = os.pipe()
    os.close(pipe_w)
    with pytest.raises(InflightError):
        InflightBuffer.adopt(pipe_r, size, 0, 2, 128)  # not a memory file (and consumed)
    buffer = InflightBuffer.adopt(fd, size, 0, 2, 128)
    assert buffer.region(1, 32 + 32 * 128) == region_size(128) and buffer.region(2, 16) is None
    buffer.close()


# -- a back-end killed with requests in flight --------------------------------------------------


class HeldDisk:
    """A ``BlockBackend`` over a shared memory disk that never answers writes at or above
    ``hold_from`` (bytes) while ``holding``: they stay in flight until the back-end dies."""

    def __init__(self, disk: MemoryDiskBackend, hold_from: int | None) -> None:
        self.disk = disk
        self.hold_from = hold_from
        self.held: list[BlockRequest] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.disk, name)

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        if self.hold_from is not None and request.op is BlockOp.WRITE and request.offset >= self.hold_from:
            self.held.append(request)
            return
        self.disk.submit(request, memory)

    def close(self) -> None:
        """The shared disk outlives the back-ends."""


def blk_device(backend: Any, packed: bool, ring_impl: Any = None) -> VirtioBlkDevice:
    return VirtioBlkDevice(GuestMemory(), backend, num_queues=1, queue_size=64, packed=packed,
                           queue_factory=lambda size, p: Virtqueue(size, packed=p, ring=ring_impl))


class Backend:
    """One back-end instance: a device and its server thread on a socketpair."""

    def __init__(self, backend: Any, packed: bool, ram: SharedRam, ring_impl: Any = None) -> None:
        self.device = blk_device(backend, packed, ring_impl)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server = VhostUserServer(self.device)
        self.server.adopt(ours)
        self.thread = self.server.start()
        self.frontend = FakeFrontEnd(theirs, ram, timeout=5.0)

    def kill(self) -> None:
        """The loop ends where it is; nothing of the session's teardown runs."""
        self.server.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.frontend.close()  # QEMU sees the connection go


@pytest.fixture
def disk() -> Iterator[MemoryDiskBackend]:
    backend = MemoryDiskBackend(1 << 20)
    yield backend
    backend.close()


@pytest.fixture
def ram() -> Iterator[SharedRam]:
    shared = SharedRam.create()
    yield shared
    shared.close()


def features_of(fe: FakeFrontEnd, packed: bool) -> int:
    features = fe.get_features()
    return features if packed else features & ~(1 << VIRTIO_F_RING_PACKED)


def write(driver: Any, sector: int) -> None:
    driver.add([VIRTIO_BLK_REQ_HDR.pack(VIRTIO_BLK_T_OUT, 0, sector), DATA[sector]], [1], token=("w", sector))


def read(driver: Any, sector: int) -> None:
    driver.add([VIRTIO_BLK_REQ_HDR.pack(VIRTIO_BLK_T_IN, 0, sector)], [4096, 1], token=("r", sector))


def reap_until(fe: FakeFrontEnd, driver: Any, count: int) -> list[Any]:
    got: list[Any] = []
    while len(got) < count:
        assert fe.wait_call(0), f"no call after {len(got)} of {count} used buffers"
        got += driver.reap()  # the simulator refuses an id used twice (DeviceProtocolError)
        driver.set_interrupts(True)
    return got


def ring(features: int, ram: SharedRam, packed: bool) -> Any:
    return make_driver(ram.memory, 64, packed=packed, base=0x100000, event_idx=bool(features >> VIRTIO_F_EVENT_IDX & 1))


def test_requests_in_flight_when_the_back_end_dies_complete_once_on_the_next(disk, ram, packed, ring_impl):
    first = Backend(HeldDisk(disk, hold_from=256 * SECTOR), packed, ram, ring_impl)
    fe = first.frontend
    features = features_of(fe, packed)
    fe.handshake(features)
    inflight_fd, area = fe.get_inflight_fd(1, 64)
    assert fe.set_inflight_fd(inflight_fd, area) == 0
    driver = ring(features, ram, packed)
    fe.setup_ring(0, driver)
    # Interleaved: the held ones (sectors >= 256) are taken but never answered, the others
    # complete around them, out of order.
    sectors = [256, 0, 264, 8, 16, 272, 24]
    for sector in sectors:
        write(driver, sector)
    if driver.kick():
        fe.kick(0)
    done = reap_until(fe, driver, 4)
    assert sorted(u.token[1] for u in done) == [0, 8, 16, 24]
    wait_until(lambda: len(first.server.device.backend.held) == 3)
    first.kill()

    second = Backend(HeldDisk(disk, hold_from=None), packed, ram, ring_impl)
    fe = second.frontend
    fe.handshake(features)
    assert fe.set_inflight_fd(inflight_fd, area) == 0
    # QEMU found the connection gone: it restarts the ring from the used index it reads
    # (split), or from the position it last knew (packed: stale, the region knows better).
    base = None if packed else ram.memory.load_u16(driver.layout.device_addr + 2)
    fe.setup_ring(0, driver, base=base)
    done = reap_until(fe, driver, 3)
    assert sorted(u.token[1] for u in done) == [256, 264, 272]
    assert all(u.written == 1 for u in done)
    # The ring goes on: new requests, and a read of what the resubmitted writes wrote.
    read(driver, 264)
    write(driver, 32)
    if driver.kick():
        fe.kick(0)
    done = reap_until(fe, driver, 2)
    assert {u.token for u in done} == {("r", 264), ("w", 32)}
    assert next(u for u in done if u.token[0] == "r").read(ram.memory)[:4096] == DATA[264]
    for sector in sectors + [32]:
        assert disk._disk[sector * SECTOR : sector * SECTOR + 4096] == DATA[sector]
    second.server.close()
    first.server.close()
    os.close(inflight_fd)


def test_a_fresh_buffer_restarts_nothing_and_the_base_is_kept(disk, ram):
    b = Backend(disk, False, ram)
    fe = b.frontend
    features = features_of(fe, False)
    fe.handshake(features)
    fd, area = fe.get_inflight_fd(1, 64)
    assert fe.set_inflight_fd(fd, area) == 0
    driver = ring(features, ram, False)
    fe.setup_ring(0, driver)
    write(driver, 40)
    if driver.kick():
        fe.kick(0)
    assert [u.written for u in reap_until(fe, driver, 1)] == [1]
    b.server.close()
    os.close(fd)


def test_get_inflight_fd_answers_a_zeroed_memfd_sized_for_the_queues(disk, ram):
    b = Backend(disk, False, ram)
    fe = b.frontend
    fe.handshake(features_of(fe, False))
    fd, area = fe.get_inflight_fd(1, 128)
    assert (area.size, area.offset, area.num_queues, area.queue_size) == (region_size(128), 0, 1, 128)
    assert os.fstat(fd).st_size == area.size and os.pread(fd, area.size, 0) == bytes(area.size)
    os.close(fd)
    b.server.close()


@pytest.mark.parametrize("case", ["no_fd", "too_many_queues", "too_short"])
def test_bad_set_inflight_fd_is_refused_and_the_session_goes_on(disk, ram, case):
    b = Backend(disk, False, ram)
    fe = b.frontend
    fe.handshake(features_of(fe, False))
    fd, size = InflightBuffer.create(1, 64)
    if case == "no_fd":
        assert fe.ack(VHOST_USER_SET_INFLIGHT_FD, encode_inflight(size, 0, 1, 64)) == 1
    elif case == "too_many_queues":
        assert fe.ack(VHOST_USER_SET_INFLIGHT_FD, encode_inflight(size, 0, 9, 64), [fd]) == 1
    else:
        assert fe.ack(VHOST_USER_SET_INFLIGHT_FD, encode_inflight(size * 4, 0, 1, 64), [fd]) == 1
    assert fe.get_queue_num() == 1
    os.close(fd)
    b.server.close()


def test_the_nic_does_not_offer_inflight_tracking():
    from devmodels.backends.net import SocketBackend

    ours, theirs = SocketBackend.pair()
    device = VirtioNetDevice(GuestMemory(), ours, queue_size=64, ctrl_vq=False)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ram = SharedRam.create()
    with VhostUserServer(device) as server:
        server.adopt(a)
        server.start()
        fe = FakeFrontEnd(b, ram, timeout=5.0)
        assert not fe.get_protocol_features() >> VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD & 1
        fe.close()
    ram.close()
    ours.close()
    theirs.close()


# -- a front-end writing the shared region while the back-end tracks ----------------------------


@pytest.mark.parametrize("scribble", [100, 0xFFFF])
def test_packed_tracking_never_follows_indices_the_front_end_rewrote(scribble):
    # The front-end maps the same memfd: it can rewrite ``last``, ``num`` and ``next`` of
    # the entries of buffers in flight at any time. Returning and giving back those buffers
    # must neither raise (the server's loop would die) nor store outside the queue's region.
    m = mmap.mmap(-1, 4096)  # the region (288 bytes) and, after it, what it must not touch
    t = PackedInflight(m, 0, 8, 8)
    t.initialize(0, True)
    t.popped([pdesc(0x1000, 16, 1, 1 | AVAIL) + pdesc(0x2000, 16, 1, AVAIL), pdesc(0x3000, 16, 2, AVAIL)])
    end = PackedInflight.need(8)
    for i in range(8):
        entry = 32 + 32 * i
        m[entry + 2 : entry + 8] = scribble.to_bytes(2, "little") * 3  # next, last, num
    t.pushing([1])
    t.pushed(True, 2, True)
    t.rewound([2])
    assert m[end:] == bytes(len(m) - end)


def test_the_buffer_this_back_end_allocates_cannot_be_shrunk_under_it():
    # A mapping past the end of its file faults (SIGBUS) on access: a front-end that
    # truncated the inflight memfd killed the server at its next tracked request.
    fd, size = InflightBuffer.create(1, 64)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 0)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, size + 4096)
    assert os.fstat(fd).st_size == size
    os.close(fd)


def test_an_adopted_sealable_buffer_is_sealed_against_shrinking():
    fd = os.memfd_create("front-end-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    size = region_size(64)
    os.ftruncate(fd, size)
    buffer = InflightBuffer.adopt(os.dup(fd), size, 0, 1, 64)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 0)
    buffer.mapping[0] = 1  # still there
    buffer.close()
    os.close(fd)


def test_an_in_order_ring_is_not_tracked_and_a_restart_does_not_end_the_server(disk, ram):
    """Resubmission re-reads chains by head, which VIRTIO_F_IN_ORDER does not allow: a device
    that offers IN_ORDER gets no tracking on that ring instead of a UsageError out of the
    session when the next back-end starts it."""
    first = Backend(HeldDisk(disk, hold_from=256 * SECTOR), False, ram)
    first.device.features.offered |= 1 << VIRTIO_F_IN_ORDER
    fe = first.frontend
    features = features_of(fe, False)
    assert features >> VIRTIO_F_IN_ORDER & 1
    fe.handshake(features)
    inflight_fd, area = fe.get_inflight_fd(1, 64)
    assert fe.set_inflight_fd(inflight_fd, area) == 0
    driver = ring(features, ram, False)
    fe.setup_ring(0, driver)
    write(driver, 256)  # held: in flight when the back-end dies
    if driver.kick():
        fe.kick(0)
    wait_until(lambda: len(first.server.device.backend.held) == 1)
    first.kill()

    second = Backend(HeldDisk(disk, hold_from=None), False, ram)
    second.device.features.offered |= 1 << VIRTIO_F_IN_ORDER
    fe = second.frontend
    fe.handshake(features)
    assert fe.set_inflight_fd(inflight_fd, area) == 0
    fe.setup_ring(0, driver, base=ram.memory.load_u16(driver.layout.device_addr + 2))
    assert second.thread.is_alive()
    assert fe.get_features() == features | 1 << VIRTIO_F_IN_ORDER  # the session still answers
    second.server.close()
    first.server.close()
    os.close(inflight_fd)
