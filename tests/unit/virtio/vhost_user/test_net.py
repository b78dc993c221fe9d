"""virtio-net over vhost-user with the fake front-end, and the event-loop glue."""

from __future__ import annotations

import socket

import pytest

from devmodels import GuestMemory
from devmodels.backends import LoopbackBackend, MemoryDiskBackend
from devmodels.backends.net import ethernet_frame, parse_mac
from virtio.blk import VirtioBlkDevice
from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED
from virtio.net import VirtioNetDevice
from virtio.net.defs import VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_SIZE
from virtio.queue import Virtqueue
from virtio.testing import make_driver
from virtio.transport.testing import EchoDevice
from virtio.vhost_user import BlockGlue, NetGlue, NullGlue, VhostUserServer, glue_for
from virtio.vhost_user.defs import VHOST_USER_PROTOCOL_F_CONFIG
from virtio.vhost_user.testing import FakeFrontEnd, SharedRam

from .conftest import wait_until

GUEST = parse_mac("52:54:00:12:34:56")
PEER = parse_mac("02:00:00:00:00:fe")


@pytest.fixture
def net(ring_impl):
    ours, theirs = LoopbackBackend.pair()
    device = VirtioNetDevice(
        GuestMemory(), ours, queue_size=64, ctrl_vq=False,
        queue_factory=lambda size, packed: Virtqueue(size, packed=packed, ring=ring_impl),
    )
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = VhostUserServer(device)
    server.adopt(a)
    server.start()
    ram = SharedRam.create()
    frontend = FakeFrontEnd(b, ram, timeout=5.0)
    yield device, frontend, theirs, ram
    frontend.close()
    server.close()
    ram.close()
    ours.close()
    theirs.close()


def test_frames_both_ways(net, packed):
    device, fe, peer, ram = net
    assert fe.get_queue_num() == 1  # queue pairs, as QEMU's vhost-user net expects
    assert not fe.get_protocol_features() >> VHOST_USER_PROTOCOL_F_CONFIG & 1
    features = fe.get_features()
    if not packed:
        features &= ~(1 << VIRTIO_F_RING_PACKED)
    fe.handshake(features)
    event_idx = bool(features >> VIRTIO_F_EVENT_IDX & 1)
    rx = make_driver(ram.memory, 64, packed=packed, base=0x100000, event_idx=event_idx)
    tx = make_driver(ram.memory, 64, packed=packed, base=0x400000, event_idx=event_idx)
    fe.setup_ring(0, rx)
    fe.setup_ring(1, tx)
    # Transmit: header + frame.
    frame = ethernet_frame(PEER, GUEST, 0x88B5, bytes(range(100)))
    tx.add([bytes(VIRTIO_NET_HDR_SIZE), frame], ())
    if tx.kick():
        fe.kick(1)
    assert fe.wait_call(1)
    assert [u.written for u in tx.reap()] == [0]
    assert peer.receive() == [frame]  # sent before the chain was returned
    # Receive: nothing posted yet, so the frame is held and the backend is not watched.
    back = ethernet_frame(GUEST, PEER, 0x88B5, bytes(range(60)))
    peer.send(back)
    wait_until(lambda: device.held == 1)
    for _ in range(4):
        rx.add((), [2048])
    if rx.kick():
        fe.kick(0)
    assert fe.wait_call(0)
    (used,) = rx.reap()
    data = used.read(ram.memory)
    assert data[VIRTIO_NET_HDR_SIZE:] == back
    assert int.from_bytes(data[10:12], "little") == 1  # num_buffers (§5.1.6.4.2)
    assert device.stats.rx_frames == 1 and bool(features >> VIRTIO_NET_F_MRG_RXBUF & 1)


def test_glue_for_each_device_kind():
    memory = GuestMemory()
    disk = MemoryDiskBackend(4096)
    blk = glue_for(VirtioBlkDevice(memory, disk))
    assert isinstance(blk, BlockGlue) and len(blk.sources()) == 1
    blk.close()
    ours, theirs = LoopbackBackend.pair()
    device = VirtioNetDevice(memory, ours)
    glue = glue_for(device)
    assert isinstance(glue, NetGlue)
    assert glue.sources() == {}  # not live: the backend is not watched (no spinning)
    glue.close()
    assert isinstance(glue_for(EchoDevice(memory)), NullGlue)
    ours.close()
    theirs.close()
    disk.close()


def test_any_virtio_device_can_be_served(ring_impl):
    """The echo test device of the transport layer, over vhost-user."""
    device = EchoDevice(GuestMemory(), queues=1, queue_size=64,
                        queue_factory=lambda size, packed: Virtqueue(size, packed=packed, ring=ring_impl))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with VhostUserServer(device) as server:
        server.adopt(a)
        server.start()
        ram = SharedRam.create()
        fe = FakeFrontEnd(b, ram, timeout=5.0)
        features = fe.get_features()
        fe.handshake(features)
        ring = make_driver(ram.memory, 64, base=0x100000, event_idx=bool(features >> VIRTIO_F_EVENT_IDX & 1),
                           packed=bool(features >> VIRTIO_F_RING_PACKED & 1))
        fe.setup_ring(0, ring)
        ring.add([b"hello"], [16])
        if ring.kick():
            fe.kick(0)
        assert fe.wait_call(0)
        (used,) = ring.reap()
        assert used.read(ram.memory) == b"hello"
        fe.close()
        ram.close()
