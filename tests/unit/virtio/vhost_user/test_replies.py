"""A front-end that never reads its replies cannot stall the server (backend rule 2).

The peer is a real UNIX socket connected to the server's path. It sends requests that need
a reply (GET_FEATURES) and never reads one. Below the bound the server keeps serving the
rings of that same session; past it the peer is disconnected (log line, trace event) and
the next front-end attaches on the same path.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devmodels import GuestMemory
from devmodels._trace import RecordingSink
from devmodels.backends import MemoryDiskBackend
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import VIRTIO_BLK_T_OUT
from virtio.blk.layouts import VIRTIO_BLK_REQ_HDR
from virtio.defs import VIRTIO_F_EVENT_IDX
from virtio.queue import Virtqueue
from virtio.vhost_user import VhostUserServer
from virtio.vhost_user.backend import OUT_LIMIT
from virtio.vhost_user.defs import VHOST_USER_GET_FEATURES, VHOST_USER_HDR_SIZE, VHOST_USER_VERSION
from virtio.vhost_user.layouts import HEADER
from virtio.vhost_user.testing import FakeFrontEnd, SharedRam
from virtio.testing import make_driver

from .conftest import blk_features, wait_until

GET_FEATURES = HEADER.pack(VHOST_USER_GET_FEATURES, VHOST_USER_VERSION, 0)
REPLY = VHOST_USER_HDR_SIZE + 8  # what each GET_FEATURES costs the server


@pytest.fixture
def server(tmp_path: Any, ring_impl: Any) -> Iterator[tuple[VhostUserServer, MemoryDiskBackend, Any]]:
    disk = MemoryDiskBackend(1 << 20)
    device = VirtioBlkDevice(GuestMemory(), disk, queue_size=64,
                             queue_factory=lambda size, packed: Virtqueue(size, packed=packed, ring=ring_impl))
    path = tmp_path / "vu.sock"
    with VhostUserServer(device, path) as served:
        served.start()
        yield served, disk, path
    disk.close()


def connect(path: Any, ram: SharedRam) -> FakeFrontEnd:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return FakeFrontEnd(sock, ram, timeout=5.0)


def start(fe: FakeFrontEnd, ram: SharedRam) -> Any:
    """Handshake, and ring 0 as a split ring; returns its driver."""
    features = blk_features(fe, False)
    fe.handshake(features)
    driver = make_driver(ram.memory, 64, base=0x100000, event_idx=bool(features >> VIRTIO_F_EVENT_IDX & 1))
    fe.setup_ring(0, driver)
    return driver


def write_and_wait(fe: FakeFrontEnd, driver: Any, sector: int, timeout: float) -> bool:
    driver.add([VIRTIO_BLK_REQ_HDR.pack(VIRTIO_BLK_T_OUT, 0, sector), b"x" * 512], [1])
    if driver.kick():
        fe.kick(0)
    return fe.wait_call(0, timeout=timeout)


def test_replies_nobody_reads_do_not_stall_the_rings(server):
    served, disk, path = server
    ram = SharedRam.create()
    fe = connect(path, ram)
    driver = start(fe, ram)
    # More replies than the socket buffers, fewer bytes than the bound: the server keeps
    # them queued and goes on serving.
    count = OUT_LIMIT // REPLY // 2
    fe.sock.sendall(GET_FEATURES * count)
    started = time.monotonic()
    assert write_and_wait(fe, driver, 0, timeout=2.0), "the ring stalled behind unread replies"
    assert time.monotonic() - started < 2.0
    assert served.connected and served.last_error is None
    # The front-end reads at last: every reply is there, in order, then the session goes on.
    for _ in range(count):
        assert fe.recv().request == VHOST_USER_GET_FEATURES
    assert fe.get_queue_num() == 1
    fe.close()
    ram.close()


def test_a_front_end_that_never_reads_is_disconnected_and_the_next_one_served(server):
    served, disk, path = server
    ram = SharedRam.create()
    fe = connect(path, ram)
    start(fe, ram)
    fe.sock.setblocking(False)
    with RecordingSink("vhost_user.connection") as rec:
        started = time.monotonic()
        sent = 0
        while served.connected and time.monotonic() - started < 5.0:
            try:
                sent += fe.sock.send(GET_FEATURES * 256)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break  # the server closed the connection
        wait_until(lambda: not served.connected, timeout=3.0)
        elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"disconnected after {elapsed:.1f} s"
    assert served.last_error is not None and "unread" in served.last_error
    assert ("vhost_user.connection", {"event": "disconnect", "reason": served.last_error}) in rec.events
    assert sent // len(GET_FEATURES) * REPLY > OUT_LIMIT  # it was the bound, not a timeout
    fe.close()
    # The next front-end attaches on the same path and works.
    other = connect(path, ram)
    driver = start(other, ram)
    assert write_and_wait(other, driver, 8, timeout=2.0)
    assert served.sessions == 2
    other.close()
    ram.close()
