"""virtio-net device (VIRTIO 1.2 §5.1) against the driver simulator, both ring layouts and
both ring implementations, on an in-memory loopback wire with a responder at the far end."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devmodels import GuestMemory, MemoryRegion, UsageError
from devmodels.backends import LoopbackBackend, NetOffloads
from devmodels.backends.net import (
    Responder,
    arp_frame,
    ethernet_frame,
    icmp_echo_frame,
    internet_checksum,
    parse_ipv4,
    parse_mac,
    udp_frame,
)
from devmodels._trace import RecordingSink
from virtio.defs import VIRTIO_F_RING_PACKED
from virtio.device import RecordingTransport
from virtio.net import VirtioNetDevice, virtio_net_config
from virtio.net.defs import (
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI,
    VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_ERR,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_OK,
    VIRTIO_NET_S_LINK_UP,
)
from virtio.net.layouts import VIRTIO_NET_HDR
from virtio.net.testing import NetDriver
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS
from virtio.testing import make_driver

GUEST_MAC = parse_mac("52:54:00:12:34:56")
GUEST_IP = parse_ipv4("10.0.2.15")
PEER_MAC = parse_mac("02:00:00:00:00:fe")
PEER_IP = parse_ipv4("10.0.2.2")


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def queue_factory(request: pytest.FixtureRequest) -> Callable[[int, bool], Any]:
    ring = IMPLEMENTATIONS[request.param]
    return lambda size, packed: Virtqueue(size, packed=packed, ring=ring)


@pytest.fixture(params=[False, True], ids=["split", "packed"])
def packed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory([MemoryRegion.from_bytearray(0, 16 << 20)])
    yield mem
    mem.close()


@pytest.fixture
def wire() -> Iterator[tuple[LoopbackBackend, LoopbackBackend]]:
    ours, theirs = LoopbackBackend.pair()
    yield ours, theirs
    ours.close()
    theirs.close()


def make(memory, backend, queue_factory, packed, *, drop: int = 0, driver_kwargs=None, **kwargs):
    device = VirtioNetDevice(memory, backend, queue_size=64, queue_factory=queue_factory, **kwargs)
    device.attach(RecordingTransport())
    accept = device.features.offered & ~drop
    if not packed:
        accept &= ~(1 << VIRTIO_F_RING_PACKED)
    return device, NetDriver(device, accept=accept, **(driver_kwargs or {}))


def arp_request() -> bytes:
    return arp_frame(1, GUEST_MAC, GUEST_IP, bytes(6), PEER_IP)


def test_arp_and_ping_with_the_responder(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed)
    responder = Responder(theirs, "10.0.2.2")
    driver.send(arp_request())
    assert driver.reap_tx() == [0]
    assert responder.poll() == 1
    device.poll_rx()
    (reply,) = driver.received()
    assert reply.frame[:6] == GUEST_MAC and reply.frame[12:14] == b"\x08\x06"
    assert reply.num_buffers == 1 and reply.flags == 0
    for seq in range(3):
        driver.send(icmp_echo_frame(PEER_MAC, GUEST_MAC, GUEST_IP, PEER_IP, 7, seq, b"x" * 100))
        responder.poll()
        device.poll_rx()
        (echo,) = driver.received()
        assert echo.frame[34] == 0  # ICMP echo reply
    assert responder.stats().icmp_replies == 3
    assert device.stats.tx_frames == 4 and device.stats.rx_frames == 4


def test_config_space(memory, wire, queue_factory):
    device = VirtioNetDevice(memory, wire[0], queue_pairs=2, mtu=9000, queue_factory=queue_factory)
    config = virtio_net_config.parse(bytes(device.config))
    assert config.mac == GUEST_MAC and config.status == VIRTIO_NET_S_LINK_UP
    assert config.max_virtqueue_pairs == 2 and config.mtu == 9000
    assert device.num_queues == 5
    assert not device.features.offered >> VIRTIO_NET_F_CSUM & 1  # the loopback carries no offloads
    transport = RecordingTransport()
    device.attach(transport)
    NetDriver(device)
    device.set_link(False)
    assert not device.link_up and transport.config == 1


@pytest.mark.parametrize("framing", [{}, {"split": [5, 7]}, {"split": [12, 6, 8]}, {"indirect": True}],
                         ids=["plain", "header-split", "frame-split", "indirect"])
def test_transmit_any_framing(memory, wire, queue_factory, packed, framing):
    ours, theirs = wire
    _, driver = make(memory, ours, queue_factory, packed)
    frame = ethernet_frame(PEER_MAC, GUEST_MAC, 0x88B5, bytes(range(200)))
    driver.send(frame, **framing)
    assert theirs.receive() == [frame]


def test_transmit_too_short_or_too_long_is_returned_with_length_zero(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, driver_kwargs={"data_size": 1 << 18})
    driver.send(b"", raw=[bytes(11)])
    big = driver.rings[1].alloc(0x10000 + 13)
    driver.send(b"", raw=[(big, 0x10000 + 13)])
    driver.send(b"", raw=[(memory.size + 0x1000, 64)])  # outside guest RAM
    assert driver.reap_tx() == [0, 0, 0]
    assert theirs.receive() == []
    assert device.stats.tx_errors == 3


def test_transmit_partial_checksum_is_completed_without_offloads(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed)
    complete = udp_frame(PEER_MAC, GUEST_MAC, GUEST_IP, PEER_IP, 1234, 7, b"hello world")
    partial = bytearray(complete)
    # Replace the UDP checksum with the pseudo-header sum, as a driver with CSUM would.
    udp_len = len(complete) - 34
    pseudo = GUEST_IP + PEER_IP + struct.pack("!BBH", 0, 17, udp_len)
    partial[40:42] = struct.pack("!H", (~internet_checksum(pseudo)) & 0xFFFF)
    header = VIRTIO_NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6, 0)
    driver.send(bytes(partial), header=header)
    (sent,) = theirs.receive()
    assert internet_checksum(pseudo + sent[34:]) == 0
    gso = VIRTIO_NET_HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 0, 0, 0)
    driver.send(complete, header=gso)  # no offloads were offered: cannot be segmented
    assert theirs.receive() == [] and device.stats.tx_dropped == 1


def test_receive_holds_frames_without_buffers_bounded(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, rx_hold=4, driver_kwargs={"rx_buffers": 0})
    frames = [ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes([i]) * 60) for i in range(6)]
    for frame in frames:
        theirs.send(frame)
    assert device.wants_rx
    device.poll_rx()
    assert device.held == 4 and not device.wants_rx  # the VMM stops reading: no spinning
    assert device.poll_rx() == 0
    assert ours.pending == 2  # the rest waits in the backend
    driver.post_rx(0, 8)  # the driver adds buffers: the notify delivers what was held
    assert [p.frame for p in driver.received()] == frames[:4]
    assert device.wants_rx
    device.poll_rx()
    assert [p.frame for p in driver.received()] == frames[4:]


def test_receive_without_mrg_drops_frames_too_big_for_the_buffer(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, drop=1 << VIRTIO_NET_F_MRG_RXBUF, mtu=None,
                          driver_kwargs={"rx_buffers": 2, "rx_buffer_size": 512})
    big = ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(1000))
    small = ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(100))
    theirs.send(big)
    theirs.send(small)
    device.poll_rx()
    assert [p.frame for p in driver.received()] == [small]
    assert device.stats.rx_dropped == 1


def test_spec_5_1_6_4_mergeable_buffers(memory, wire, queue_factory, packed):
    ours, theirs = wire
    _, driver = make(memory, ours, queue_factory, packed, driver_kwargs={"rx_buffers": 16, "rx_buffer_size": 256})
    frame = ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(range(256)) * 4)
    theirs.send(frame)
    driver.device.poll_rx()
    (packet,) = driver.received()
    assert packet.num_buffers == 5 and packet.frame == frame  # 12 + 1038 bytes over 256-byte buffers


def test_mergeable_waits_for_enough_buffers(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, driver_kwargs={"rx_buffers": 2, "rx_buffer_size": 256})
    frame = ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(1000))
    theirs.send(frame)
    device.poll_rx()
    assert driver.received() == [] and device.held == 1
    driver.post_rx(0, 4, size=256)
    (packet,) = driver.received()
    assert packet.frame == frame


def test_mtu_is_enforced_on_receive(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, mtu=576)
    theirs.send(ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(600)))
    theirs.send(ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(500)))
    device.poll_rx()
    assert [len(p.frame) for p in driver.received()] == [514]


def test_receive_filtering_through_the_control_queue(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed)
    other = parse_mac("52:54:00:aa:bb:cc")
    mcast = parse_mac("01:00:5e:00:00:01")

    def deliver(*dsts: bytes) -> list[bytes]:
        for dst in dsts:
            theirs.send(ethernet_frame(dst, PEER_MAC, 0x88B5, bytes(50)))
        device.poll_rx()
        return [p.frame[:6] for p in driver.received()]

    assert deliver(other, mcast) == [other, mcast]  # promiscuous after reset
    assert driver.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\0") == VIRTIO_NET_OK
    assert deliver(other, mcast, GUEST_MAC, b"\xff" * 6) == [GUEST_MAC, b"\xff" * 6]
    table = struct.pack("<I", 1) + other + struct.pack("<I", 1) + mcast
    assert driver.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, table) == VIRTIO_NET_OK
    assert deliver(other, mcast, parse_mac("01:00:5e:00:00:02")) == [other, mcast]
    assert driver.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, b"\1") == VIRTIO_NET_OK
    assert deliver(parse_mac("01:00:5e:00:00:02")) == [parse_mac("01:00:5e:00:00:02")]
    assert driver.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST, b"\1") == VIRTIO_NET_OK
    assert deliver(b"\xff" * 6) == []
    assert device.stats.rx_filtered >= 4


def test_vlan_filter(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed)

    def tagged(vid: int) -> bytes:
        return GUEST_MAC + PEER_MAC + struct.pack("!HH", 0x8100, vid) + b"\x88\xb5" + bytes(50)

    theirs.send(tagged(5))
    device.poll_rx()
    assert driver.received() == []  # §5.1.6.5.3: the table starts empty
    assert driver.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", 5)) == VIRTIO_NET_OK
    assert driver.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", 4096)) == VIRTIO_NET_ERR
    theirs.send(tagged(5))
    theirs.send(tagged(6))
    device.poll_rx()
    assert [p.frame for p in driver.received()] == [tagged(5)]


@pytest.mark.parametrize(
    "klass, command, data",
    [
        (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b""),
        (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\2"),
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, struct.pack("<I", 2) + bytes(6)),
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, struct.pack("<II", 0, 0) + b"x"),
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, bytes(5)),
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 1)),  # MQ not offered
        (99, 0, b""),
    ],
)
def test_bad_control_commands_are_acked_err(memory, wire, queue_factory, klass, command, data):
    device, driver = make(memory, wire[0], queue_factory, False)
    assert driver.command(klass, command, data) == VIRTIO_NET_ERR
    assert driver.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\0", ack_len=0) is None


def test_mac_address_set_updates_config(memory, wire, queue_factory):
    device, driver = make(memory, wire[0], queue_factory, False)
    new = parse_mac("52:54:00:00:00:42")
    assert driver.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, new) == VIRTIO_NET_OK
    assert bytes(device.config[:6]) == new
    device.write_status(0)
    assert bytes(device.config[:6]) == GUEST_MAC


def test_multiqueue_steering_follows_the_transmit_queue(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, queue_pairs=2)
    assert driver.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 3)) == VIRTIO_NET_ERR
    assert driver.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 2)) == VIRTIO_NET_OK
    assert device.active_pairs == 2
    out = udp_frame(PEER_MAC, GUEST_MAC, GUEST_IP, PEER_IP, 5555, 7, b"ping")
    driver.send(out, pair=1)
    assert theirs.receive() == [out]
    back = udp_frame(GUEST_MAC, PEER_MAC, PEER_IP, GUEST_IP, 7, 5555, b"pong")
    theirs.send(back)
    device.poll_rx()
    assert driver.received(0) == []
    assert [p.frame for p in driver.received(1)] == [back]


def test_offloads_pass_through_with_a_header_carrying_backend(memory, queue_factory, packed):
    ours, theirs = LoopbackBackend.pair(offloads=NetOffloads(csum=True, tso4=True))
    try:
        device, driver = make(memory, ours, queue_factory, packed)
        for bit in (VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_TSO4):
            assert device.has_feature(bit)
        assert device.vnet
        theirs.set_vnet_hdr(True)
        frame = ethernet_frame(PEER_MAC, GUEST_MAC, 0x0800, bytes(3000))
        gso = VIRTIO_NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16, 0)
        driver.send(frame, header=gso)
        (sent,) = theirs.receive()
        assert sent[:10] == gso[:10] and sent[12:] == frame
        theirs.send(gso + frame)
        device.poll_rx()
        (packet,) = driver.received()
        assert packet.gso_type == VIRTIO_NET_HDR_GSO_TCPV4 and packet.frame == frame
    finally:
        ours.close()
        theirs.close()


def test_feature_dependencies_are_enforced(memory, wire, queue_factory):
    ours, _ = LoopbackBackend.pair(offloads=NetOffloads(csum=True, tso4=True))
    device = VirtioNetDevice(memory, ours, queue_factory=queue_factory)
    from virtio.testing import FeaturesRefused, negotiate

    accept = device.features.offered & ~(1 << VIRTIO_NET_F_GUEST_CSUM)
    with pytest.raises(FeaturesRefused, match="feature 7 needs"):  # §5.1.3.1: GUEST_TSO4 requires GUEST_CSUM
        negotiate(device, accept)
    assert negotiate(device, accept & ~(1 << VIRTIO_NET_F_GUEST_TSO4))
    ours.close()


def test_reset_drops_held_frames_and_filters(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, driver_kwargs={"rx_buffers": 0})
    driver.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\0")
    theirs.send(ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(50)))
    device.poll_rx()
    assert device.held == 1
    device.write_status(0)
    assert device.held == 0 and device.rx_filter.promisc and not device.wants_rx


def test_snapshot_roundtrip(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, driver_kwargs={"rx_buffers": 2, "rx_buffer_size": 128})
    driver.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\0")
    driver.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", 7))
    theirs.send(ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(1000)))  # needs more than 2 buffers
    device.poll_rx()
    with pytest.raises(UsageError):
        device.state()
    device.flush_rx()
    state = device.state()
    other = VirtioNetDevice(memory, ours, queue_size=64, queue_factory=queue_factory)
    other.restore(state)
    assert other.state() == state
    assert not other.rx_filter.promisc and other.rx_filter.vlans[0] == 1 << 7


def test_drops_are_traced(memory, wire, queue_factory):
    device, driver = make(memory, wire[0], queue_factory, False)
    with RecordingSink("virtio.net.*") as sink:
        driver.send(b"", raw=[bytes(4)])
    assert sink.names() == ["virtio.net.tx_drop"]


def test_bad_arguments(memory, wire):
    with pytest.raises(UsageError):
        VirtioNetDevice(memory, wire[0], mac=parse_mac("01:00:00:00:00:01"))
    with pytest.raises(UsageError):
        VirtioNetDevice(memory, wire[0], queue_pairs=0)
    with pytest.raises(UsageError):
        VirtioNetDevice(memory, wire[0], mtu=10)


# -- queues stopped and started by their transport (vhost-user GET_VRING_BASE / SET_VRING_*) --


def received_frames(driver: NetDriver) -> list[bytes]:
    return [p.frame for p in driver.received(repost=False)]


def test_a_stopped_receive_queue_gives_back_the_buffers_it_took(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, driver_kwargs={"rx_buffers": 8})
    frames = [ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes([n]) * 60) for n in range(9)]
    theirs.send(frames[0])
    device.poll_rx()
    assert received_frames(driver) == frames[:1]
    queue = device.queues[0]
    assert queue.in_flight == 7  # taken ahead of frames
    device.stop_queue(0)  # vhost-user GET_VRING_BASE: the base must not count them
    assert queue.in_flight == 0 and not queue.ready
    device.start_queue(0, dataclasses.replace(queue.state(), ready=True))  # started from that base
    for frame in frames[1:]:
        theirs.send(frame)
    device.poll_rx()
    assert received_frames(driver) == frames[1:8]  # every buffer the driver posted was used
    assert device.held == 1  # the ninth waits for a buffer: none was lost


def test_a_receive_queue_started_again_never_uses_chains_of_the_old_ring(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, driver_kwargs={"rx_buffers": 8})
    theirs.send(ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(60)))
    device.poll_rx()
    assert len(driver.received(repost=False)) == 1 and device.queues[0].in_flight == 7
    # The guest reset the device behind the front-end (vhost-user: the rings start again
    # from base 0 on fresh memory, without a device reset or a stop the back-end saw).
    fresh = make_driver(memory, 64, packed=packed, base=0x80_0000, event_idx=True)
    state = device.queues[0].state()
    device.start_queue(0, dataclasses.replace(
        state, size=64, desc_addr=fresh.layout.desc_addr, driver_addr=fresh.layout.driver_addr,
        device_addr=fresh.layout.device_addr, next_avail=0, next_used=0, avail_wrap=True, used_wrap=True,
        inflight=(), ready=True))
    fresh.add((), [1526])
    if fresh.kick():
        device.notify_queue(0)
    frame = ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(range(60)))
    theirs.send(frame)
    device.poll_rx()  # the old ring's chains are gone with their epoch
    (used,) = fresh.reap()
    assert used.read(memory)[VIRTIO_NET_HDR.size :] == frame


def test_recheck_delivers_held_frames_into_buffers_posted_without_a_notification(memory, wire, queue_factory, packed):
    ours, theirs = wire
    device, driver = make(memory, ours, queue_factory, packed, driver_kwargs={"rx_buffers": 0})
    rx = driver.rings[0]
    device.recheck()
    theirs.send(ethernet_frame(GUEST_MAC, PEER_MAC, 0x88B5, bytes(60)))
    device.poll_rx()
    assert device.held == 1
    rx.add((), [2048])
    rx.kick()  # the notification is lost (the driver's stale view of avail_event)
    device.recheck()
    assert device.held == 0 and len(received_frames(driver)) == 1
    rx.add((), [2048])
    rx.kick()
    device.recheck()  # no frame waits: the buffer stays in the ring, untouched
    assert device.queues[0].in_flight == 0
