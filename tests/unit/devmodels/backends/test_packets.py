from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import UsageError
from devmodels.backends.net import (
    VNET_HDR_SIZE,
    VirtioNetHdr,
    arp_frame,
    finish_checksum,
    format_mac,
    icmp_echo_frame,
    internet_checksum,
    parse_ipv4,
    parse_mac,
    strip_vnet_header,
    udp_frame,
)
from devmodels.backends.net._packets import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    Ipv4,
    parse_ipv4_frame,
)
from tests.prerequisites import missing

MAC_A = parse_mac("52:54:00:00:00:01")
MAC_B = parse_mac("02:00:00:00:00:02")
IP_A = parse_ipv4("10.1.0.1")
IP_B = parse_ipv4("10.1.0.2")


def reference_checksum(data: bytes) -> int:
    """RFC 1071 written the obvious way: add 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_checksum_matches_reference(data):
    assert internet_checksum(data) == reference_checksum(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=2, max_size=200).filter(lambda d: len(d) % 2 == 0))
def test_checksum_verifies_to_zero(data):
    with_sum = data + internet_checksum(data).to_bytes(2, "big")
    assert internet_checksum(with_sum) == 0


def test_checksum_known_values():
    # RFC 1071 §3 example words 0001 f203 f4f5 f6f7: sum ddf2, checksum 220d.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0x0000
    assert internet_checksum(b"\0\0") == 0xFFFF


def test_addresses():
    assert format_mac(parse_mac("52:54:00:ab:cd:ef")) == "52:54:00:ab:cd:ef"
    assert parse_mac(b"123456") == b"123456"
    assert parse_ipv4("192.168.1.2") == bytes([192, 168, 1, 2])
    for bad in ("52:54", "zz:54:00:ab:cd:ef", "5254:00:ab:cd:ef:00"):
        with pytest.raises(UsageError):
            parse_mac(bad)
    for bad in ("1.2.3", "256.1.1.1", b"123"):
        with pytest.raises(UsageError):
            parse_ipv4(bad)


def test_frames_are_well_formed():
    frame = udp_frame(MAC_B, MAC_A, IP_A, IP_B, 1000, 2000, b"payload!")
    packet = parse_ipv4_frame(frame)
    assert isinstance(packet, Ipv4)
    assert (packet.src, packet.dst, packet.proto) == (IP_A, IP_B, 17)
    src_port, dst_port, length, _ = struct.unpack_from("!HHHH", packet.payload)
    assert (src_port, dst_port, length) == (1000, 2000, 16)
    pseudo = IP_A + IP_B + struct.pack("!BBH", 0, 17, length)
    assert reference_checksum(pseudo + packet.payload) == 0
    assert len(frame) == 60  # padded to the Ethernet minimum
    arp = arp_frame(1, MAC_A, IP_A, bytes(6), IP_B)
    assert arp[:6] == b"\xff" * 6 and arp[12:14] == b"\x08\x06"
    icmp = icmp_echo_frame(MAC_B, MAC_A, IP_A, IP_B, 7, 9, b"x" * 100)
    packet = parse_ipv4_frame(icmp)
    assert isinstance(packet, Ipv4) and reference_checksum(packet.payload) == 0


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda f: f[:30], "ipv4-malformed"),
        (lambda f: f[:14] + b"\x65" + f[15:], "ipv4-malformed"),  # version 6
        (lambda f: f[:14] + b"\x44" + f[15:], "ipv4-malformed"),  # IHL 4
        (lambda f: f[:16] + b"\xff\xff" + f[18:], "ipv4-malformed"),  # total length too big
        (lambda f: f[:24] + bytes([f[24] ^ 1]) + f[25:], "ipv4-checksum"),
    ],
)
def test_ipv4_parser_rejects(mutate, reason):
    frame = udp_frame(MAC_B, MAC_A, IP_A, IP_B, 1, 2, b"abc")
    assert parse_ipv4_frame(mutate(frame)) == reason


def test_ipv4_parser_rejects_fragments():
    frame = bytearray(udp_frame(MAC_B, MAC_A, IP_A, IP_B, 1, 2, b"abc"))
    frame[20:22] = b"\x20\x00"  # MF
    frame[24:26] = b"\0\0"
    frame[24:26] = reference_checksum(bytes(frame[14:34])).to_bytes(2, "big")
    assert parse_ipv4_frame(frame) == "ipv4-fragment"


def test_finish_checksum_completes_a_partial_udp_checksum():
    full = udp_frame(MAC_B, MAC_A, IP_A, IP_B, 1234, 80, b"hello world, offloaded")
    partial = bytearray(full)
    # A driver asking for checksum offload puts the pseudo-header sum (not inverted) there.
    length = len(full) - 34
    pseudo = IP_A + IP_B + struct.pack("!BBH", 0, 17, length)
    words = sum(w for (w,) in struct.iter_unpack("!H", pseudo))
    partial[40:42] = ((words & 0xFFFF) + (words >> 16)).to_bytes(2, "big")
    assert finish_checksum(partial, 34, 6)
    assert bytes(partial) == full
    assert not finish_checksum(bytearray(10), 8, 6)


def test_vnet_header_pack_and_strip():
    header = VirtioNetHdr(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=6)
    assert len(header.pack()) == VNET_HDR_SIZE and VirtioNetHdr.unpack(header.pack()) == header
    with pytest.raises(UsageError):
        VirtioNetHdr.unpack(b"short")
    frame = udp_frame(MAC_B, MAC_A, IP_A, IP_B, 1, 2, b"data")
    assert strip_vnet_header(bytes(12) + frame) == frame
    broken = bytearray(frame)
    broken[40:42] = b"\0\0"
    stripped = strip_vnet_header(header.pack() + bytes(broken))
    assert stripped is not None and parse_ipv4_frame(stripped) != "ipv4-checksum"
    assert strip_vnet_header(VirtioNetHdr(gso_type=VIRTIO_NET_HDR_GSO_TCPV4).pack() + frame) is None
    assert strip_vnet_header(b"tiny") is None
    assert strip_vnet_header(VirtioNetHdr(flags=1, csum_start=5000).pack() + frame) is None


def _raw_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        missing("raw sockets need CAP_NET_RAW")


def test_kernel_accepts_our_udp_checksums_and_rejects_bad_ones():
    """Cross-check with the host kernel: it delivers a UDP datagram injected on loopback
    only if its IP and UDP checksums are right."""
    raw = _raw_socket()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(30)  # hang guard only
        port = rx.getsockname()[1]
        lo = parse_ipv4("127.0.0.1")
        for n, payload in enumerate([b"", b"x", b"odd-length!", bytes(range(256)) * 5]):
            good = udp_frame(MAC_B, MAC_A, lo, lo, 40000 + n, port, payload)[14:]
            good = good[: 20 + 8 + len(payload)]  # drop Ethernet padding
            bad = bytearray(good)
            bad[26] ^= 0x40  # corrupt the UDP checksum
            raw.sendto(bytes(bad), ("127.0.0.1", 0))
            raw.sendto(good, ("127.0.0.1", 0))
            data, (_, sport) = rx.recvfrom(4096)
            assert (data, sport) == (payload, 40000 + n)  # the corrupted one never arrived
    finally:
        raw.close()
        rx.close()
