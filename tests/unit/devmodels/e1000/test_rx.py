"""The receive engine (SDM §3.2, ch. 9): filtering, multi-descriptor frames, checksum
status, VLAN stripping, ring-full handling, statistics."""

from __future__ import annotations

import struct

import pytest

from devmodels.e1000 import RxResult
from devmodels.e1000 import regs as r
from devmodels.e1000.offload import fcs, insert_checksum
from devmodels.e1000.rx import mta_hash

from .conftest import Rig
from .test_offload import ipv4_tcp, ref_sum

OTHER = b"\x02\x00\x00\x00\x00\x99"


def frame_to(dest: bytes, body: bytes = bytes(50), ethertype: bytes = b"\x08\x00") -> bytes:
    return dest + OTHER + ethertype + body


@pytest.fixture
def dev(up: Rig) -> Rig:
    up.driver.clean_rx()
    return up


def test_unicast_to_station_address(dev: Rig) -> None:
    frame = frame_to(dev.driver.mac)
    assert dev.device.receive_frame(frame) is RxResult.DELIVERED
    (got,) = dev.driver.clean_rx()
    assert got.data == frame
    assert got.status & (r.RXD_STAT_DD | r.RXD_STAT_EOP) == r.RXD_STAT_DD | r.RXD_STAT_EOP


def test_other_unicast_filtered_unless_promiscuous(dev: Rig) -> None:
    frame = frame_to(b"\x02\x11\x22\x33\x44\x55")
    assert dev.device.receive_frame(frame) is RxResult.FILTERED
    dev.driver.ew32(r.RCTL, dev.driver.er32(r.RCTL) | r.RCTL_UPE)
    assert dev.device.receive_frame(frame) is RxResult.DELIVERED


def test_rar_needs_address_valid(dev: Rig) -> None:
    mac = b"\x02\x11\x22\x33\x44\x55"
    drv = dev.driver
    drv.ew32(r.RAL0 + 8 * 3, int.from_bytes(mac[:4], "little"))
    drv.ew32(r.RAL0 + 8 * 3 + 4, int.from_bytes(mac[4:], "little"))
    assert dev.device.receive_frame(frame_to(mac)) is RxResult.FILTERED
    drv.ew32(r.RAL0 + 8 * 3 + 4, int.from_bytes(mac[4:], "little") | r.RAH_AV)
    assert dev.device.receive_frame(frame_to(mac)) is RxResult.DELIVERED


def test_broadcast_needs_bam(dev: Rig) -> None:
    frame = frame_to(b"\xff" * 6)
    assert dev.device.receive_frame(frame) is RxResult.DELIVERED
    dev.driver.ew32(r.RCTL, dev.driver.er32(r.RCTL) & ~r.RCTL_BAM)
    assert dev.device.receive_frame(frame) is RxResult.FILTERED


@pytest.mark.parametrize("mo", range(4))
def test_multicast_hash_per_mo(dev: Rig, mo: int) -> None:
    group = bytes.fromhex("01005e0a0b0c")
    drv = dev.driver
    frame = frame_to(group)
    drv.ew32(r.RCTL, (drv.er32(r.RCTL) & ~(0b11 << r.RCTL_MO_SHIFT)) | mo << r.RCTL_MO_SHIFT)
    assert dev.device.receive_frame(frame) is RxResult.FILTERED
    index = mta_hash(group, mo)
    # Linux e1000_hash_mc_addr: [47:36], [46:35], [45:34], [43:32]
    shift = (36, 35, 34, 32)[mo]
    value = int.from_bytes(group[::-1], "big")  # address bit n = bit n of the little-endian number
    assert index == (value >> shift) & 0xFFF
    drv.ew32(r.MTA + 4 * (index >> 5), 1 << (index & 0x1F))
    assert dev.device.receive_frame(frame) is RxResult.DELIVERED


def test_multicast_promiscuous(dev: Rig) -> None:
    frame = frame_to(bytes.fromhex("333300000001"))
    assert dev.device.receive_frame(frame) is RxResult.FILTERED
    dev.driver.ew32(r.RCTL, dev.driver.er32(r.RCTL) | r.RCTL_MPE)
    assert dev.device.receive_frame(frame) is RxResult.DELIVERED


def test_short_frame_padded_and_fcs_appended(dev: Rig) -> None:
    frame = frame_to(dev.driver.mac, b"", b"\x08\x06")
    assert dev.device.receive_frame(frame) is RxResult.DELIVERED
    mem = dev.machine.memory
    desc = dev.driver.rx_ring + 16 * dev.driver.rx_clean
    addr, length = struct.unpack("<QH", mem.read(desc, 10))
    padded = frame + bytes(60 - len(frame))
    assert length == 64
    assert mem.read(addr, 64) == padded + fcs(padded)


