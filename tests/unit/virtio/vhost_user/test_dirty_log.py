"""Dirty logging for live migration (vhost-user.rst § Migration; session rule 8, ``dirty_log``).

The log is a bitmap shared by QEMU and every vhost-user back-end of the VM: bits must be
set atomically (another process sets bits in the same bytes), after the writes they cover,
and every page the device writes while the front-end migrates must end up marked: the
buffers it returns, the used ring, and, once more, the ring areas when the ring stops.
"""

from __future__ import annotations

import mmap
import os
import socket
from collections.abc import Iterator

import pytest

from devmodels import GuestMemory
from devmodels.backends import MemoryDiskBackend
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import VIRTIO_BLK_T_IN
from virtio.blk.layouts import VIRTIO_BLK_REQ_HDR
from virtio.defs import DRIVER_OK, VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED
from virtio.testing import make_driver
from virtio.vhost_user import VhostUserServer
from virtio.vhost_user import atomic_bits
from virtio.vhost_user.defs import (
    VHOST_F_LOG_ALL,
    VHOST_LOG_PAGE,
    VHOST_USER_PROTOCOL_F_LOG_SHMFD,
    VHOST_USER_SET_FEATURES,
    VHOST_USER_SET_LOG_BASE,
    VHOST_USER_SET_VRING_ADDR,
    VHOST_VRING_F_LOG,
)
from virtio.vhost_user.dirty_log import DirtyLog, LogError
from virtio.vhost_user.messages import encode_log, encode_u64, encode_vring_addr
from virtio.vhost_user.testing import FakeFrontEnd, SharedRam

pytestmark = pytest.mark.skipif(not atomic_bits.available(), reason="no atomic bit setting on this machine")

RAM = 16 << 20
LOG_SIZE = RAM // VHOST_LOG_PAGE // 8


