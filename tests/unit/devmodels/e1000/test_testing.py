"""The driver simulator doing real traffic through a Machine: ARP, ICMP echo and UDP to a
host-side responder, checksum offload on and off, TSO between two e1000s back to back."""

from __future__ import annotations

import hashlib
import struct

import pytest

from devmodels.backends.net import LoopbackBackend, Responder, arp_frame, icmp_echo_frame, udp_frame
from devmodels.e1000 import E1000
from devmodels.e1000 import regs as r
from devmodels.e1000.testing import DriverError, E1000Driver

from .conftest import Rig
from .test_offload import ipv4_tcp, ref_sum

GUEST_IP = bytes([10, 0, 2, 15])
HOST_IP = bytes([10, 0, 2, 2])


@pytest.fixture
def net(up: Rig) -> tuple[Rig, Responder]:
    return up, Responder(up.host, "10.0.2.2", udp_echo_ports=(7,), udp_sink_ports=(9,))


def pump(rig: Rig, responder: Responder) -> list[bytes]:
    """Move frames both ways until quiet; return what the guest received."""
    got: list[bytes] = []
    for _ in range(1000):
        moved = responder.poll()
        moved += rig.device.receive_pending()
        frames = rig.driver.poll()
        got += [f.data for f in frames]
        if not moved and not frames:
            break
    return got


def test_probe_reads_what_linux_reads(rig: Rig) -> None:
    drv = rig.driver
    drv.probe()
    assert drv.mac == rig.device.eeprom.mac
    assert rig.device.registers["CTRL"] & r.CTRL_SLU
    assert rig.device.registers["RAL[0]"] == int.from_bytes(drv.mac[:4], "little")


def test_probe_fails_without_a_device(machine) -> None:  # type: ignore[no-untyped-def]
    dev = E1000(machine.memory)
    with pytest.raises(DriverError):
        E1000Driver(machine, dev).probe()


def test_arp_and_ping(net: tuple[Rig, Responder]) -> None:
    rig, responder = net
    drv = rig.driver
    drv.xmit(arp_frame(1, drv.mac, GUEST_IP, bytes(6), HOST_IP))
    (reply,) = pump(rig, responder)
    assert reply[12:14] == b"\x08\x06" and reply[20:22] == b"\x00\x02"
    host_mac = reply[22:28]
    for seq in range(20):
        drv.xmit(icmp_echo_frame(host_mac, drv.mac, GUEST_IP, HOST_IP, 0x4242, seq, b"ping" * 10))
    replies = pump(rig, responder)
    assert len(replies) == 20
    assert [struct.unpack_from("!H", f, 40)[0] for f in replies] == list(range(20))
    assert all(f[34] == 0 for f in replies)  # echo reply
    assert responder.stats().icmp_replies == 20


def _udp_partial(dst_mac: bytes, src_mac: bytes, payload: bytes) -> bytes:
    """A UDP frame as Linux hands it to the driver with CHECKSUM_PARTIAL: the checksum field
    holds the folded pseudo-header sum."""
    frame = bytearray(udp_frame(dst_mac, src_mac, GUEST_IP, HOST_IP, 4000, 9, payload))
    length = struct.unpack_from("!H", frame, 38)[0]
    struct.pack_into("!H", frame, 40, ref_sum(GUEST_IP + HOST_IP + struct.pack("!BBH", 0, 17, length)))
    return bytes(frame)


@pytest.mark.parametrize("offload", [True, False])
def test_udp_megabytes_checksums_verified_at_far_end(net: tuple[Rig, Responder], offload: bool) -> None:
    rig, responder = net
    drv = rig.driver
    drv.xmit(arp_frame(1, drv.mac, GUEST_IP, bytes(6), HOST_IP))
    host_mac = pump(rig, responder)[0][6:12]
    digest = hashlib.sha256()
    total = 0
    n = 0
    while total < 2 << 20:
        payload = bytes((n + i) & 0xFF for i in range(1472))
        if offload:
            frame = _udp_partial(host_mac, drv.mac, payload)
            sent = drv.xmit(frame, csum_start=34, csum_offset=6, tcp=False)
        else:
            sent = drv.xmit(udp_frame(host_mac, drv.mac, GUEST_IP, HOST_IP, 4000, 9, payload))
        if not sent:
            pump(rig, responder)
            continue
        digest.update(payload)
        total += len(payload)
        n += 1
        if n % 16 == 0:
            pump(rig, responder)
    pump(rig, responder)
    record = responder.udp(9)
    assert record.datagrams == n and record.bytes == total
    assert record.sha256 == digest.hexdigest()
    assert responder.stats().ignored == {}
    assert responder.stats().udp_no_checksum == 0


def test_udp_echo_back_with_rx_checksum_status(net: tuple[Rig, Responder]) -> None:
    rig, responder = net
    drv = rig.driver
    drv.xmit(arp_frame(1, drv.mac, GUEST_IP, bytes(6), HOST_IP))
    host_mac = pump(rig, responder)[0][6:12]
    drv.xmit(udp_frame(host_mac, drv.mac, GUEST_IP, HOST_IP, 4000, 7, b"echo me" * 100))
    responder.poll()
    rig.device.receive_pending()
    rig.driver.run_timers()
    drv.er32(r.ICR)
    (frame,) = drv.clean_rx()
    assert frame.data[42:] == b"echo me" * 100
    assert frame.status & r.RXD_STAT_TCPCS and not frame.errors & r.RXD_ERR_TCPE


def test_tso_between_two_e1000s() -> None:
    a, b = Rig(), Rig()
    try:
        # rewire: A's wire end talks to B's wire end
        a.host.close()
        b.host.close()
        a.wire, b.wire = LoopbackBackend.pair(capacity=4096)
        a.device.backend, b.device.backend = a.wire, b.wire
        drv_a, drv_b = a.up(), b.up()
        payload = bytes((i * 31) & 0xFF for i in range(60000))
        frame = ipv4_tcp(payload, flags=0x18)
        frame[0:6], frame[6:12] = drv_b.mac, drv_a.mac
        assert drv_a.xmit(bytes(frame), tso_mss=1448)
        received = []
        for _ in range(100):
            b.device.receive_pending()
            received += drv_b.poll()
            if len(received) >= 42:
                break
        assert len(received) == -(-60000 // 1448)
        data = b""
        for n, f in enumerate(received):
            assert f.status & r.RXD_STAT_TCPCS and not f.errors & r.RXD_ERR_TCPE
            assert ref_sum(f.data[14:34]) == 0xFFFF
            assert struct.unpack_from("!H", f.data, 18)[0] == (0x1234 + n) & 0xFFFF
            data += f.data[54:]
        assert data == payload
        drv_a.poll()
        assert drv_a.tx_clean == drv_a.tx_next
    finally:
        a.close()
        b.close()
