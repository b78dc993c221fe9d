"""Checksum offload, TCP segmentation and VLAN tags (SDM §3.3.5–3.3.7, §3.5, §3.2.9, ch. 9).

Rules:

1. Pure functions over ``bytes``/``bytearray``: no device state, no guest memory. Every
   offset comes from a guest descriptor, so each one is range-checked here; a checksum
   whose start, end or insertion offset lies outside the packet is not inserted
   (SDM §3.3.6: "If this is not the case, the checksum is not inserted").
2. Transmit checksums follow the SDM model exactly: the one's complement sum runs from
   CSS to CSE inclusive (CSE 0 = end of packet) over the bytes as the driver left them, so
   the pseudo-header seed the driver wrote at CSO is included; the complement is stored
   big-endian at CSO.
3. ``segment_tso`` turns one TSO packet (header + payload) into wire frames: per segment
   the IPv4 total length / IPv6 payload length, the IPv4 identification (+1 per segment),
   the TCP sequence number (+bytes sent), FIN/PSH only on the last segment, the UDP length
   for UDP, and both checksums; the TCP/UDP checksum adds the segment's L4 length to the
   driver's length-less pseudo-header seed (SDM §3.5.1, Linux ``e1000_tso``).
4. ``rx_checksum`` parses Ethernet II + IPv4/IPv6 + TCP/UDP the way the receive checksum
   offload does (SDM §3.2.9, Table 3-5) and reports what it computed and whether it held.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import TsoContextError

__all__ = [
    "ones_sum",
    "fold",
    "insert_checksum",
    "TsoContext",
    "segment_tso",
    "insert_vlan",
    "strip_vlan",
    "fcs",
    "RxChecksum",
    "rx_checksum",
]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_FIN = 0x01
TCP_PSH = 0x08


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None) -> int:
    """The 16-bit one's complement sum (not complemented) of ``data[start:end]``.

    An odd trailing byte is padded with zero (RFC 1071).
    """
    chunk = bytes(data[start:end])
    if len(chunk) & 1:
        chunk += b"\0"
    total = int.from_bytes(chunk, "big") if chunk else 0
    # Sum of 16-bit words modulo 0xFFFF equals the big integer modulo 0xFFFF
    # (2**16 ≡ 1 mod 0xFFFF); map 0 back to 0xFFFF unless every word was 0.
    value = total % 0xFFFF
    if value == 0 and total:
        return 0xFFFF
    return value


def fold(value: int) -> int:
    """Fold carries into 16 bits."""
    while value > 0xFFFF:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def insert_checksum(packet: bytearray, css: int, cso: int, cse: int, *, extra: int = 0, udp: bool = False) -> bool:
    """Compute the checksum of ``packet[css:cse+1]`` (``cse`` 0 = end) into ``packet[cso:cso+2]``.

    ``extra`` is added to the sum (the TSO segment length). With ``udp`` a result of 0 is
    sent as 0xFFFF (RFC 768). Returns whether the checksum was inserted (rule 1).
    """
    length = len(packet)
    end = length if cse == 0 else cse + 1
    if css >= length or end > length or end <= css or cso + 2 > length:
        return False
    total = fold(ones_sum(packet, css, end) + extra)
    value = ~total & 0xFFFF
    if udp and value == 0:
        value = 0xFFFF
    _U16.pack_into(packet, cso, value)
    return True


@dataclass(frozen=True)
class TsoContext:
    """The fields of a TCP/IP context descriptor (SDM §3.3.6)."""

    ipcss: int = 0
    ipcso: int = 0
    ipcse: int = 0
    tucss: int = 0
    tucso: int = 0
    tucse: int = 0
    paylen: int = 0
    tucmd: int = 0
    hdrlen: int = 0
    mss: int = 0

    @property
    def ipv4(self) -> bool:
        """TUCMD.IP: the packet is IPv4 (else IPv6)."""
        return bool(self.tucmd & 0b10)

    @property
    def tcp(self) -> bool:
        """TUCMD.TCP: the L4 protocol is TCP (else UDP)."""
        return bool(self.tucmd & 0b01)


def segment_tso(
    packet: bytes | bytearray, ctx: TsoContext, *, ip_csum: bool, l4_csum: bool
) -> list[bytearray]:
    """Split a TSO packet into frames (rule 3).

    Args:
        packet: the header (``ctx.hdrlen`` bytes) followed by the payload.
        ctx: the TCP segmentation context.
        ip_csum: POPTS.IXSM — insert the IPv4 header checksum in each segment.
        l4_csum: POPTS.TXSM — insert the TCP/UDP checksum in each segment.

    Raises:
        TsoContextError: the context cannot describe this packet (MSS 0, header length
            past the packet, header fields outside the header).
    """
    hdrlen, mss = ctx.hdrlen, ctx.mss
    if mss == 0:
        raise TsoContextError("MSS is 0")
    if hdrlen == 0 or hdrlen > len(packet):
        raise TsoContextError(f"header length {hdrlen} does not fit a {len(packet)}-byte packet")
    ipcss, tucss = ctx.ipcss, ctx.tucss
    ip_fields = ipcss + (10 if ctx.ipv4 else 6)
    l4_fields = tucss + (14 if ctx.tcp else 6)
    if ip_fields > hdrlen or l4_fields > hdrlen or tucss <= ipcss:
        raise TsoContextError("IP or TCP/UDP header fields lie outside the TSO header")
    header = bytes(packet[:hdrlen])
    payload = memoryview(bytes(packet))[hdrlen:]
    total = len(payload)
    ip_id = _U16.unpack_from(header, ipcss + 4)[0] if ctx.ipv4 else 0
    seq = _U32.unpack_from(header, tucss + 4)[0] if ctx.tcp else 0
    flags = header[tucss + 13] if ctx.tcp else 0
    frames: list[bytearray] = []
    offset = 0
    index = 0
    while True:
        chunk = payload[offset : offset + mss]
        last = offset + len(chunk) >= total
        frame = bytearray(header)
        frame += chunk
        frame_len = len(frame)
        if ctx.ipv4:
            _U16.pack_into(frame, ipcss + 2, (frame_len - ipcss) & 0xFFFF)
            _U16.pack_into(frame, ipcss + 4, (ip_id + index) & 0xFFFF)
        else:
            _U16.pack_into(frame, ipcss + 4, (frame_len - ipcss - 40) & 0xFFFF)
        l4_len = frame_len - tucss
        if ctx.tcp:
            _U32.pack_into(frame, tucss + 4, (seq + offset) & 0xFFFF_FFFF)
            frame[tucss + 13] = flags if last else flags & ~(TCP_FIN | TCP_PSH)
        else:
            _U16.pack_into(frame, tucss + 4, l4_len & 0xFFFF)
        if ip_csum and ctx.ipv4:
            insert_checksum(frame, ipcss, ctx.ipcso, ctx.ipcse)
        if l4_csum:
            insert_checksum(frame, tucss, ctx.tucso, ctx.tucse, extra=l4_len, udp=not ctx.tcp)
        frames.append(frame)
        offset += len(chunk)
        index += 1
        if last:
            return frames


def insert_vlan(frame: bytes | bytearray, vet: int, tci: int) -> bytearray:
    """``frame`` with an 802.1Q tag (``vet``, ``tci``) after the MAC addresses."""
    out = bytearray(frame[:12])
    out += struct.pack("!HH", vet & 0xFFFF, tci & 0xFFFF)
    out += frame[12:]
    return out


def strip_vlan(frame: bytes | bytearray, vet: int) -> tuple[bytes | bytearray, int | None]:
    """Remove a tag whose type matches ``vet``; return (frame, TCI or ``None``)."""
    if len(frame) >= 18 and _U16.unpack_from(frame, 12)[0] == vet:
        tci = _U16.unpack_from(frame, 14)[0]
        return bytes(frame[:12]) + bytes(frame[16:]), tci
    return frame, None


def fcs(frame: bytes | bytearray | memoryview) -> bytes:
    """The Ethernet FCS of ``frame`` as it appears on the wire (CRC-32, little-endian)."""
    return struct.pack("<I", zlib.crc32(frame) & 0xFFFF_FFFF)


@dataclass(frozen=True)
class RxChecksum:
    """What receive checksum offload found (SDM §3.2.3.1–2)."""

    ip_checked: bool = False
    ip_ok: bool = True
    l4_checked: bool = False
    l4_ok: bool = True


def _pseudo_v4(frame: bytes | bytearray, ip: int, proto: int, length: int) -> int:
    return ones_sum(frame, ip + 12, ip + 20) + proto + length


def _pseudo_v6(frame: bytes | bytearray, ip: int, proto: int, length: int) -> int:
    return ones_sum(frame, ip + 8, ip + 40) + proto + length


def rx_checksum(frame: bytes | bytearray, *, ip: bool, l4: bool) -> RxChecksum:
    """Verify the IPv4 header and TCP/UDP checksums of a received frame (rule 4).

    ``frame`` is the frame without FCS (tagged or not). ``ip``/``l4`` are
    RXCSUM.IPOFL/TUOFL. Fragments and unknown protocols are not checked.
    """
    if len(frame) < ETH_HLEN:
        return RxChecksum()
    offset = 12
    ethertype = _U16.unpack_from(frame, offset)[0]
    if ethertype in (0x8100, 0x88A8) and len(frame) >= 18:
        offset += 4
        ethertype = _U16.unpack_from(frame, offset)[0]
    ip_start = offset + 2
    if ethertype == ETH_P_IP:
        if len(frame) < ip_start + 20 or frame[ip_start] >> 4 != 4:
            return RxChecksum()
        ihl = (frame[ip_start] & 0x0F) * 4
        total = _U16.unpack_from(frame, ip_start + 2)[0]
        if ihl < 20 or len(frame) < ip_start + ihl or total < ihl or ip_start + total > len(frame):
            return RxChecksum()
        ip_checked = ip
        ip_ok = not ip or ones_sum(frame, ip_start, ip_start + ihl) == 0xFFFF
        frag = _U16.unpack_from(frame, ip_start + 6)[0] & 0x3FFF
        proto = frame[ip_start + 9]
        l4_start, l4_end = ip_start + ihl, ip_start + total
        if frag or not l4:
            return RxChecksum(ip_checked, ip_ok)
        pseudo = _pseudo_v4
    elif ethertype == ETH_P_IPV6:
        if len(frame) < ip_start + 40 or frame[ip_start] >> 4 != 6:
            return RxChecksum()
        ip_checked, ip_ok = False, True
        proto = frame[ip_start + 6]
        l4_start = ip_start + 40
        l4_end = l4_start + _U16.unpack_from(frame, ip_start + 4)[0]
        if l4_end > len(frame) or not l4:
            return RxChecksum()
        pseudo = _pseudo_v6
    else:
        return RxChecksum()
    if proto == IPPROTO_TCP and l4_end - l4_start >= 20:
        pass
    elif proto == IPPROTO_UDP and l4_end - l4_start >= 8:
        if ethertype == ETH_P_IP and _U16.unpack_from(frame, l4_start + 6)[0] == 0:
            return RxChecksum(ip_checked, ip_ok, True, True)  # no checksum sent (RFC 768)
    else:
        return RxChecksum(ip_checked, ip_ok)
    total_sum = fold(ones_sum(frame, l4_start, l4_end) + pseudo(frame, ip_start, proto, l4_end - l4_start))
    return RxChecksum(ip_checked, ip_ok, True, total_sum == 0xFFFF)