def test_secrc_strips_fcs(dev: Rig) -> None:
    dev.driver.ew32(r.RCTL, dev.driver.er32(r.RCTL) | r.RCTL_SECRC)
    dev.device.receive_frame(frame_to(dev.driver.mac))
    desc = dev.driver.rx_ring + 16 * dev.driver.rx_clean
    assert dev.machine.memory.load_u16(desc + 8) == 64


def test_large_frame_spans_descriptors_with_eop(dev: Rig) -> None:
    drv = dev.driver
    drv.ew32(r.RCTL, drv.er32(r.RCTL) | r.RCTL_LPE)
    body = bytes(i & 0xFF for i in range(5000))
    frame = frame_to(drv.mac, body)
    assert dev.device.receive_frame(frame) is RxResult.DELIVERED
    statuses = []
    for i in range(3):
        statuses.append(dev.machine.memory.load_u8(drv.rx_ring + 16 * (drv.rx_clean + i) + 12))
    assert [s & r.RXD_STAT_EOP for s in statuses] == [0, 0, r.RXD_STAT_EOP]
    assert all(s & r.RXD_STAT_DD for s in statuses)
    (got,) = drv.clean_rx()
    assert got.data == frame


def test_oversize_without_lpe_counted_roc(dev: Rig) -> None:
    frame = frame_to(dev.driver.mac, bytes(1501))
    assert dev.device.receive_frame(frame) is RxResult.BAD_LENGTH
    assert dev.driver.er32(r.STATS_32["ROC"]) == 1
    assert dev.device.receive_frame(frame_to(dev.driver.mac, bytes(1500))) is RxResult.DELIVERED


