"""A guest-side frame source exchanges traffic with the host-side responder over real
backends (UNIX socketpair and loopback), captured to pcap on the way."""

from __future__ import annotations

import hashlib
import random
import select
import struct

import pytest

from devmodels.backends import NetBackend
from devmodels.backends.net import (
    LoopbackBackend,
    PcapWriter,
    SocketBackend,
    arp_frame,
    icmp_echo_frame,
    parse_ipv4,
    parse_mac,
    read_pcap,
    udp_frame,
)
from devmodels.backends.net.responder import Responder

R_IP = parse_ipv4("192.168.100.1")
R_MAC = parse_mac("02:00:00:00:01:01")
G_IP = parse_ipv4("192.168.100.2")
G_MAC = parse_mac("52:54:00:00:01:02")


def make_pair(kind: str) -> tuple[NetBackend, NetBackend]:
    if kind == "loopback":
        return LoopbackBackend.pair(capacity=64, overflow="backpressure")
    return SocketBackend.pair(kind)


def wait_for(backend: NetBackend, count: int) -> list[bytes]:
    out: list[bytes] = []
    fd = backend.fileno()
    assert fd is not None
    while len(out) < count:
        assert select.select([fd], [], [], 60)[0], "hang guard"
        out += backend.receive()
    return out


def send_all(backend: NetBackend, frame: bytes) -> None:
    """Send, waiting for room when the backend pushes back (what a device's TX path does)."""
    fd = backend.fileno()
    while not backend.send(frame):
        assert fd is not None
        if isinstance(getattr(backend, "backend", backend), LoopbackBackend):
            select.select([], [], [], 0.001)  # no writability signal in memory: retry
        else:
            assert select.select([], [fd], [], 60)[1], "hang guard"


@pytest.mark.parametrize("kind", ["seqpacket", "dgram", "loopback"])
def test_guest_talks_to_responder(tmp_path, kind):
    guest_end, host_end = make_pair(kind)
    guest = PcapWriter(guest_end, tmp_path / "guest.pcap")
    responder = Responder(host_end, R_IP, mac=R_MAC, udp_echo_ports=[7], udp_sink_ports=[9])
    with responder:
        send_all(guest, arp_frame(1, G_MAC, G_IP, bytes(6), R_IP))
        (arp_reply,) = wait_for(guest, 1)
        assert arp_reply[12:14] == b"\x08\x06" and arp_reply[22:28] == R_MAC
        for seq in range(20):
            send_all(guest, icmp_echo_frame(R_MAC, G_MAC, G_IP, R_IP, 77, seq, bytes([seq]) * 56))
        pongs = wait_for(guest, 20)
        assert sorted(struct.unpack_from("!H", p, 40)[0] for p in pongs) == list(range(20))
        send_all(guest, udp_frame(R_MAC, G_MAC, G_IP, R_IP, 3333, 7, b"echo"))
        (echo,) = wait_for(guest, 1)
        assert echo[42:46] == b"echo"
    stats = responder.stats()
    assert (stats.arp_replies, stats.icmp_replies, stats.udp_echoed, stats.ignored) == (1, 20, 1, {})
    guest.close()
    host_end.close()
    _, records = read_pcap(tmp_path / "guest.pcap")
    assert len(records) == 2 + 40 + 2  # every frame, both directions


@pytest.mark.parametrize("kind", ["seqpacket", "loopback"])
def test_megabytes_of_udp_verified_at_the_far_end(kind):
    guest, host_end = make_pair(kind)
    responder = Responder(host_end, R_IP, mac=R_MAC, udp_sink_ports=[5001], max_records=100_000)
    rng = random.Random(5)
    digest = hashlib.sha256()
    total = 0
    count = 0
    with responder:
        while total < 4 << 20:
            payload = rng.randbytes(rng.randint(1, 1472))
            digest.update(payload)
            total += len(payload)
            count += 1
            send_all(guest, udp_frame(R_MAC, G_MAC, G_IP, R_IP, 40000, 5001, payload, ip_ident=count))
        # ICMP is answered only after everything sent before it: a barrier for the sink.
        send_all(guest, icmp_echo_frame(R_MAC, G_MAC, G_IP, R_IP, 1, 1, b"done"))
        wait_for(guest, 1)
    record = responder.udp(5001)
    assert (record.datagrams, record.bytes) == (count, total)
    assert record.sha256 == digest.hexdigest()
    stats = responder.stats()
    assert stats.ignored == {} and stats.udp_no_checksum == 0
    guest.close()
    host_end.close()
