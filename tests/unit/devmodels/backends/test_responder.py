from __future__ import annotations

import hashlib
import select
import threading
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import UsageError
from devmodels.backends.net import (
    LoopbackBackend,
    arp_frame,
    icmp_echo_frame,
    parse_ipv4,
    parse_mac,
    udp_frame,
)
from devmodels.backends.net._packets import Ipv4, parse_ipv4_frame
from devmodels.backends.net.responder import Responder

R_MAC = parse_mac("02:00:00:00:00:fe")
R_IP = parse_ipv4("10.0.2.2")
G_MAC = parse_mac("52:54:00:12:34:56")
G_IP = parse_ipv4("10.0.2.15")


def reference_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def check_ipv4(frame: bytes, proto: int) -> bytes:
    """Independent checks of a reply: Ethernet to the guest, IPv4 from R to G, checksum."""
    assert frame[:6] == G_MAC and frame[6:12] == R_MAC and frame[12:14] == b"\x08\x00"
    ihl = (frame[14] & 0xF) * 4
    assert frame[14] >> 4 == 4 and reference_checksum(frame[14 : 14 + ihl]) == 0
    total = struct.unpack_from("!H", frame, 16)[0]
    assert frame[23] == proto and frame[26:30] == R_IP and frame[30:34] == G_IP
    return frame[14 + ihl : 14 + total]


@pytest.fixture
def responder():
    a, b = LoopbackBackend.pair()
    r = Responder(b, "10.0.2.2", mac=R_MAC, udp_echo_ports=[7], udp_sink_ports=[9, 5001], max_records=3)
    r.guest = a  # type: ignore[attr-defined]
    yield r
    a.close()
    b.close()


def test_arp_request_answered(responder):
    (reply,) = responder.handle(arp_frame(1, G_MAC, G_IP, bytes(6), R_IP))
    assert reply[:6] == G_MAC and reply[6:12] == R_MAC and reply[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack_from("!HHBBH6s4s6s4s", reply, 14)
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 2)
    assert (sha, spa, tha, tpa) == (R_MAC, R_IP, G_MAC, G_IP)
    assert responder.neighbors() == {"10.0.2.15": "52:54:00:12:34:56"}
    assert responder.stats().arp_replies == 1


def test_icmp_echo_answered(responder):
    payload = bytes(range(256)) * 4 + b"odd"
    (reply,) = responder.handle(icmp_echo_frame(R_MAC, G_MAC, G_IP, R_IP, 0xBEEF, 42, payload))
    icmp = check_ipv4(reply, 1)
    assert reference_checksum(icmp) == 0
    kind, code, _csum, ident, seq = struct.unpack_from("!BBHHH", icmp)
    assert (kind, code, ident, seq, icmp[8:]) == (0, 0, 0xBEEF, 42, payload)
    assert responder.stats().icmp_replies == 1


def test_udp_echo_and_sink(responder):
    (reply,) = responder.handle(udp_frame(R_MAC, G_MAC, G_IP, R_IP, 4000, 7, b"ping me back"))
    datagram = check_ipv4(reply, 17)
    src_port, dst_port, length, _ = struct.unpack_from("!HHHH", datagram)
    assert (src_port, dst_port, datagram[8:length]) == (7, 4000, b"ping me back")
    pseudo = R_IP + G_IP + struct.pack("!BBH", 0, 17, length)
    assert reference_checksum(pseudo + datagram[:length]) == 0
    payloads = [bytes([i]) * (i * 37) for i in range(1, 6)]
    for p in payloads:
        assert responder.handle(udp_frame(R_MAC, G_MAC, G_IP, R_IP, 4001, 9, p)) == []
    record = responder.udp(9)
    assert record.datagrams == 5 and record.bytes == sum(map(len, payloads))
    assert record.sha256 == hashlib.sha256(b"".join(payloads)).hexdigest()
    assert record.crc32s == tuple(zlib.crc32(p) for p in payloads[-3:])  # bounded ring
    stats = responder.stats()
    assert (stats.udp_echoed, stats.udp_sunk, stats.ignored) == (1, 5, {})
    with pytest.raises(UsageError):
        responder.udp(1234)


