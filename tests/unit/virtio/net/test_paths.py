"""virtio-net receive filter, flow steering, scatter, and the transmit helpers."""

from __future__ import annotations

import struct

from devmodels import GuestMemory, MemoryRegion
from devmodels.backends.net import ethernet_frame, parse_ipv4, parse_mac, udp_frame
from virtio.net.defs import (
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
)
from virtio.net.layouts import VIRTIO_NET_HDR
from virtio.net.rx import MAC_TABLE_MAX, RxFilter, flow_key, scatter
from virtio.net.tx import prepare_frame, read_packet

MAC = parse_mac("52:54:00:12:34:56")
OTHER = parse_mac("52:54:00:00:00:01")
A, B = parse_ipv4("10.0.0.1"), parse_ipv4("10.0.0.2")


def frame(dst: bytes) -> bytes:
    return ethernet_frame(dst, OTHER, 0x88B5, bytes(46))


def test_filter_modes():
    f = RxFilter(MAC)
    assert f.accepts(frame(OTHER), mac_filter=True, vlan_filter=False)  # promiscuous after reset
    f.promisc = False
    assert not f.accepts(frame(OTHER), mac_filter=True, vlan_filter=False)
    assert f.accepts(frame(OTHER), mac_filter=False, vlan_filter=False)  # CTRL_RX not negotiated
    assert f.accepts(frame(MAC), mac_filter=True, vlan_filter=False)
    f.nouni = True
    assert not f.accepts(frame(MAC), mac_filter=True, vlan_filter=False)
    f.set_tables([OTHER] * (MAC_TABLE_MAX + 1), [])
    assert f.uni_overflow and f.uni == []
    assert not f.accepts(b"short", mac_filter=False, vlan_filter=False)


def test_flow_key_is_symmetric():
    there = udp_frame(OTHER, MAC, A, B, 1000, 53, b"q")
    back = udp_frame(MAC, OTHER, B, A, 53, 1000, b"a")
    other = udp_frame(MAC, OTHER, B, A, 53, 1001, b"a")
    assert flow_key(there) == flow_key(back) != flow_key(other)
    assert flow_key(frame(MAC)) is None


def test_scatter_fills_every_chain_but_the_last():
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 16)])

    class C:
        def __init__(self, writable):
            self.writable = writable

    chains = [C([(0x100, 5), (0x200, 5)]), C([(0x300, 100)])]
    assert scatter(memory, chains, bytes(range(30))) == [10, 20]
    assert memory.read(0x200, 5) == bytes(range(5, 10)) and memory.read(0x300, 20) == bytes(range(10, 30))


def test_prepare_frame_rules():
    body = ethernet_frame(OTHER, MAC, 0x0800, bytes(100))
    plain = VIRTIO_NET_HDR.pack(0, 0, 0, 0, 0, 0, 7)
    assert prepare_frame(bytearray(plain + body), 0, False) == body
    gso = VIRTIO_NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16, 7)
    assert isinstance(prepare_frame(bytearray(gso + body), 0, True), str)  # HOST_TSO4 not negotiated
    out = prepare_frame(bytearray(gso + body), 1 << VIRTIO_NET_F_HOST_TSO4, True)
    assert bytes(out)[10:12] == b"\0\0" and bytes(out)[12:] == body  # num_buffers cleared
    ecn = VIRTIO_NET_HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 0, 0, 0, 0, 0)
    assert isinstance(prepare_frame(bytearray(ecn + body), 1 << VIRTIO_NET_F_HOST_TSO4, True), str)
    bad_csum = VIRTIO_NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 200, 6, 0)
    assert isinstance(prepare_frame(bytearray(bad_csum + body), 0, False), str)
    assert isinstance(prepare_frame(bytearray(plain + b"\0" * 10), 0, False), str)  # runt


def test_read_packet_bounds():
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])

    class C:
        def __init__(self, readable):
            self.readable = readable
            self.readable_len = sum(n for _, n in readable)

    memory.write(0x100, b"abc")
    assert read_packet(C([(0x100, 8), (0x200, 8)]), memory)[:3] == b"abc"
    assert isinstance(read_packet(C([(0x100, 11)]), memory), str)
    assert isinstance(read_packet(C([(0x0, 0x10000 + 13)]), memory), str)
    assert isinstance(read_packet(C([(1 << 20, 64)]), memory), str)
    assert struct.calcsize("<BBHHHHH") == 12
