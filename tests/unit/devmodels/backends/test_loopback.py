from __future__ import annotations

import select
import struct

import pytest

from devmodels import UsageError
from devmodels.backends import NetOffloads
from devmodels.backends.net import LoopbackBackend, VirtioNetHdr, parse_ipv4, parse_mac, udp_frame
from devmodels.backends.net._packets import VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_frames_cross_in_order_both_ways():
    a, b = LoopbackBackend.pair()
    for i in range(5):
        assert a.send(bytes([i]) * 60)
    assert b.send(bytearray(b"reply" * 12))
    assert b.receive() == [bytes([i]) * 60 for i in range(5)]
    assert a.receive() == [b"reply" * 12]
    assert b.receive() == [] and a.dropped == b.dropped == 0
    a.close()
    b.close()


def test_receive_limit():
    a, b = LoopbackBackend.pair()
    for i in range(10):
        a.send(bytes([i]))
    assert b.receive(3) == [b"\0", b"\1", b"\2"]
    assert b.pending == 7
    assert len(b.receive(100)) == 7


@pytest.mark.parametrize(
    "overflow, kept, sent_ok",
    [
        ("drop-newest", [0, 1, 2], [True] * 5),
        ("drop-oldest", [2, 3, 4], [True] * 5),
        ("backpressure", [0, 1, 2], [True, True, True, False, False]),
    ],
)
def test_overflow_policies(overflow, kept, sent_ok):
    a, b = LoopbackBackend.pair(capacity=3, overflow=overflow)
    results = [a.send(bytes([i])) for i in range(5)]
    assert results == sent_ok
    assert b.receive() == [bytes([i]) for i in kept]
    assert b.dropped == (0 if overflow == "backpressure" else 2)
    assert a.dropped == 0


def test_fileno_readable_while_frames_wait():
    a, b = LoopbackBackend.pair()
    fd = b.fileno()
    assert fd is not None and not readable(fd)
    a.send(b"one")
    a.send(b"two")
    assert readable(fd)
    b.receive(1)
    assert readable(fd)
    b.receive()
    assert not readable(fd)


def test_notify_on_arrival():
    a, b = LoopbackBackend.pair()
    calls = []
    b.set_notify(lambda: calls.append(1))
    a.send(b"x")
    a.send(b"y")
    assert calls == [1]  # once per empty -> non-empty
    b.receive()
    a.send(b"z")
    assert calls == [1, 1]
    b.set_notify(lambda: 1 / 0)
    b.receive()
    assert a.send(b"hook failure is contained")


def test_peer_closed_drops_and_closed_end_refuses():
    a, b = LoopbackBackend.pair()
    b.close()
    assert a.send(b"lost") and a.dropped == 1
    with pytest.raises(UsageError):
        b.send(b"x")
    with pytest.raises(UsageError):
        b.receive()
    assert b.fileno() is None
    b.close()


def test_bad_arguments():
    with pytest.raises(UsageError):
        LoopbackBackend.pair(capacity=0)
    with pytest.raises(UsageError):
        LoopbackBackend.pair(overflow="explode")  # type: ignore[arg-type]
    a, _ = LoopbackBackend.pair()
    assert not a.offloads.any
    with pytest.raises(UsageError):
        a.set_vnet_hdr(True)
    a.set_vnet_hdr(False)


MAC_A = parse_mac("52:54:00:00:00:01")
MAC_B = parse_mac("02:00:00:00:00:02")
IP_A = parse_ipv4("10.0.0.1")
IP_B = parse_ipv4("10.0.0.2")


def test_vnet_header_conversions():
    a, b = LoopbackBackend.pair(offloads=NetOffloads(csum=True, tso4=True))
    frame = udp_frame(MAC_B, MAC_A, IP_A, IP_B, 1, 2, b"hello")
    a.set_vnet_hdr(True)
    # header -> header: passed through untouched
    b.set_vnet_hdr(True)
    header = VirtioNetHdr(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=6).pack()
    partial = bytearray(frame)
    partial[40:42] = b"\0\0"
    a.send(header + bytes(partial))
    assert b.receive() == [header + bytes(partial)]
    # header -> plain: the header goes, a partial checksum is finished
    b.set_vnet_hdr(False)
    a.send(VirtioNetHdr().pack() + frame)
    assert b.receive() == [frame]
    pseudo = IP_A + IP_B + struct.pack("!BBH", 0, 17, 8 + len(b"hello"))
    words = sum(w for (w,) in struct.iter_unpack("!H", pseudo))
    partial[40:42] = ((words & 0xFFFF) + (words >> 16)).to_bytes(2, "big")
    a.send(header + bytes(partial))
    assert b.receive() == [frame]
    # GSO cannot be delivered to a plain end
    a.send(VirtioNetHdr(gso_type=VIRTIO_NET_HDR_GSO_TCPV4, gso_size=1000).pack() + frame)
    assert b.receive() == [] and b.dropped == 1
    # plain -> header: a zero header is added
    b.set_vnet_hdr(True)
    a.set_vnet_hdr(False)
    a.send(frame)
    assert b.receive() == [bytes(12) + frame]
    # a header-mode sender with less than a header
    a.set_vnet_hdr(True)
    assert a.send(b"short") and a.dropped == 1