def test_ring_full_drops_counts_and_raises_rxo_spec_3_2_6(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    drv.er32(r.ICR)
    frame = frame_to(drv.mac)
    delivered = 0
    while device.receive_frame(frame) is RxResult.DELIVERED:
        delivered += 1
    assert delivered == drv.rx_count - 1  # RDT points at the one descriptor kept back
    assert device.registers["RDH"] == device.registers["RDT"]
    assert device.receive_frame(frame) is RxResult.NO_BUFFERS
    assert drv.er32(r.STATS_32["MPC"]) == 2
    assert drv.er32(r.ICR) & r.ICR_RXO
    assert len(drv.clean_rx()) == delivered
    assert device.receive_frame(frame) is RxResult.DELIVERED


def test_rxdmt0_when_free_descriptors_low(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    drv.er32(r.ICR)
    for _ in range(drv.rx_count // 2 - 2):
        device.receive_frame(frame_to(drv.mac))
    assert not drv.er32(r.ICR) & r.ICR_RXDMT0
    device.receive_frame(frame_to(drv.mac))
    device.receive_frame(frame_to(drv.mac))
    assert drv.er32(r.ICR) & r.ICR_RXDMT0


def _tcp_frame(mac: bytes) -> bytearray:
    frame = ipv4_tcp(b"checksummed payload" * 10)
    frame[0:6] = mac
    insert_checksum(frame, 14, 24, 33)
    struct.pack_into("!H", frame, 50, ref_sum(frame[26:34] + struct.pack("!BBH", 0, 6, len(frame) - 34)))
    insert_checksum(frame, 34, 50, 0)
    return frame


def test_checksum_offload_status(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    frame = _tcp_frame(drv.mac)
    device.receive_frame(frame)
    frame[70] ^= 0x55
    device.receive_frame(frame)
    good, bad = drv.clean_rx()
    assert good.status & r.RXD_STAT_TCPCS and not good.status & r.RXD_STAT_IXSM
    assert not good.status & r.RXD_STAT_IPCS  # Linux enables TUOFL only
    assert not good.errors & r.RXD_ERR_TCPE
    assert bad.errors & r.RXD_ERR_TCPE
    drv.ew32(r.RXCSUM, r.RXCSUM_IPOFL | r.RXCSUM_TUOFL)
    frame[70] ^= 0x55
    frame[22] ^= 1  # corrupt the IP header (TTL)
    device.receive_frame(frame)
    (got,) = drv.clean_rx()
    assert got.status & r.RXD_STAT_IPCS and got.errors & r.RXD_ERR_IPE
    drv.ew32(r.RXCSUM, 0)
    device.receive_frame(frame)
    (got,) = drv.clean_rx()
    assert got.status & r.RXD_STAT_IXSM and not got.errors


def test_packet_checksum_field(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    drv.ew32(r.RXCSUM, 14)
    frame = _tcp_frame(drv.mac)
    device.receive_frame(frame)
    (got,) = drv.clean_rx()
    assert got.csum == ref_sum(bytes(frame[14:])) or (got.csum, ref_sum(bytes(frame[14:]))) == (0xFFFF, 0)


def test_vlan_strip_and_filter(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    drv.ew32(r.VET, 0x8100)
    tagged = drv.mac + OTHER + b"\x81\x00\x20\x64" + b"\x08\x00" + bytes(50)
    device.receive_frame(tagged)
    (got,) = drv.clean_rx()
    assert got.data == tagged and not got.status & r.RXD_STAT_VP  # VME clear: tag kept
    drv.ew32(r.CTRL, drv.er32(r.CTRL) | r.CTRL_VME)
    drv.ew32(r.RCTL, drv.er32(r.RCTL) | r.RCTL_VFE)
    assert device.receive_frame(tagged) is RxResult.FILTERED  # VID 100 not in VFTA
    drv.ew32(r.VFTA + 4 * (100 >> 5), 1 << (100 & 31))
    assert device.receive_frame(tagged) is RxResult.DELIVERED
    (got,) = drv.clean_rx()
    assert got.status & r.RXD_STAT_VP and got.special == 0x2064
    assert got.data == drv.mac + OTHER + b"\x08\x00" + bytes(50)


def test_cfi_filter(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    drv.ew32(r.VET, 0x8100)
    drv.ew32(r.RCTL, drv.er32(r.RCTL) | r.RCTL_CFIEN)
    tagged = drv.mac + OTHER + b"\x81\x00\x10\x05" + b"\x08\x00" + bytes(50)  # CFI = 1
    assert device.receive_frame(tagged) is RxResult.FILTERED
    drv.ew32(r.RCTL, drv.er32(r.RCTL) | r.RCTL_CFI)
    assert device.receive_frame(tagged) is RxResult.DELIVERED


def test_receiver_disabled_and_link_down(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    device.set_link(False)
    assert device.receive_frame(frame_to(drv.mac)) is RxResult.DISABLED
    device.set_link(True)
    drv.ew32(r.RCTL, drv.er32(r.RCTL) & ~r.RCTL_EN)
    assert device.receive_frame(frame_to(drv.mac)) is RxResult.DISABLED
    assert drv.er32(r.STATS_32["MPC"]) == 0


def test_runt_counted(dev: Rig) -> None:
    assert dev.device.receive_frame(b"\x01" * 10) is RxResult.BAD_LENGTH
    assert dev.driver.er32(r.STATS_32["RUC"]) == 1


def test_receive_statistics(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    device.receive_frame(frame_to(drv.mac, bytes(100)))
    device.receive_frame(frame_to(b"\xff" * 6, bytes(46)))
    assert drv.er32(r.STATS_32["GPRC"]) == 2
    assert drv.er32(r.STATS_32["BPRC"]) == 1
    assert drv.er32(r.STATS_32["TPR"]) == 2
    assert drv.er32(r.STATS_64["GORC"][0]) == (114 + 4) + (60 + 4)
    assert drv.er32(r.STATS_32["PRC127"]) == 1
    assert drv.er32(r.STATS_32["PRC64"]) == 1


def test_pull_mode_waits_for_descriptors(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    frames = [frame_to(drv.mac, bytes([i]) * 50) for i in range(drv.rx_count + 10)]
    for f in frames:
        assert dev.host.send(f)
    taken = device.receive_pending(budget=1000)
    assert taken == drv.rx_count - 1
    assert device.registers["MPC"] == 0
    got = [f.data for f in drv.clean_rx()]  # the RDT write pulls the rest
    got += [f.data for f in drv.clean_rx()]
    assert got == frames


def test_bad_ring_registers_never_raise(dev: Rig) -> None:
    drv, device = dev.driver, dev.device
    drv.ew32(r.RDBAL, 0xFFFF_F000)
    drv.ew32(r.RDBAH, 0xFFFF_FFFF)
    assert device.receive_frame(frame_to(drv.mac)) is RxResult.RING_ERROR
    drv.ew32(r.RDH, 0xFFFF)
    assert device.receive_frame(frame_to(drv.mac)) is RxResult.NO_BUFFERS