def test_udp_without_checksum_is_counted(responder):
    frame = bytearray(udp_frame(R_MAC, G_MAC, G_IP, R_IP, 4000, 9, b"no sum"))
    frame[40:42] = b"\0\0"
    assert responder.handle(frame) == []
    assert responder.stats().udp_no_checksum == 1 and responder.udp(9).datagrams == 1


def _set_ip_checksum(frame: bytearray) -> None:
    frame[24:26] = b"\0\0"
    frame[24:26] = reference_checksum(bytes(frame[14:34])).to_bytes(2, "big")


def _mutations():
    udp = udp_frame(R_MAC, G_MAC, G_IP, R_IP, 4000, 7, b"payload")
    icmp = icmp_echo_frame(R_MAC, G_MAC, G_IP, R_IP, 1, 1, b"data")
    arp = arp_frame(1, G_MAC, G_IP, bytes(6), R_IP)

    def edit(frame, at, value, fix_ip=False):
        out = bytearray(frame)
        out[at : at + len(value)] = value
        if fix_ip:
            _set_ip_checksum(out)
        return bytes(out)

    return [
        (b"", "short-frame"),
        (udp[:13], "short-frame"),
        (edit(udp, 6, b"\x01"), "bad-source-mac"),
        (edit(udp, 0, b"\x02\x00\x00\x00\x00\x01"), "not-for-us"),
        (edit(udp, 0, b"\xff" * 6), "not-for-us"),
        (edit(udp, 12, b"\x86\xdd"), "ethertype"),
        (edit(udp, 12, b"\x81\x00"), "vlan"),
        (arp[:30], "arp-malformed"),
        (edit(arp, 14, b"\x00\x06"), "arp-malformed"),
        (edit(arp, 19, b"\x10"), "arp-malformed"),  # plen 16
        (edit(arp, 22, b"\x01"), "arp-malformed"),  # multicast sender hardware address
        (edit(arp, 38, parse_ipv4("10.0.2.3")), "arp-not-for-us"),
        (edit(arp, 20, b"\x00\x09"), "arp-op"),
        (udp[:30], "ipv4-malformed"),
        (edit(udp, 24, b"\x00\x00"), "ipv4-checksum"),
        (edit(udp, 16, b"\x04\x00", fix_ip=True), "ipv4-malformed"),  # total length > frame
        (edit(udp, 20, b"\x20\x00", fix_ip=True), "ipv4-fragment"),
        (edit(udp, 30, parse_ipv4("10.0.2.99"), fix_ip=True), "ipv4-not-for-us"),
        (edit(udp, 26, parse_ipv4("224.0.0.1"), fix_ip=True), "ipv4-bad-source"),
        (edit(udp, 26, bytes(4), fix_ip=True), "ipv4-bad-source"),
        (edit(udp, 23, b"\x06", fix_ip=True), "ipv4-protocol"),
        (edit(icmp, 36, b"\x00\x00"), "icmp-checksum"),
        (edit(udp, 40, bytes([udp[40] ^ 0xFF])), "udp-checksum"),
        (edit(udp, 38, b"\x00\x04"), "udp-malformed"),  # UDP length < 8
        (edit(udp, 38, b"\x04\x00"), "udp-malformed"),  # UDP length past the packet
        (edit(udp, 36, b"\x00\x63"), "udp-checksum"),  # port changed, checksum stale
    ]


@pytest.mark.parametrize("frame, reason", _mutations())
def test_malformed_frames_are_ignored(responder, frame, reason):
    assert responder.handle(frame) == []
    assert responder.stats().ignored == {reason: 1}


def test_unanswered_icmp_and_udp_ports(responder):
    reply = bytearray(icmp_echo_frame(R_MAC, G_MAC, G_IP, R_IP, 1, 1, b"", reply=True))
    assert responder.handle(reply) == []
    port_closed = udp_frame(R_MAC, G_MAC, G_IP, R_IP, 4000, 9999, b"")
    assert responder.handle(port_closed) == []
    no_reply_port = udp_frame(R_MAC, G_MAC, G_IP, R_IP, 0, 7, b"")
    assert responder.handle(no_reply_port) == []
    assert responder.stats().ignored == {"icmp-type": 1, "udp-port": 1, "udp-no-reply-port": 1}


