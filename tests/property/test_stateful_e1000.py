"""Stateful model test of the e1000, through the in-package driver simulator.

A ``RuleBasedStateMachine`` plays Linux's e1000 driver (``E1000Driver``) and the wire (an
in-memory loopback peer) against one device: opening the rings, plain, checksum-offloaded
and TSO transmits, receives that pass or fail the address filter, cable pulls, clock ticks,
register scribbles (after which the driver must re-open), PCI resets and snapshot round
trips. The model is what the wire and the driver must see: every transmitted frame
arrives once and intact while the link is up and nothing leaves while it is down, a TSO
send arrives as ``ceil(payload / mss)`` segments whose payloads add up to the original,
every frame addressed to the NIC is received intact, others are filtered, and STATUS.LU
follows the cable.
"""

from __future__ import annotations

import math
import struct

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devmodels import Machine, from_dict, to_dict
from devmodels.backends import LoopbackBackend
from devmodels.e1000 import DEFAULT_MAC, E1000, E1000State
from devmodels.e1000 import regs as r
from devmodels.e1000.testing import E1000Driver
from devmodels.pci import defs as pci

RAM = 1 << 20
PEER = bytes.fromhex("020000000001")
OTHER = bytes.fromhex("020000000099")
# Registers a scribble may hit: not MDIC (it reaches the PHY, which a MAC reset keeps) and
# not EECD (bit-banging could rewrite the EEPROM the driver reads its MAC from).
SCRIBBLE = st.integers(0, r.BAR0_SIZE // 4 - 1).map(lambda i: 4 * i).filter(lambda o: o not in (r.MDIC, r.EECD))


def tcp_frame(payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    tcp = struct.pack("!HHIIBBHHH", 1234, 5678, 1, 0, 0x50, 0x10, 8192, 0, 0)
    return PEER + DEFAULT_MAC + b"\x08\x00" + ip + tcp + payload


class E1000Model(RuleBasedStateMachine):
    """The device, a driver simulator and the wire, against what they must observe."""

    @initialize()
    def plug(self) -> None:
        self.machine = Machine(ram_size=RAM, ram_backing="bytearray")
        self.wire, self.peer = LoopbackBackend.pair(capacity=64)
        self.device = E1000(self.machine.memory, self.wire)
        self.devfn = self.machine.add_pci(self.device) << 3
        info = next(i for i in self.machine.enumerate() if i.devfn == self.devfn)
        self.bars = {b.index: b.address for b in info.bars if b.address is not None}
        self.driver = E1000Driver(self.machine, self.device, tx_ring=8, rx_ring=8, dma_base=0x20000)
        self.driver.devfn, self.driver.bar0, self.driver.io = self.devfn, self.bars[0], self.bars[1]
        self.driver.mac = DEFAULT_MAC
        self.link = True
        self.opened = False
        self.tx_enabled = False  # TCTL.EN: the driver sets it when it first sees the link up
        self._enable()

    def _enable(self) -> None:
        self.machine.config_write(0, self.devfn, pci.PCI_BASE_ADDRESS_0, 4, self.bars[0])
        self.machine.config_write(0, self.devfn, pci.PCI_BASE_ADDRESS_0 + 4, 4, self.bars[1] | 1)
        command = pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_IO | pci.PCI_COMMAND_MASTER
        self.machine.config_write(0, self.devfn, pci.PCI_COMMAND, 2, command)

    def teardown(self) -> None:
        if hasattr(self, "machine"):
            self.machine.close()
            self.wire.close()
            self.peer.close()

    # -- rules -------------------------------------------------------------------------------

    @precondition(lambda self: not self.opened)
    @rule(itr=st.sampled_from([0, 8000, 20000]), rdtr=st.sampled_from([0, 16]), tadv=st.sampled_from([0, 64]))
    def open(self, itr: int, rdtr: int, tadv: int) -> None:
        self.driver.reset_hw()
        self.driver.link = False  # after a reset Linux starts with the carrier off
        self.driver.open(itr=itr, rdtr=rdtr, tadv=tadv)
        self.driver.check_link()
        self.opened = True
        self.tx_enabled = self.link

    def _sent(self) -> list[bytes]:
        self.driver.run_timers()
        self.driver.clean_tx()
        return self.peer.receive(64)

    # Linux hands the driver nothing to send before its watchdog saw carrier (TCTL.EN); after
    # that a cable pull makes the NIC drop what it transmits.
    @precondition(lambda self: self.opened and self.tx_enabled)
    @rule(payload=st.binary(max_size=1500), checksum=st.booleans())
    def send(self, payload: bytes, checksum: bool) -> None:
        frame = PEER + DEFAULT_MAC + b"\x88\xb5" + payload
        if checksum and len(frame) >= 40:
            assert self.driver.xmit(frame, csum_start=14, csum_offset=4, tcp=False)
        else:
            assert self.driver.xmit(frame)
        sent = self._sent()
        if not self.link:
            assert sent == []
            return
        assert len(sent) == 1
        padded = frame.ljust(60, b"\0")
        if checksum and len(frame) >= 40:
            # Only the 16-bit checksum field may differ.
            assert sent[0][:18] + sent[0][20:] == padded[:18] + padded[20:]
        else:
            assert sent == [padded]

    @precondition(lambda self: self.opened and self.link and self.tx_enabled)
    @rule(extra=st.integers(1, 1500), mss=st.sampled_from([64, 536, 1460]))
    def send_tso(self, extra: int, mss: int) -> None:
        size = mss + extra  # Linux segments only what exceeds the MSS
        payload = bytes(i * 13 & 0xFF for i in range(size))
        assert self.driver.xmit(tcp_frame(payload), tso_mss=mss)
        segments = self._sent()
        assert len(segments) == math.ceil(size / mss)
        carried = b""
        for segment in segments:
            assert len(segment) <= 54 + mss
            total = struct.unpack_from("!H", segment, 16)[0]
            # IP total length covers the segment; a short last one is padded to 60 (TCTL.PSP).
            assert total == len(segment) - 14 or (len(segment) == 60 and total < 46)
            carried += segment[54 : 14 + total]
        assert carried == payload

    @precondition(lambda self: self.opened)
    @rule(payload=st.binary(min_size=46, max_size=1500), ours=st.booleans())
    def receive(self, payload: bytes, ours: bool) -> None:
        frame = (DEFAULT_MAC if ours else OTHER) + PEER + b"\x88\xb5" + payload
        self.peer.send(frame)
        self.device.receive_pending()
        self.driver.run_timers()
        got = [f.data for f in self.driver.clean_rx()]
        if not self.link:
            assert got == []
            self.wire.receive(64)  # the cable is out: the frame never reached the NIC
            return
        assert got == ([frame] if ours else [])

    @rule(up=st.booleans())
    def cable(self, up: bool) -> None:
        self.device.set_link(up)
        self.link = up
        if self.opened:
            self.driver.check_link()
            self.tx_enabled = self.tx_enabled or up

    @rule(ns=st.integers(0, 10_000_000))
    def tick(self, ns: int) -> None:
        self.driver.advance(ns)

    @rule(offset=SCRIBBLE, value=st.integers(0, 0xFFFF_FFFF))
    def scribble(self, offset: int, value: int) -> None:
        self.driver.ew32(offset, value)
        self.driver.er32(offset)
        self.opened = False

    @rule()
    def pci_reset(self) -> None:
        self.device.reset()
        self._enable()
        self.opened = False

    @rule()
    def snapshot(self) -> None:
        before = self.device.state()
        rebuilt = from_dict(E1000State, to_dict(before))
        assert rebuilt == before
        self.device.restore(rebuilt)
        assert self.device.state() == before

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def status_follows_the_cable(self) -> None:
        if hasattr(self, "machine"):
            assert bool(self.driver.er32(r.STATUS) & r.STATUS_LU) == self.link


E1000Model.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestE1000 = E1000Model.TestCase
