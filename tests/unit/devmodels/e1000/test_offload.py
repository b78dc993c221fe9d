"""Checksum offload, TSO and VLAN helpers, checked against an independent reference
(RFC 1071 word-by-word sums written here, not the module's big-integer trick)."""

from __future__ import annotations

import struct

import pytest

from devmodels.e1000.errors import TsoContextError
from devmodels.e1000.offload import (
    TsoContext,
    fcs,
    insert_checksum,
    insert_vlan,
    ones_sum,
    rx_checksum,
    segment_tso,
    strip_vlan,
)


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_csum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def ipv4_tcp(payload: bytes, *, ident: int = 0x1234, seq: int = 1000, flags: int = 0x18, src: bytes = b"\x0a\0\0\1",
             dst: bytes = b"\x0a\0\0\2", options: bytes = b"") -> bytearray:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5001, seq, 77, (5 + len(options) // 4) << 4, flags, 65535, 0, 0) + options
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), ident, 0x4000, 64, 6, 0, src, dst)
    eth = b"\x02\0\0\0\0\2" + b"\x02\0\0\0\0\1" + b"\x08\x00"
    return bytearray(eth + ip + tcp + payload)


def tcp_ok(frame: bytes) -> bool:
    ip = 14
    ihl = (frame[ip] & 0xF) * 4
    total = struct.unpack_from("!H", frame, ip + 2)[0]
    segment = frame[ip + ihl : ip + total]
    pseudo = frame[ip + 12 : ip + 20] + struct.pack("!BBH", 0, frame[ip + 9], len(segment))
    return ref_sum(pseudo + segment) == 0xFFFF


@pytest.mark.parametrize("data", [b"", b"\x01", b"\xff\xff", bytes(range(256)) * 3, b"\x12\x34\x56"])
def test_ones_sum_matches_reference(data: bytes) -> None:
    assert ones_sum(data) == ref_sum(data) or (ones_sum(data), ref_sum(data)) == (0xFFFF, 0)


def test_insert_checksum_ipv4_header() -> None:
    frame = ipv4_tcp(b"hello")
    assert insert_checksum(frame, 14, 24, 33)
    assert ref_sum(bytes(frame[14:34])) == 0xFFFF


def test_insert_checksum_includes_pseudo_header_seed() -> None:
    frame = ipv4_tcp(b"payload bytes!")
    insert_checksum(frame, 14, 24, 33)
    # CHECKSUM_PARTIAL: the driver seeds the TCP checksum with the pseudo-header sum
    seg_len = len(frame) - 34
    seed = ref_sum(frame[26:34] + struct.pack("!BBH", 0, 6, seg_len))
    struct.pack_into("!H", frame, 50, seed)
    assert insert_checksum(frame, 34, 50, 0)
    assert tcp_ok(bytes(frame))


@pytest.mark.parametrize(("css", "cso", "cse"), [(200, 50, 0), (34, 199, 0), (34, 50, 500), (40, 50, 30)])
def test_checksum_offsets_outside_packet_are_not_inserted_spec_3_3_6(css: int, cso: int, cse: int) -> None:
    frame = ipv4_tcp(b"x" * 20)
    before = bytes(frame)
    assert not insert_checksum(frame, css, cso, cse)
    assert bytes(frame) == before


def test_udp_zero_checksum_is_sent_as_ffff() -> None:
    data = bytearray(8)
    struct.pack_into("!H", data, 0, 0xFFFF)  # sums to 0xFFFF, complement is 0
    assert insert_checksum(data, 0, 6, 0, udp=True)
    assert data[6:8] == b"\xff\xff"


def linux_tso_context(frame: bytearray, mss: int) -> TsoContext:
    """What e1000_tso leaves in the frame and the context descriptor."""
    hdr_len = 14 + 20 + (frame[46] >> 4) * 4
    struct.pack_into("!H", frame, 16, 0)  # tot_len
    struct.pack_into("!H", frame, 24, 0)  # check
    seed = ref_sum(frame[26:34] + struct.pack("!BBH", 0, 6, 0))
    struct.pack_into("!H", frame, 50, seed)
    return TsoContext(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=50, tucse=0,
                      paylen=len(frame) - hdr_len, tucmd=0b111, hdrlen=hdr_len, mss=mss)