VALID = [
    arp_frame(1, G_MAC, G_IP, bytes(6), R_IP),
    icmp_echo_frame(R_MAC, G_MAC, G_IP, R_IP, 5, 6, b"abcdef"),
    udp_frame(R_MAC, G_MAC, G_IP, R_IP, 4000, 7, b"0123456789"),
]


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(VALID),
    edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 90),
)
def test_random_corruption_never_raises_and_replies_stay_valid(base, edits, cut):
    a, b = LoopbackBackend.pair()
    r = Responder(b, "10.0.2.2", mac=R_MAC)
    frame = bytearray(base)
    for at, value in edits:
        if at < len(frame):
            frame[at] = value
    for candidate in (bytes(frame), bytes(frame[:cut])):
        before = r.stats()
        replies = r.handle(candidate)
        after = r.stats()
        # Refused by a validation (counted under a reason), never by a parser raising.
        assert after.parser_errors == 0, after.last_parser_error
        assert after.received == before.received + 1
        answered = (after.arp_replies + after.icmp_replies + after.udp_echoed + after.udp_sunk
                    - before.arp_replies - before.icmp_replies - before.udp_echoed - before.udp_sunk)
        refused = after.refused - before.refused
        assert (answered, refused) in ((1, 0), (0, 1), (0, 0)), (answered, refused)  # (0, 0): an ARP reply
        assert len(replies) <= answered
        for reply in replies:
            # Whatever got through validation, the reply is well formed.
            if reply[12:14] == b"\x08\x00":
                packet = parse_ipv4_frame(reply)
                assert isinstance(packet, Ipv4) and packet.src == R_IP
                if packet.proto == 1:
                    assert reference_checksum(packet.payload) == 0
            else:
                assert reply[12:14] == b"\x08\x06" and reply[6:12] == R_MAC
    a.close()
    b.close()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), header=st.sampled_from([b"", R_MAC + G_MAC + b"\x08\x00",
                                                             R_MAC + G_MAC + b"\x08\x06",
                                                             b"\xff" * 6 + G_MAC + b"\x08\x06"]))
def test_random_bytes_get_no_reply_and_are_counted_as_refused(data, header):
    """Garbage (alone, or behind an Ethernet header for us) is refused by validation."""
    a, b = LoopbackBackend.pair()
    r = Responder(b, "10.0.2.2", mac=R_MAC)
    assert r.handle(header + data) == []
    stats = r.stats()
    assert stats.parser_errors == 0, stats.last_parser_error
    assert stats.received == 1 and stats.refused == 1, stats.ignored
    assert "parser-error" not in stats.ignored
    assert (stats.arp_replies, stats.icmp_replies, stats.udp_echoed, stats.udp_sunk) == (0, 0, 0, 0)
    r.poll()  # nothing was queued for the wire
    assert a.receive(8) == [] and r.stats().sent == 0
    a.close()
    b.close()


def test_a_parser_that_raises_refuses_the_frame_and_is_counted_apart(responder, monkeypatch, caplog):
    def broken(frame):
        raise IndexError("index out of range")

    monkeypatch.setattr(responder, "_arp", broken)
    assert responder.handle(arp_frame(1, G_MAC, G_IP, bytes(6), R_IP)) == []
    stats = responder.stats()
    assert stats.parser_errors == 1 and stats.ignored == {"parser-error": 1} and stats.refused == 1
    assert stats.last_parser_error == "IndexError: index out of range"
    assert "a parser raised on a 60-byte frame" in caplog.text
    # the responder goes on answering
    monkeypatch.undo()
    assert len(responder.handle(arp_frame(1, G_MAC, G_IP, bytes(6), R_IP))) == 1


