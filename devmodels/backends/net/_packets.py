"""Ethernet/ARP/IPv4/ICMP/UDP building blocks and the virtio-net header, for the host side.

Rules:

1. Everything here handles frames a guest produced, so parsers never trust a length field:
   each returns ``None`` for a frame that breaks any rule and never raises on content.
2. Checksums are RFC 1071 internet checksums computed with one big-integer reduction
   (2**16 ≡ 1 mod 0xFFFF, so a byte string read as a big-endian integer is congruent to
   the sum of its 16-bit words); the result is the ones' complement of the folded sum.
3. Headers use precompiled ``struct.Struct`` (per-packet hot path, CONVENTIONS: layouts).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..._errors import UsageError

__all__ = [
    "ETH_P_ARP",
    "ETH_P_IPV4",
    "ETH_P_8021Q",
    "IPPROTO_ICMP",
    "IPPROTO_UDP",
    "BROADCAST_MAC",
    "VNET_HDR_SIZE",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "VIRTIO_NET_HDR_GSO_ECN",
    "VirtioNetHdr",
    "internet_checksum",
    "parse_mac",
    "format_mac",
    "parse_ipv4",
    "ethernet_frame",
    "arp_frame",
    "ipv4_packet",
    "icmp_echo_frame",
    "udp_frame",
    "finish_checksum",
    "udp_checksum",
    "strip_vnet_header",
    "Ipv4",
    "parse_ipv4_frame",
]

ETH_P_IPV4 = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
IPPROTO_ICMP = 1
IPPROTO_UDP = 17
BROADCAST_MAC = b"\xff" * 6

# VIRTIO 1.2 §5.1.6: struct virtio_net_hdr (with num_buffers, always present in 1.x).
VNET_HDR_SIZE = 12
VIRTIO_NET_HDR_F_NEEDS_CSUM = 0b0000_0001
VIRTIO_NET_HDR_F_DATA_VALID = 0b0000_0010
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

ETH_HEADER = struct.Struct("!6s6sH")
ARP_IPV4 = struct.Struct("!HHBBH6s4s6s4s")
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
ICMP_ECHO = struct.Struct("!BBHHH")
UDP_HEADER = struct.Struct("!HHHH")
_VNET = struct.Struct("<BBHHHHH")
_PSEUDO = struct.Struct("!4s4sBBH")

ARP_HRD_ETHER = 1
ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8


@dataclass(frozen=True)
class VirtioNetHdr:
    """The 12-byte virtio-net header (VIRTIO 1.2 §5.1.6), little-endian."""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    def pack(self) -> bytes:
        """The header's wire form."""
        return _VNET.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset, self.num_buffers
        )

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> VirtioNetHdr:
        """Parse the first 12 bytes of ``data``.

        Raises:
            UsageError: ``data`` is shorter than a header.
        """
        if len(data) < VNET_HDR_SIZE:
            raise UsageError(f"a virtio-net header needs {VNET_HDR_SIZE} bytes, got {len(data)}")
        return cls(*_VNET.unpack_from(data, 0))


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data`` (odd lengths padded with a zero byte).

    Args:
        data: the bytes to cover.
        initial: a 16-bit-word sum to include (a pseudo-header sum); may be any size.

    Returns:
        The 16-bit ones' complement of the ones' complement sum; 0 over data that already
        contains its correct checksum.
    """
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\x00"
    value = int.from_bytes(raw, "big") + initial
    folded = value % 0xFFFF
    # Ones' complement addition of anything non-zero never yields +0; it yields 0xFFFF (-0).
    if folded == 0 and value:
        folded = 0xFFFF
    return ~folded & 0xFFFF


def _pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return int.from_bytes(_PSEUDO.pack(src, dst, 0, proto, length), "big")


def parse_mac(text: str | bytes) -> bytes:
    """``"02:00:00:00:00:01"`` (or 6 raw bytes) as 6 bytes.

    Raises:
        UsageError: it is not a MAC address.
    """
    if isinstance(text, bytes | bytearray):
        if len(text) != 6:
            raise UsageError(f"a MAC address has 6 bytes, got {len(text)}")
        return bytes(text)
    parts = text.split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError(text)
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise UsageError(f"not a MAC address: {text!r}") from None


def format_mac(mac: bytes) -> str:
    """6 bytes as ``"02:00:00:00:00:01"``."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_ipv4(text: str | bytes) -> bytes:
    """A dotted-quad IPv4 address (or 4 raw bytes) as 4 bytes.

    Raises:
        UsageError: it is not an IPv4 address.
    """
    if isinstance(text, bytes | bytearray):
        if len(text) != 4:
            raise UsageError(f"an IPv4 address has 4 bytes, got {len(text)}")
        return bytes(text)
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise UsageError(f"not an IPv4 address: {text!r}") from None


def ethernet_frame(dst: bytes, src: bytes, ethertype: int, payload: bytes | bytearray) -> bytes:
    """An Ethernet II frame (no FCS), padded to the 60-byte minimum."""
    frame = ETH_HEADER.pack(dst, src, ethertype) + bytes(payload)
    return frame + bytes(60 - len(frame)) if len(frame) < 60 else frame


def arp_frame(
    op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes, *, dst: bytes | None = None
) -> bytes:
    """An ARP request (``op=1``) or reply (``op=2``) for IPv4 over Ethernet (RFC 826).

    ``dst`` defaults to broadcast for a request and ``target_mac`` for a reply.
    """
    body = ARP_IPV4.pack(ARP_HRD_ETHER, ETH_P_IPV4, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)
    if dst is None:
        dst = BROADCAST_MAC if op == ARP_OP_REQUEST else target_mac
    return ethernet_frame(dst, sender_mac, ETH_P_ARP, body)