@pytest.mark.parametrize(("size", "mss"), [(1, 1460), (1460, 1460), (1461, 1460), (10000, 1448), (65000, 1460), (99, 7)])
def test_tso_segments_reassemble_spec_3_5(size: int, mss: int) -> None:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    frame = ipv4_tcp(payload, flags=0x19, options=b"\x01\x01\x08\x0a" + bytes(8))  # PSH|FIN|ACK, timestamps
    ctx = linux_tso_context(frame, mss)
    segments = segment_tso(frame, ctx, ip_csum=True, l4_csum=True)
    assert len(segments) == -(-size // mss)
    data = b""
    for n, seg in enumerate(segments):
        seg = bytes(seg)
        assert len(seg) <= ctx.hdrlen + mss
        assert struct.unpack_from("!H", seg, 16)[0] == len(seg) - 14  # IP total length
        assert struct.unpack_from("!H", seg, 18)[0] == (0x1234 + n) & 0xFFFF  # IP id
        assert ref_sum(seg[14:34]) == 0xFFFF  # IP header checksum
        assert tcp_ok(seg)
        assert struct.unpack_from("!I", seg, 38)[0] == 1000 + len(data)  # sequence number
        flags = seg[47]
        last = n == len(segments) - 1
        assert bool(flags & 0x01) == last and bool(flags & 0x08) == last  # FIN, PSH
        assert flags & 0x10  # ACK everywhere
        assert seg[:14] == frame[:14]
        data += seg[ctx.hdrlen :]
    assert data == payload


def test_tso_ipv6() -> None:
    payload = bytes(range(200)) * 20
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 0xFFFF_FF00, 0, 5 << 4, 0x18, 100, 0, 0)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, 0, 6, 64, b"\xfe\x80" + bytes(14), b"\xfe\x80" + bytes(13) + b"\x02")
    frame = bytearray(b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip6 + tcp + payload)
    seed = ref_sum(bytes(ip6[8:40]) + struct.pack("!IxxxB", 0, 6))
    struct.pack_into("!H", frame, 14 + 40 + 16, seed)
    ctx = TsoContext(ipcss=14, ipcso=0, ipcse=0, tucss=54, tucso=70, tucse=0, paylen=len(payload),
                     tucmd=0b101, hdrlen=74, mss=1000)
    segments = segment_tso(frame, ctx, ip_csum=False, l4_csum=True)
    assert len(segments) == 4
    seq = 0xFFFF_FF00
    for seg in segments:
        plen = struct.unpack_from("!H", seg, 18)[0]
        assert plen == len(seg) - 54
        assert struct.unpack_from("!I", seg, 58)[0] == seq & 0xFFFF_FFFF
        pseudo = bytes(seg[22:54]) + struct.pack("!IxxxB", plen, 6)
        assert ref_sum(pseudo + bytes(seg[54:])) == 0xFFFF
        seq += len(seg) - 74


def test_tso_udp_sets_length() -> None:
    udp = struct.pack("!HHHH", 5, 6, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 9, 0, 64, 17, 0, b"\1\1\1\1", b"\2\2\2\2")
    frame = bytearray(b"\xff" * 12 + b"\x08\x00" + ip + udp + bytes(3000))
    ctx = TsoContext(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=40, tucse=0, paylen=3000, tucmd=0b110,
                     hdrlen=42, mss=1400)
    segments = segment_tso(frame, ctx, ip_csum=True, l4_csum=False)
    assert [struct.unpack_from("!H", s, 38)[0] for s in segments] == [1408, 1408, 208]


@pytest.mark.parametrize(
    "ctx",
    [
        TsoContext(ipcss=14, tucss=34, tucmd=0b111, hdrlen=54, mss=0),
        TsoContext(ipcss=14, tucss=34, tucmd=0b111, hdrlen=200, mss=100),
        TsoContext(ipcss=14, tucss=34, tucmd=0b111, hdrlen=0, mss=100),
        TsoContext(ipcss=40, tucss=34, tucmd=0b111, hdrlen=54, mss=100),
        TsoContext(ipcss=14, tucss=50, tucmd=0b111, hdrlen=54, mss=100),
    ],
)
def test_tso_bad_context_raises_guest_error(ctx: TsoContext) -> None:
    frame = ipv4_tcp(bytes(100))
    with pytest.raises(TsoContextError):
        segment_tso(frame, ctx, ip_csum=True, l4_csum=True)


def test_vlan_insert_and_strip() -> None:
    frame = bytes(range(60))
    tagged = insert_vlan(frame, 0x8100, 0x2005)
    assert tagged[12:16] == b"\x81\x00\x20\x05" and len(tagged) == 64
    stripped, tci = strip_vlan(tagged, 0x8100)
    assert stripped == frame and tci == 0x2005
    assert strip_vlan(frame, 0x8100) == (frame, None)


def test_fcs_is_crc32_residue() -> None:
    import zlib

    frame = bytes(range(64))
    # CRC-32 over frame + FCS leaves the constant residue 0x2144DF1C
    assert zlib.crc32(frame + fcs(frame)) == 0x2144DF1C


def test_rx_checksum_good_and_bad() -> None:
    frame = ipv4_tcp(b"abc" * 50)
    insert_checksum(frame, 14, 24, 33)
    seed = ref_sum(frame[26:34] + struct.pack("!BBH", 0, 6, len(frame) - 34))
    struct.pack_into("!H", frame, 50, seed)
    insert_checksum(frame, 34, 50, 0)
    good = rx_checksum(frame, ip=True, l4=True)
    assert good.ip_checked and good.ip_ok and good.l4_checked and good.l4_ok
    frame[60] ^= 0xFF
    bad = rx_checksum(frame, ip=True, l4=True)
    assert bad.ip_ok and bad.l4_checked and not bad.l4_ok
    frame[20] ^= 1
    assert not rx_checksum(frame, ip=True, l4=False).ip_ok


def test_rx_checksum_skips_fragments_and_unknown() -> None:
    frame = ipv4_tcp(b"zz" * 30)
    struct.pack_into("!H", frame, 20, 0x2000)  # MF
    assert not rx_checksum(frame, ip=True, l4=True).l4_checked
    assert rx_checksum(b"\x00" * 12 + b"\x08\x06" + bytes(46), ip=True, l4=True) == rx_checksum(b"", ip=True, l4=True)