def test_thread_answers_through_the_backend(responder):
    guest = responder.guest
    with responder:
        assert responder.running
        guest.send(arp_frame(1, G_MAC, G_IP, bytes(6), R_IP))
        guest.send(icmp_echo_frame(R_MAC, G_MAC, G_IP, R_IP, 1, 2, b"x"))
        replies: list[bytes] = []
        while len(replies) < 2:
            assert select.select([guest.fileno()], [], [], 30)[0], "hang guard"
            replies += guest.receive()
        responder.send_udp("10.0.2.15", 5555, b"from the host")
        while len(replies) < 3:
            assert select.select([guest.fileno()], [], [], 30)[0], "hang guard"
            replies += guest.receive()
    assert not responder.running
    assert [f[12:14] for f in replies] == [b"\x08\x06", b"\x08\x00", b"\x08\x00"]
    datagram = check_ipv4(replies[2], 17)
    assert struct.unpack_from("!HH", datagram) == (9, 5555) and datagram[8:21] == b"from the host"
    assert responder.stats().sent == 3
    responder.stop()  # idempotent


def test_send_udp_needs_a_known_mac(responder):
    with pytest.raises(UsageError, match="no MAC"):
        responder.send_udp("10.0.2.15", 5555, b"x")
    responder.send_udp("10.0.2.15", 5555, b"x", dst_mac=G_MAC)  # no thread: sent at once
    assert len(responder.guest.receive()) == 1
    with pytest.raises(UsageError):
        responder.send_udp("10.0.2.15", 0, b"x", dst_mac=G_MAC)


def test_replies_are_bounded_when_the_backend_refuses():
    a, b = LoopbackBackend.pair(capacity=8, overflow="backpressure")
    r = Responder(b, "10.0.2.2", mac=R_MAC, max_pending=3)
    for _ in range(6):
        assert b.send(b"junk")  # the guest's inbox has 2 free slots left
    for i in range(8):
        assert a.send(icmp_echo_frame(R_MAC, G_MAC, G_IP, R_IP, 1, i, b""))
    assert r.poll() == 8
    stats = r.stats()
    # two replies went out, three wait, three were dropped
    assert (stats.icmp_replies, stats.sent, stats.replies_dropped) == (8, 2, 3)
    frames = a.receive()
    assert [struct.unpack_from("!H", f, 40)[0] for f in frames[6:]] == [0, 1]
    r.poll()
    assert r.stats().sent == 5
    assert [struct.unpack_from("!H", f, 40)[0] for f in a.receive()] == [2, 3, 4]


def test_neighbor_table_is_bounded():
    a, b = LoopbackBackend.pair()
    r = Responder(b, "10.0.2.2", mac=R_MAC, max_neighbors=2)
    for host in (11, 12, 13):
        r.handle(arp_frame(1, G_MAC, parse_ipv4(f"10.0.2.{host}"), bytes(6), R_IP))
    assert list(r.neighbors()) == ["10.0.2.12", "10.0.2.13"]
    r.handle(arp_frame(1, G_MAC, bytes(4), bytes(6), R_IP))  # a probe: answered, not learned
    assert len(r.neighbors()) == 2 and r.stats().arp_replies == 4


def test_backend_failure_stops_the_thread_and_is_reported():
    a, b = LoopbackBackend.pair()
    r = Responder(b, "10.0.2.2")
    r.start()
    b.close()  # receive() now raises UsageError inside the thread
    r._poke()
    for _ in range(30_000):  # hang guard only
        if not r.running:
            break
        threading.Event().wait(0.001)
    assert not r.running
    with pytest.raises(UsageError):
        r.stop()
    assert isinstance(r.error, UsageError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mac": "01:00:5e:00:00:01"},
        {"udp_echo_ports": [0]},
        {"udp_echo_ports": [7], "udp_sink_ports": [7]},
        {"max_records": 0},
        {"batch": 0},
    ],
)
def test_bad_configuration(kwargs):
    a, b = LoopbackBackend.pair()
    with pytest.raises(UsageError):
        Responder(b, "10.0.2.2", **kwargs)
    with pytest.raises(UsageError):
        Responder(b, "not an ip")
