"""The transmit engine (SDM §3.3-3.5): descriptors written by hand into the ring."""

from __future__ import annotations

import struct

import pytest

from devmodels import trace
from devmodels.e1000 import regs as r
from devmodels.e1000.layouts import TDESC_CONTEXT, TDESC_DATA, TDESC_LEGACY

from .conftest import Rig
from .test_offload import ipv4_tcp, linux_tso_context, ref_sum, tcp_ok

BUF = 0x80_0000  # buffers for hand-written descriptors


class Ring:
    """Writes descriptors at the driver's ring and kicks TDT."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.mem = rig.machine.memory
        self.base = rig.driver.tx_ring
        self.size = rig.driver.tx_count
        self.tail = rig.device.registers["TDT"]
        self.buf = BUF

    def _put(self, raw: bytes) -> int:
        index = self.tail
        self.mem.write(self.base + 16 * index, raw)
        self.tail = (index + 1) % self.size
        return index

    def data(self, payload: bytes) -> int:
        addr = self.buf
        self.mem.write(addr, payload)
        self.buf += (len(payload) + 0xFF) & ~0xFF
        return addr

    def legacy(self, payload: bytes, cmd: int, *, cso: int = 0, css: int = 0, special: int = 0) -> int:
        addr = self.data(payload)
        return self._put(TDESC_LEGACY.build({"buffer_addr": addr, "length": len(payload), "cso": cso, "cmd": cmd,
                                             "sta": 0, "css": css, "special": special}))

    def context(self, *, ipcss: int = 0, ipcso: int = 0, ipcse: int = 0, tucss: int = 0, tucso: int = 0,
                tucse: int = 0, paylen: int = 0, tucmd: int = 0, hdrlen: int = 0, mss: int = 0) -> int:
        return self._put(TDESC_CONTEXT.build({
            "ipcss": ipcss, "ipcso": ipcso, "ipcse": ipcse, "tucss": tucss, "tucso": tucso, "tucse": tucse,
            "cmd_and_length": {"tucmd": tucmd | r.TXD_CMD_DEXT, "dtyp": 0, "paylen": paylen},
            "sta": 0, "hdrlen": hdrlen, "mss": mss}))

    def ext(self, payload: bytes, dcmd: int, *, popts: int = 0, special: int = 0, addr: int | None = None) -> int:
        if addr is None:
            addr = self.data(payload)
        return self._put(TDESC_DATA.build({
            "buffer_addr": addr, "lower": {"dcmd": dcmd | r.TXD_CMD_DEXT, "dtyp": 1, "dtalen": len(payload)},
            "sta": 0, "popts": popts, "special": special}))

    def kick(self) -> None:
        self.rig.driver.ew32(r.TDT, self.tail)

    def status(self, index: int) -> int:
        return self.mem.load_u8(self.base + 16 * index + 12)


@pytest.fixture
def ring(up: Rig) -> Ring:
    up.sent()
    return Ring(up)


FRAME = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + bytes(range(46))


def test_legacy_single_and_multi_descriptor(ring: Ring) -> None:
    i = ring.legacy(FRAME, r.TXD_CMD_EOP | r.TXD_CMD_RS)
    ring.legacy(FRAME[:20], 0)
    k = ring.legacy(FRAME[20:], r.TXD_CMD_EOP | r.TXD_CMD_RS)
    ring.kick()
    assert ring.rig.sent() == [FRAME, FRAME]
    assert ring.status(i) & r.TXD_STAT_DD and ring.status(k) & r.TXD_STAT_DD
    assert ring.rig.device.registers["TDH"] == ring.tail


def test_rs_only_writes_dd(ring: Ring) -> None:
    i = ring.legacy(FRAME, r.TXD_CMD_EOP)
    ring.kick()
    assert ring.status(i) == 0
    assert len(ring.rig.sent()) == 1


def test_short_frame_padded_with_psp(ring: Ring) -> None:
    ring.legacy(FRAME[:20], r.TXD_CMD_EOP)
    ring.kick()
    (frame,) = ring.rig.sent()
    assert len(frame) == 60 and frame[:20] == FRAME[:20] and frame[20:] == bytes(40)


def test_legacy_checksum_insertion(ring: Ring) -> None:
    frame = ipv4_tcp(b"legacy")
    struct.pack_into("!H", frame, 50, ref_sum(frame[26:34] + struct.pack("!BBH", 0, 6, len(frame) - 34)))
    ring.legacy(bytes(frame), r.TXD_CMD_EOP | r.TXD_CMD_IC, cso=50, css=34)
    ring.kick()
    (sent,) = ring.rig.sent()
    assert tcp_ok(sent)


def test_context_and_checksum_offload(ring: Ring) -> None:
    frame = ipv4_tcp(b"offloaded " * 40)
    struct.pack_into("!H", frame, 50, ref_sum(frame[26:34] + struct.pack("!BBH", 0, 6, len(frame) - 34)))
    struct.pack_into("!H", frame, 24, 0)
    ring.context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=50, tucmd=r.TUCMD_TCP | r.TUCMD_IP)
    ring.ext(bytes(frame[:100]), 0, popts=r.POPTS_IXSM | r.POPTS_TXSM)
    ring.ext(bytes(frame[100:]), r.TXD_CMD_EOP | r.TXD_CMD_RS)
    ring.kick()
    (sent,) = ring.rig.sent()
    assert ref_sum(sent[14:34]) == 0xFFFF and tcp_ok(sent)


def test_tso_through_the_ring(ring: Ring) -> None:
    payload = bytes((i * 13) & 0xFF for i in range(9000))
    frame = ipv4_tcp(payload, flags=0x18)
    ctx = linux_tso_context(frame, 1448)
    ring.context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=50, paylen=ctx.paylen,
                 tucmd=r.TUCMD_TCP | r.TUCMD_IP | r.TUCMD_TSE, hdrlen=ctx.hdrlen, mss=1448)
    popts = r.POPTS_IXSM | r.POPTS_TXSM
    ring.ext(bytes(frame[:4096]), r.TXD_CMD_TSE, popts=popts)
    ring.ext(bytes(frame[4096:8192]), r.TXD_CMD_TSE)
    k = ring.ext(bytes(frame[8192:]), r.TXD_CMD_TSE | r.TXD_CMD_EOP | r.TXD_CMD_RS)
    ring.kick()
    sent = ring.rig.sent()
    assert len(sent) == 7
    assert b"".join(s[ctx.hdrlen :] for s in sent) == payload
    assert all(tcp_ok(s) and ref_sum(s[14:34]) == 0xFFFF for s in sent)
    assert ring.status(k) & r.TXD_STAT_DD
    assert ring.rig.device.registers["TSCTC"] == 1


def test_tso_mss_zero_dropped_and_counted(ring: Ring) -> None:
    frame = ipv4_tcp(bytes(3000))
    ring.context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=50, paylen=3000,
                 tucmd=r.TUCMD_TCP | r.TUCMD_IP | r.TUCMD_TSE, hdrlen=54, mss=0)
    k = ring.ext(bytes(frame), r.TXD_CMD_TSE | r.TXD_CMD_EOP | r.TXD_CMD_RS, popts=r.POPTS_TXSM)
    with trace.RecordingSink("e1000.tx_drop") as rec:
        ring.kick()
    assert ring.rig.sent() == []
    assert ring.status(k) & r.TXD_STAT_DD
    assert ring.rig.device.registers["TSCTFC"] == 1
    assert rec.events[0][1]["error"] == "TsoContextError"


def test_vlan_insertion_needs_ctrl_vme(ring: Ring) -> None:
    ring.legacy(FRAME, r.TXD_CMD_EOP | r.TXD_CMD_VLE, special=0x0123)
    ring.kick()
    assert ring.rig.sent() == [FRAME]  # CTRL.VME clear: VLE ignored
    ring.rig.driver.ew32(r.VET, 0x8100)
    ring.rig.driver.ew32(r.CTRL, ring.rig.driver.er32(r.CTRL) | r.CTRL_VME)
    ring.legacy(FRAME, r.TXD_CMD_EOP | r.TXD_CMD_VLE, special=0x0123)
    ring.kick()
    (sent,) = ring.rig.sent()
    assert sent == FRAME[:12] + b"\x81\x00\x01\x23" + FRAME[12:]


def test_partial_packet_waits_for_eop(ring: Ring) -> None:
    first = ring.legacy(FRAME[:30], r.TXD_CMD_RS)
    ring.kick()
    assert ring.rig.sent() == []
    assert ring.rig.device.registers["TDH"] == first
    assert ring.status(first) == 0
    ring.legacy(FRAME[30:], r.TXD_CMD_EOP | r.TXD_CMD_RS)
    ring.kick()
    assert ring.rig.sent() == [FRAME]
    assert ring.status(first) & r.TXD_STAT_DD


def test_buffer_outside_ram_dropped_but_completed(ring: Ring) -> None:
    k = ring.ext(b"\0" * 100, r.TXD_CMD_EOP | r.TXD_CMD_RS, addr=0xFFFF_FFFF_0000)
    ring.kick()
    assert ring.rig.sent() == []
    assert ring.status(k) & r.TXD_STAT_DD
    assert ring.rig.device.registers["TDH"] == ring.tail


def test_oversized_packet_dropped(ring: Ring) -> None:
    addr = ring.data(bytes(16))
    for _ in range(6):  # 6 x 16000 bytes > 64 KiB + headers
        ring.ext(bytes(16000), 0, addr=addr)
    k = ring.ext(bytes(100), r.TXD_CMD_EOP | r.TXD_CMD_RS, addr=addr)
    ring.kick()
    assert ring.rig.sent() == []
    assert ring.status(k) & r.TXD_STAT_DD


def test_tdt_past_ring_is_ignored(ring: Ring) -> None:
    ring.legacy(FRAME, r.TXD_CMD_EOP | r.TXD_CMD_RS)
    ring.rig.driver.ew32(r.TDT, ring.size + 5)
    assert ring.rig.sent() == []
    assert ring.rig.device.registers["TDH"] == 0


def test_no_dma_without_bus_master(ring: Ring) -> None:
    drv = ring.rig.driver
    command = ring.rig.machine.config_read(0, drv.devfn, 4, 2)
    ring.rig.machine.config_write(0, drv.devfn, 4, 2, command & ~0x4)
    ring.legacy(FRAME, r.TXD_CMD_EOP | r.TXD_CMD_RS)
    ring.kick()
    assert ring.rig.sent() == []
    ring.rig.machine.config_write(0, drv.devfn, 4, 2, command)
    ring.kick()
    assert ring.rig.sent() == [FRAME]


def test_tx_disabled_holds_packets(ring: Ring) -> None:
    drv = ring.rig.driver
    tctl = drv.er32(r.TCTL)
    drv.ew32(r.TCTL, tctl & ~r.TCTL_EN)
    ring.legacy(FRAME, r.TXD_CMD_EOP)
    ring.kick()
    assert ring.rig.sent() == []
    drv.ew32(r.TCTL, tctl)
    assert ring.rig.sent() == [FRAME]


def test_unknown_descriptor_type_dropped(ring: Ring) -> None:
    raw = TDESC_DATA.build({"buffer_addr": ring.data(FRAME), "lower": {"dcmd": r.TXD_CMD_DEXT | r.TXD_CMD_EOP | r.TXD_CMD_RS,
                            "dtyp": 7, "dtalen": len(FRAME)}, "sta": 0, "popts": 0, "special": 0})
    k = ring._put(raw)
    ring.kick()
    assert ring.rig.sent() == []
    assert ring.status(k) & r.TXD_STAT_DD


def test_txqe_and_statistics(ring: Ring) -> None:
    drv = ring.rig.driver
    drv.er32(r.ICR)
    for reg in ("GPTC", "TPT", "BPTC", "GOTCL", "GOTCH"):
        drv.er32(ring.rig.device.registers.reg(reg).offset)
    ring.legacy(FRAME, r.TXD_CMD_EOP)
    ring.kick()
    assert drv.er32(r.ICR) & r.ICR_TXQE
    assert drv.er32(r.STATS_32["GPTC"]) == 1
    assert drv.er32(r.STATS_32["TPT"]) == 1
    assert drv.er32(r.STATS_32["BPTC"]) == 1
    assert drv.er32(r.STATS_64["GOTC"][0]) == len(FRAME) + 4


def test_loopback_mac_mode(ring: Ring) -> None:
    drv = ring.rig.driver
    drv.ew32(r.RCTL, drv.er32(r.RCTL) | r.RCTL_LBM_MAC | r.RCTL_UPE)
    ring.legacy(FRAME, r.TXD_CMD_EOP)
    ring.kick()
    assert ring.rig.sent() == []
    frames = drv.clean_rx()
    assert [f.data for f in frames] == [FRAME]