def ipv4_packet(src: bytes, dst: bytes, proto: int, payload: bytes | bytearray, *, ttl: int = 64, ident: int = 0) -> bytes:
    """An IPv4 packet without options and with a correct header checksum (RFC 791)."""
    total = 20 + len(payload)
    if total > 0xFFFF:
        raise UsageError(f"IPv4 payload of {len(payload)} bytes does not fit a packet")
    header = IPV4_HEADER.pack(0x45, 0, total, ident & 0xFFFF, 0, ttl, proto, 0, src, dst)
    checksum = internet_checksum(header)
    return header[:10] + checksum.to_bytes(2, "big") + header[12:] + bytes(payload)


def icmp_echo_frame(
    dst_mac: bytes,
    src_mac: bytes,
    src_ip: bytes,
    dst_ip: bytes,
    ident: int,
    seq: int,
    payload: bytes = b"",
    *,
    reply: bool = False,
    ip_ident: int = 0,
) -> bytes:
    """An ICMP echo request (or reply) in IPv4 in Ethernet, checksums filled (RFC 792)."""
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    message = ICMP_ECHO.pack(kind, 0, 0, ident & 0xFFFF, seq & 0xFFFF) + payload
    checksum = internet_checksum(message)
    message = message[:2] + checksum.to_bytes(2, "big") + message[4:]
    return ethernet_frame(dst_mac, src_mac, ETH_P_IPV4, ipv4_packet(src_ip, dst_ip, IPPROTO_ICMP, message, ident=ip_ident))


def udp_checksum(src_ip: bytes, dst_ip: bytes, datagram: bytes | bytearray) -> int:
    """The UDP checksum of a datagram whose checksum field is zero (RFC 768); never 0."""
    checksum = internet_checksum(datagram, _pseudo_sum(src_ip, dst_ip, IPPROTO_UDP, len(datagram)))
    return checksum or 0xFFFF


def udp_frame(
    dst_mac: bytes,
    src_mac: bytes,
    src_ip: bytes,
    dst_ip: bytes,
    src_port: int,
    dst_port: int,
    payload: bytes | bytearray,
    *,
    ip_ident: int = 0,
) -> bytes:
    """A UDP datagram in IPv4 in Ethernet, with correct IP and UDP checksums."""
    length = 8 + len(payload)
    datagram = UDP_HEADER.pack(src_port, dst_port, length, 0) + bytes(payload)
    checksum = udp_checksum(src_ip, dst_ip, datagram)
    datagram = datagram[:6] + checksum.to_bytes(2, "big") + datagram[8:]
    return ethernet_frame(dst_mac, src_mac, ETH_P_IPV4, ipv4_packet(src_ip, dst_ip, IPPROTO_UDP, datagram, ident=ip_ident))


def finish_checksum(frame: bytearray, csum_start: int, csum_offset: int) -> bool:
    """Complete a partial checksum in place, as a device does for ``NEEDS_CSUM``.

    VIRTIO 1.2 §5.1.6.2: the field at ``csum_start + csum_offset`` holds the pseudo-header
    sum; the checksum covers ``csum_start`` to the end of the frame.

    Returns:
        ``False`` (frame untouched) if the offsets do not fit inside the frame.
    """
    field = csum_start + csum_offset
    if csum_start >= len(frame) or field + 2 > len(frame):
        return False
    checksum = internet_checksum(memoryview(frame)[csum_start:])
    frame[field : field + 2] = checksum.to_bytes(2, "big")
    return True


@dataclass(frozen=True)
class Ipv4:
    """A validated IPv4 packet inside a frame: addresses, protocol and its payload."""

    src: bytes
    dst: bytes
    proto: int
    ttl: int
    payload: bytes


def parse_ipv4_frame(frame: bytes | bytearray | memoryview) -> Ipv4 | str:
    """Validate the IPv4 packet in an Ethernet frame (RFC 791, RFC 1122 §3.2.1).

    Returns:
        The packet, or the reason (a short word) it was rejected: ``ipv4-malformed``,
        ``ipv4-checksum``, ``ipv4-fragment``. Trailing Ethernet padding is dropped.
    """
    if len(frame) < 14 + 20:
        return "ipv4-malformed"
    version_ihl, _tos, total, _ident, flags_frag, ttl, proto, _csum, src, dst = IPV4_HEADER.unpack_from(frame, 14)
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or total < ihl or 14 + total > len(frame):
        return "ipv4-malformed"
    if internet_checksum(memoryview(frame)[14 : 14 + ihl]) != 0:
        return "ipv4-checksum"
    # RFC 791: MF flag (0x2000) or a non-zero fragment offset means a fragment.
    if flags_frag & 0x3FFF:
        return "ipv4-fragment"
    return Ipv4(bytes(src), bytes(dst), proto, ttl, bytes(frame[14 + ihl : 14 + total]))


def strip_vnet_header(frame: bytes | bytearray | memoryview) -> bytes | None:
    """A frame with a virtio-net header turned into a plain, fully checksummed frame.

    A ``NEEDS_CSUM`` checksum is completed in software; a GSO frame cannot be segmented
    here and yields ``None``, as does a frame too short to hold a header or whose checksum
    offsets do not fit it.
    """
    if len(frame) < VNET_HDR_SIZE:
        return None
    flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset, _n = _VNET.unpack_from(frame, 0)
    if gso_type & ~VIRTIO_NET_HDR_GSO_ECN != VIRTIO_NET_HDR_GSO_NONE:
        return None
    if not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return bytes(frame[VNET_HDR_SIZE:])
    body = bytearray(frame[VNET_HDR_SIZE:])
    return bytes(body) if finish_checksum(body, csum_start, csum_offset) else None