def log_file(size: int = LOG_SIZE) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("test-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


def clear(view: mmap.mmap) -> bool:
    return view[:] == bytes(len(view))


def marked(view: mmap.mmap, gpa: int) -> bool:
    page = gpa // VHOST_LOG_PAGE
    return bool(view[page // 8] >> (page % 8) & 1)


# -- the log alone ---------------------------------------------------------------------------


def test_mark_sets_exactly_the_pages_of_the_range():
    fd, view = log_file(64)
    log = DirtyLog.open(os.dup(fd), 64, 0)
    log.mark(0x3FFF, 2)  # the last byte of page 3 and the first of page 4
    log.mark(0x10000, 0x2001)  # pages 16, 17, 18
    assert [p for p in range(64 * 8) if view[p // 8] >> (p % 8) & 1] == [3, 4, 16, 17, 18]
    log.mark(0x10000, 1)
    assert log.marked == 5  # an already set bit is left alone
    log.mark(64 * 8 * VHOST_LOG_PAGE, 8192)  # past the log: counted, no error
    assert log.outside == 2
    log.close()
    os.close(fd)


def test_mark_ranges_merges_overlaps_before_walking():
    fd, view = log_file(64)
    log = DirtyLog.open(os.dup(fd), 64, 0)
    log.mark_ranges([(0x1000, 0x1000)] * 1000 + [(0x1800, 0x2000)])
    assert log.marked == 3
    log.close()
    os.close(fd)


@pytest.mark.parametrize("size, offset, fd_kind", [
    (0, 0, "memfd"), (LOG_SIZE + 1, 0, "memfd"), (2 * LOG_SIZE, 0, "memfd"), (LOG_SIZE, 6, "memfd"), (64, 0, "pipe"),
])
def test_a_log_that_cannot_be_used_is_refused_and_its_fd_closed(size, offset, fd_kind):
    if fd_kind == "pipe":
        fd, other = os.pipe()
        os.close(other)
    else:
        fd, view = log_file()
        view.close()
    with pytest.raises(LogError):
        DirtyLog.open(fd, size, offset)
    with pytest.raises(OSError):
        os.fstat(fd)


def test_bits_set_by_two_processes_in_the_same_words_are_all_kept():
    """Atomic OR (``atomic_bits``): a read-modify-write of the byte could write back a
    stale byte over a bit the other process set in between."""
    pages = 32 * 256
    fd, view = log_file(pages // 8)
    log = DirtyLog.open(os.dup(fd), pages // 8, 0)
    pid = os.fork()
    if pid == 0:  # the other back-end: odd pages
        try:
            for page in range(1, pages, 2):
                log.mark(page * VHOST_LOG_PAGE, 1)
        finally:
            os._exit(0)
    for page in range(0, pages, 2):
        log.mark(page * VHOST_LOG_PAGE, 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert view[: pages // 8] == b"\xff" * (pages // 8)
    log.close()
    os.close(fd)


# -- a session that logs -----------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[VirtioBlkDevice, VhostUserServer, FakeFrontEnd, SharedRam]]:
    disk = MemoryDiskBackend(1 << 20, data=bytes(range(256)) * 4096)
    device = VirtioBlkDevice(GuestMemory(), disk, num_queues=1, queue_size=64)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = VhostUserServer(device)
    server.adopt(ours)
    server.start()
    ram = SharedRam.create(((0, RAM),))
    fe = FakeFrontEnd(theirs, ram, timeout=5.0)
    yield device, server, fe, ram
    fe.close()
    server.close()
    ram.close()
    disk.close()


def start(fe: FakeFrontEnd, ram: SharedRam) -> tuple[int, object]:
    features = fe.get_features()
    assert features >> VHOST_F_LOG_ALL & 1
    features &= ~(1 << VIRTIO_F_RING_PACKED | 1 << VHOST_F_LOG_ALL)  # QEMU sets LOG_ALL only to log
    assert fe.get_protocol_features() >> VHOST_USER_PROTOCOL_F_LOG_SHMFD & 1
    fe.handshake(features)
    driver = make_driver(ram.memory, 64, base=0x100000, event_idx=bool(features >> VIRTIO_F_EVENT_IDX & 1))
    fe.setup_ring(0, driver)
    return features, driver


def read_sector(fe: FakeFrontEnd, driver: object, sector: int) -> object:
    driver.add([VIRTIO_BLK_REQ_HDR.pack(VIRTIO_BLK_T_IN, 0, sector)], [8192, 1], token=sector)  # type: ignore[attr-defined]
    if driver.kick():  # type: ignore[attr-defined]
        fe.kick(0)
    assert fe.wait_call(0)
    (used,) = driver.reap()  # type: ignore[attr-defined]
    driver.set_interrupts(True)  # type: ignore[attr-defined]
    return used


def start_logging(fe: FakeFrontEnd, features: int, driver: object) -> tuple[int, mmap.mmap]:
    """What QEMU sends when a migration starts: the log, LOG_ALL, the rings' log flag."""
    fd, view = log_file()
    reply = fe.set_log_base(fd, LOG_SIZE)
    assert reply.request == VHOST_USER_SET_LOG_BASE and reply.payload == encode_u64(0)
    assert fe.ack(VHOST_USER_SET_FEATURES, encode_u64(features | 1 << VHOST_F_LOG_ALL)) == 0
    layout = driver.layout  # type: ignore[attr-defined]
    uaddr = fe.ram.uaddr
    assert fe.ack(VHOST_USER_SET_VRING_ADDR, encode_vring_addr(
        0, uaddr(layout.desc_addr), uaddr(layout.device_addr), uaddr(layout.driver_addr),
        flags=1 << VHOST_VRING_F_LOG, log=layout.device_addr)) == 0
    return fd, view


def test_buffers_and_the_used_ring_written_while_logging_are_marked(served):
    device, server, fe, ram = served
    features, driver = start(fe, ram)
    before = read_sector(fe, driver, 0)
    fd, view = start_logging(fe, features, driver)
    assert device.status & DRIVER_OK and server.session.vrings[0].running  # nothing restarted
    assert clear(view)  # what was written before logging is not marked
    used = read_sector(fe, driver, 16)
    written = [gpa for gpa, _ in used.writable]  # type: ignore[attr-defined]
    for gpa in written + [written[0] + 4096]:
        assert marked(view, gpa)
    assert marked(view, driver.layout.device_addr)  # type: ignore[attr-defined]
    assert not marked(view, 8 << 20)  # nothing was written there
    assert before.written == 8193  # type: ignore[attr-defined]
    os.close(fd)


def test_a_stopping_ring_marks_its_used_ring_again(served):
    device, server, fe, ram = served
    features, driver = start(fe, ram)
    fd, view = start_logging(fe, features, driver)
    read_sector(fe, driver, 8)
    view[:] = bytes(len(view))  # the front-end synced and cleared the log
    fe.get_vring_base(0)
    assert marked(view, driver.layout.device_addr)  # type: ignore[attr-defined]
    os.close(fd)


def test_logging_stops_when_the_front_end_says_so(served):
    device, server, fe, ram = served
    features, driver = start(fe, ram)
    fd, view = start_logging(fe, features, driver)
    uaddr = ram.uaddr
    layout = driver.layout  # type: ignore[attr-defined]
    assert fe.ack(VHOST_USER_SET_FEATURES, encode_u64(features)) == 0
    assert fe.ack(VHOST_USER_SET_VRING_ADDR, encode_vring_addr(
        0, uaddr(layout.desc_addr), uaddr(layout.device_addr), uaddr(layout.driver_addr), log=layout.device_addr)) == 0
    view[:] = bytes(len(view))
    read_sector(fe, driver, 24)
    assert clear(view)
    assert server.session.vrings[0].running
    os.close(fd)


def test_a_running_ring_still_cannot_move(served):
    device, server, fe, ram = served
    start(fe, ram)
    assert fe.ack(VHOST_USER_SET_VRING_ADDR, encode_vring_addr(
        0, ram.uaddr(0x200000), ram.uaddr(0x202000), ram.uaddr(0x201000), flags=1 << VHOST_VRING_F_LOG)) == 1


def test_a_log_that_cannot_be_mapped_ends_the_connection(served):
    device, server, fe, ram = served
    start(fe, ram)
    r, w = os.pipe()
    fe.send(VHOST_USER_SET_LOG_BASE, encode_log(LOG_SIZE), [r])
    os.close(r)
    os.close(w)
    assert fe.closed(timeout=5)


def test_a_sealable_log_is_sealed_against_shrinking_before_it_is_mapped():
    # A mapping past the end of its file faults (SIGBUS) on access: a front-end truncating
    # the log file while we log would kill the server. QEMU seals its log; others may not.
    fd = os.memfd_create("test-log", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, LOG_SIZE)
    log = DirtyLog.open(os.dup(fd), LOG_SIZE, 0)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 0)
    log.mark(0, 1)
    assert log.is_marked(0)
    log.close()
    os.close(fd)
