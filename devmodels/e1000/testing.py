"""A driver simulator for the e1000: what Linux's ``e1000`` driver does, through a ``Machine``.

Rules:

1. The simulator is a guest: it reaches the device only through config cycles, BAR0
   MMIO, BAR1 port I/O and guest RAM, in the order Linux does at probe (``e1000_probe``:
   reset through the I/O BAR, EEPROM bit-banging and checksum, MAC from the EEPROM, PHY
   detection and copper link setup), open (``e1000_configure_tx/rx``, interrupt enable,
   a forced LSC), transmit (context + data descriptors for checksum offload and TSO) and
   interrupt handling (read ICR, clean the rings, refill).
2. It also plays the VMM's clock: ``advance(ns)`` moves time and calls ``device.tick``.
3. Ring and buffer memory is laid out at fixed guest addresses from ``dma_base``.
4. The simulator needs only a ``MachineLike``: ``devmodels.Machine`` is one; a VMM
   integrator can wrap any transport (a proxy socket, vfio-user) in the same shape.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from collections.abc import Mapping, Sequence
from typing import Protocol

from .._errors import UsageError
from .._memory import GuestMemory
from ..pci import FunctionInfo
from ..testing import DriverError
from .._trace import tracepoint
from ..pci import defs
from . import regs as r
from .device import E1000
from .layouts import RX_DESC
from .phy import (
    M88_PHY_SPEC_CTRL,
    M88E1011_I_PHY_ID,
    MII_CR_AUTO_NEG_EN,
    MII_CR_RESET,
    MII_CR_RESTART_AUTO_NEG,
    MII_SR_LINK_STATUS,
    PHY_1000T_CTRL,
    PHY_AUTONEG_ADV,
    PHY_CTRL,
    PHY_ID1,
    PHY_ID2,
    PHY_STATUS,
)

__all__ = ["E1000Driver", "DriverError", "RxFrame", "MachineLike"]

_tp = tracepoint("e1000.driver")

MAX_DATA_PER_TXD = 4096  # Linux E1000_MAX_DATA_PER_TXD
IMS_ENABLE_MASK = r.ICR_RXT0 | r.ICR_TXDW | r.ICR_RXDMT0 | r.ICR_RXSEQ | r.ICR_LSC
EEPROM_READ_OPCODE = 0b110
_TX_DESC = struct.Struct("<QII")


class _Space(Protocol):
    def read(self, address: int, size: int) -> int: ...
    def write(self, address: int, size: int, value: int) -> None: ...


class _Irq(Protocol):
    @property
    def levels(self) -> Mapping[int, bool]: ...


class MachineLike(Protocol):
    """What the simulator uses of a ``devmodels.Machine`` (rule 4)."""

    @property
    def mmio(self) -> _Space:
        """Guest-physical MMIO space."""
        ...

    @property
    def pio(self) -> _Space:
        """Port I/O space."""
        ...

    @property
    def memory(self) -> GuestMemory:
        """Guest RAM."""
        ...

    @property
    def irq(self) -> _Irq:
        """Interrupt lines: ``levels[gsi]`` is the level of a GSI."""
        ...

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        """A config read."""
        ...

    def config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        """A config write."""
        ...

    def enumerate(self) -> Sequence[FunctionInfo]:
        """Firmware enumeration of bus 0 (BARs assigned)."""
        ...



@dataclass(frozen=True)
class RxFrame:
    """A frame the driver took from the receive ring."""

    data: bytes
    status: int
    errors: int
    special: int
    csum: int


class E1000Driver:
    """Linux's e1000 driver, in miniature (rule 1).

    Args:
        machine: the in-process machine the device is plugged into.
        device: the device (used only for the VMM-side ``tick``).
        tx_ring: transmit descriptors (multiple of 8).
        rx_ring: receive descriptors (multiple of 8).
        dma_base: guest address of the driver's DMA area (rings, then buffers).
    """

    def __init__(
        self,
        machine: MachineLike,
        device: E1000,
        *,
        tx_ring: int = 64,
        rx_ring: int = 64,
        dma_base: int = 0x10_0000,
    ) -> None:
        if tx_ring % 8 or rx_ring % 8 or not tx_ring or not rx_ring:
            raise UsageError(f"ring sizes must be non-zero multiples of 8, got tx_ring={tx_ring} rx_ring={rx_ring}")
        self.machine = machine
        self.device = device
        self.tx_count = tx_ring
        self.rx_count = rx_ring
        self.rx_buffer_len = 2048
        self.tx_ring = dma_base
        self.rx_ring = dma_base + 16 * tx_ring
        self.tx_buffers = (self.rx_ring + 16 * rx_ring + 0xFFF) & ~0xFFF
        self.rx_buffers = self.tx_buffers + MAX_DATA_PER_TXD * tx_ring
        self.now = 0
        self.bar0 = 0
        self.io = 0
        self.gsi = 0
        self.devfn = 0
        self.mac = b""
        self.link = False
        self.tx_next = 0  # next_to_use
        self.tx_clean = 0  # next_to_clean
        self.tx_watch: list[int] = []  # EOP index of each queued packet (next_to_watch)
        self.rx_clean = 0
        self.interrupts = 0

    # -- register access -----------------------------------------------------------------

    def er32(self, offset: int) -> int:
        """Read a register through BAR0."""
        return self.machine.mmio.read(self.bar0 + offset, 4)

    def ew32(self, offset: int, value: int) -> None:
        """Write a register through BAR0."""
        self.machine.mmio.write(self.bar0 + offset, 4, value & 0xFFFF_FFFF)

    def write_reg_io(self, offset: int, value: int) -> None:
        """``e1000_write_reg_io``: IOADDR then IODATA on the I/O BAR."""
        self.machine.pio.write(self.io + r.IOADDR, 4, offset)
        self.machine.pio.write(self.io + r.IODATA, 4, value)

    def advance(self, ns: int) -> None:
        """Let ``ns`` nanoseconds pass (rule 2)."""
        self.now += ns
        self.device.tick(self.now)

    def run_timers(self) -> None:
        """Advance time to every pending deadline until none is left (bounded)."""
        for _ in range(64):
            deadline = self.device.next_deadline()
            if deadline is None:
                return
            self.now = max(self.now, deadline)
            self.device.tick(self.now)

    # -- probe ---------------------------------------------------------------------------

    def probe(self) -> None:
        """``e1000_probe`` up to a registered netdev with a MAC address.

        Raises:
            DriverError: what Linux would fail the probe on.
        """
        found = [f for f in self.machine.enumerate() if (f.vendor_id, f.device_id) == (0x8086, 0x100E)]
        if not found:
            raise DriverError("no 8086:100e function on bus 0")
        info = found[0]
        self.devfn = info.devfn
        bars = {b.index: b for b in info.bars}
        if 0 not in bars or bars[0].address is None:
            raise DriverError("BAR0 not assigned")
        self.bar0 = bars[0].address
        io = [b for b in info.bars if b.index >= 1 and b.kind == "io" and b.address is not None]
        if not io:
            raise DriverError("no I/O BAR (e1000_is_need_ioport)")
        self.io = io[0].address or 0
        self.gsi = info.interrupt_line
        command = self.machine.config_read(0, self.devfn, defs.PCI_COMMAND, 2)
        command |= defs.PCI_COMMAND_MEMORY | defs.PCI_COMMAND_IO | defs.PCI_COMMAND_MASTER
        self.machine.config_write(0, self.devfn, defs.PCI_COMMAND, 2, command)
        if self.er32(r.STATUS) & (1 << 5):
            raise DriverError("STATUS.TBIMODE: not copper")
        self.reset_hw()
        if self.er32(r.EECD) & r.EECD_SIZE:
            raise DriverError("82540EM EEPROM must be the 64-word part")
        words = [self.read_eeprom(i) for i in range(0x40)]
        if sum(words) & 0xFFFF != 0xBABA:
            raise DriverError("The EEPROM Checksum Is Not Valid")
        self.mac = bytes(b for w in words[:3] for b in (w & 0xFF, w >> 8))
        if self.mac[0] & 1 or self.mac == bytes(6):
            raise DriverError(f"Invalid MAC Address {self.mac.hex(':')}")
        self.init_hw()

    def reset_hw(self) -> None:
        """``e1000_reset_hw`` for the 82540: the global reset goes through the I/O BAR."""
        self.ew32(r.IMC, 0xFFFF_FFFF)
        self.ew32(r.RCTL, 0)
        self.ew32(r.TCTL, r.TCTL_PSP)
        ctrl = self.er32(r.CTRL)
        self.write_reg_io(r.CTRL, ctrl | r.CTRL_RST)
        if self.er32(r.CTRL) & r.CTRL_RST:
            raise DriverError("CTRL.RST did not self-clear")
        self.ew32(r.MANC, self.er32(r.MANC) & ~r.MANC_ARP_EN)
        self.ew32(r.IMC, 0xFFFF_FFFF)
        self.er32(r.ICR)

    def read_eeprom(self, offset: int) -> int:
        """``e1000_read_eeprom`` for a Microwire part: acquire, shift out, shift in, release."""
        eecd = self.er32(r.EECD) | r.EECD_REQ
        self.ew32(r.EECD, eecd)
        if not self.er32(r.EECD) & r.EECD_GNT:
            raise DriverError("Could not acquire EEPROM grant")
        eecd &= ~(r.EECD_DI | r.EECD_SK)
        self.ew32(r.EECD, eecd)
        eecd |= r.EECD_CS
        self.ew32(r.EECD, eecd)
        self._shift_out(EEPROM_READ_OPCODE, 3)
        self._shift_out(offset, 6)
        value = 0
        eecd = self.er32(r.EECD) & ~(r.EECD_DO | r.EECD_DI)
        for _ in range(16):
            value <<= 1
            eecd |= r.EECD_SK
            self.ew32(r.EECD, eecd)
            eecd = self.er32(r.EECD) & ~r.EECD_DI
            if eecd & r.EECD_DO:
                value |= 1
            eecd &= ~r.EECD_SK
            self.ew32(r.EECD, eecd)
        # release: CS low, one clock, drop the request
        eecd = self.er32(r.EECD) & ~(r.EECD_CS | r.EECD_DI)
        self.ew32(r.EECD, eecd)
        self.ew32(r.EECD, eecd | r.EECD_SK)
        self.ew32(r.EECD, eecd)
        self.ew32(r.EECD, eecd & ~r.EECD_REQ)
        return value

    def _shift_out(self, data: int, count: int) -> None:
        eecd = self.er32(r.EECD) & ~r.EECD_DO
        for bit in range(count - 1, -1, -1):
            eecd &= ~r.EECD_DI
            if data >> bit & 1:
                eecd |= r.EECD_DI
            self.ew32(r.EECD, eecd)
            self.ew32(r.EECD, eecd | r.EECD_SK)
            self.ew32(r.EECD, eecd)
        self.ew32(r.EECD, eecd & ~r.EECD_DI)

    def read_phy(self, reg: int) -> int:
        """``e1000_read_phy_reg_ex`` through MDIC."""
        self.ew32(r.MDIC, reg << r.MDIC_REG_SHIFT | r.PHY_ADDRESS << r.MDIC_PHY_SHIFT | r.MDIC_OP_READ)
        mdic = self.er32(r.MDIC)
        if not mdic & r.MDIC_READY:
            raise DriverError("MDI Read did not complete")
        if mdic & r.MDIC_ERROR:
            raise DriverError("MDI Error")
        return mdic & 0xFFFF

    def write_phy(self, reg: int, value: int) -> None:
        """``e1000_write_phy_reg_ex`` through MDIC."""
        self.ew32(r.MDIC, value | reg << r.MDIC_REG_SHIFT | r.PHY_ADDRESS << r.MDIC_PHY_SHIFT | r.MDIC_OP_WRITE)
        if not self.er32(r.MDIC) & r.MDIC_READY:
            raise DriverError("MDI Write did not complete")

    def init_hw(self) -> None:
        """``e1000_init_hw``: VLAN table, receive addresses, MTA, copper link, counters."""
        self.ew32(r.VET, 0)
        for i in range(r.NUM_VFTA):
            self.ew32(r.VFTA + 4 * i, 0)
        self.ew32(r.RAL0, int.from_bytes(self.mac[:4], "little"))
        self.ew32(r.RAL0 + 4, int.from_bytes(self.mac[4:], "little") | r.RAH_AV)
        for i in range(1, r.NUM_RAR):
            self.ew32(r.RAL0 + 8 * i, 0)
            self.ew32(r.RAL0 + 8 * i + 4, 0)
        for i in range(r.NUM_MTA):
            self.ew32(r.MTA + 4 * i, 0)
        self.read_eeprom(0x0F)  # flow-control defaults
        ctrl = self.er32(r.CTRL) | r.CTRL_SLU
        self.ew32(r.CTRL, ctrl & ~(r.CTRL_FRCSPD | r.CTRL_FRCDPX))
        phy_id = self.read_phy(PHY_ID1) << 16 | self.read_phy(PHY_ID2)
        if phy_id & 0xFFFF_FFF0 != M88E1011_I_PHY_ID:
            raise DriverError(f"Error, did not detect valid phy (id {phy_id:#x})")
        self.write_phy(M88_PHY_SPEC_CTRL, self.read_phy(M88_PHY_SPEC_CTRL) | 0x0800 | 0x0060)
        self.write_phy(PHY_CTRL, self.read_phy(PHY_CTRL) | MII_CR_RESET)
        self.write_phy(PHY_AUTONEG_ADV, (self.read_phy(PHY_AUTONEG_ADV) & ~0x0DE0) | 0x01E0)
        self.write_phy(PHY_1000T_CTRL, self.read_phy(PHY_1000T_CTRL) | 0x0200)
        self.write_phy(PHY_CTRL, self.read_phy(PHY_CTRL) | MII_CR_AUTO_NEG_EN | MII_CR_RESTART_AUTO_NEG)
        self.read_phy(PHY_STATUS)
        self.ew32(r.FCT, 0x8808)
        self.ew32(r.FCAH, 0x0100)
        self.ew32(r.FCAL, 0x00C2_8001)
        self.ew32(r.FCTTV, 0xFFFF)
        self.ew32(r.FCRTL, 0)
        self.ew32(r.FCRTH, 0)
        self.ew32(r.TXDCTL, (self.er32(r.TXDCTL) & ~0x003F_0000) | 0x0101_0000)
        for offset in r.STATS_32.values():
            self.er32(offset)
        for low, high in r.STATS_64.values():
            self.er32(low)
            self.er32(high)

    # -- open ----------------------------------------------------------------------------

    def open(self, *, itr: int = 20000, rx_csum: bool = True, rdtr: int = 0, radv: int = 8, tidv: int = 8, tadv: int = 32) -> None:
        """``e1000_open``: rings, interrupt moderation, enable, forced LSC."""
        memory = self.machine.memory
        memory.fill(self.tx_ring, 16 * self.tx_count)
        self.ew32(r.TDBAL, self.tx_ring & 0xFFFF_FFFF)
        self.ew32(r.TDBAH, self.tx_ring >> 32)
        self.ew32(r.TDLEN, 16 * self.tx_count)
        self.ew32(r.TDH, 0)
        self.ew32(r.TDT, 0)
        self.ew32(r.TIPG, 8 | 8 << 10 | 6 << 20)
        self.ew32(r.TIDV, tidv)
        self.ew32(r.TADV, tadv)
        self.ew32(r.TCTL, r.TCTL_PSP | 0x0F << 4 | 0x40 << 12 | 1 << 24)
        self.ew32(r.RCTL, self.er32(r.RCTL) & ~r.RCTL_EN)
        self.ew32(r.RDTR, rdtr)
        self.ew32(r.RADV, radv)
        if itr:
            self.ew32(r.ITR, 1_000_000_000 // (itr * 256))
        self.ew32(r.RDBAL, self.rx_ring & 0xFFFF_FFFF)
        self.ew32(r.RDBAH, self.rx_ring >> 32)
        self.ew32(r.RDLEN, 16 * self.rx_count)
        self.ew32(r.RDH, 0)
        self.ew32(r.RDT, 0)
        rxcsum = self.er32(r.RXCSUM)
        self.ew32(r.RXCSUM, rxcsum | r.RXCSUM_TUOFL if rx_csum else rxcsum & ~r.RXCSUM_TUOFL)
        rctl = self.er32(r.RCTL) & ~(0b11 << r.RCTL_MO_SHIFT)
        rctl |= r.RCTL_EN | r.RCTL_BAM | (0 << r.RCTL_RDMTS_SHIFT)
        self.ew32(r.RCTL, rctl & ~(r.RCTL_LPE | r.RCTL_SBP))
        for i in range(self.rx_count):
            self._post_rx(i)
        self.ew32(r.RDT, self.rx_count - 1)
        self.tx_next = self.tx_clean = self.rx_clean = 0
        self.tx_watch = []
        self.ew32(r.IMS, IMS_ENABLE_MASK)
        self.ew32(r.ICS, r.ICR_LSC)

    def _post_rx(self, index: int) -> None:
        addr = self.rx_buffers + index * self.rx_buffer_len
        self.machine.memory.write_struct(RX_DESC, self.rx_ring + 16 * index, addr, 0, 0, 0, 0, 0)

    # -- interrupts and link -------------------------------------------------------------

    def irq_asserted(self) -> bool:
        """Whether the device's INTx line is asserted now."""
        return bool(self.machine.irq.levels.get(self.gsi, False))

    def check_link(self) -> bool:
        """``e1000_check_for_link`` + the watchdog's carrier decision."""
        self.read_phy(PHY_STATUS)
        up = bool(self.read_phy(PHY_STATUS) & MII_SR_LINK_STATUS)
        if up and not self.link:
            status = self.er32(r.STATUS)
            if not status & r.STATUS_LU:
                raise DriverError("PHY has link but STATUS.LU is clear")
            self.ew32(r.TCTL, self.er32(r.TCTL) | r.TCTL_EN)
        self.link = up
        return up

    def handle_irq(self) -> tuple[int, list[RxFrame], int]:
        """``e1000_intr`` + one NAPI poll: (ICR, received frames, transmits cleaned)."""
        icr = self.er32(r.ICR)
        if not icr:
            return 0, [], 0
        self.interrupts += 1
        if icr & (r.ICR_LSC | r.ICR_RXSEQ):
            self.check_link()
        self.ew32(r.IMC, 0xFFFF_FFFF)
        cleaned = self.clean_tx()
        frames = self.clean_rx()
        self.ew32(r.IMS, IMS_ENABLE_MASK)
        return icr, frames, cleaned

    # -- transmit ------------------------------------------------------------------------

    def tx_free(self) -> int:
        """Unused transmit descriptors (``E1000_DESC_UNUSED``)."""
        return (self.tx_clean - self.tx_next - 1) % self.tx_count

    def xmit(
        self,
        frame: bytes,
        *,
        csum_start: int | None = None,
        csum_offset: int | None = None,
        tcp: bool = True,
        tso_mss: int | None = None,
        vlan: int | None = None,
    ) -> bool:
        """``e1000_xmit_frame``: optional context descriptor, data descriptors, TDT.

        For ``csum_start``/``csum_offset`` (CHECKSUM_PARTIAL) the caller has already put
        the pseudo-header sum in the checksum field. ``tso_mss`` builds a TSO context for
        an IPv4/TCP frame exactly as ``e1000_tso`` does. Returns ``False`` when the ring
        is full.
        """
        data = bytearray(frame)
        if len(data) < 60:
            data += bytes(60 - len(data))
        chunks = [bytes(data[i : i + MAX_DATA_PER_TXD]) for i in range(0, len(data), MAX_DATA_PER_TXD)]
        if self.tx_free() < len(chunks) + 2:
            return False
        memory = self.machine.memory
        lower = r.TXD_CMD_IFCS << 24
        upper = 0
        if tso_mss is not None:
            ip = 14
            ihl = (data[ip] & 0x0F) * 4
            tcp_off = ip + ihl
            hdr_len = tcp_off + (data[tcp_off + 12] >> 4) * 4
            struct.pack_into("!H", data, ip + 2, 0)  # iph->tot_len = 0; the id is kept
            struct.pack_into("!H", data, ip + 10, 0)
            pseudo = _fold(_sum16(data[ip + 12 : ip + 20]) + 6)
            struct.pack_into("!H", data, tcp_off + 16, pseudo)
            chunks = [bytes(data[i : i + MAX_DATA_PER_TXD]) for i in range(0, len(data), MAX_DATA_PER_TXD)]
            tucmd = r.TUCMD_TCP | r.TUCMD_IP | r.TUCMD_TSE | r.TXD_CMD_DEXT
            cmd = tucmd << 24 | (len(data) - hdr_len)
            self._context(ip, ip + 10, tcp_off - 1, tcp_off, tcp_off + 16, 0, cmd, hdr_len, tso_mss)
            lower |= (r.TXD_CMD_DEXT | r.TXD_CMD_TSE) << 24 | r.TXD_DTYP_DATA << 20
            upper |= (r.POPTS_TXSM | r.POPTS_IXSM) << 8
        elif csum_start is not None and csum_offset is not None:
            tucmd = (r.TUCMD_TCP if tcp else 0) | r.TXD_CMD_DEXT
            self._context(0, 0, 0, csum_start, csum_start + csum_offset, 0, tucmd << 24, 0, 0)
            lower |= r.TXD_CMD_DEXT << 24 | r.TXD_DTYP_DATA << 20
            upper |= r.POPTS_TXSM << 8
        if vlan is not None:
            lower |= r.TXD_CMD_VLE << 24
            upper |= vlan << 16
        for n, chunk in enumerate(chunks):
            i = self.tx_next
            addr = self.tx_buffers + i * MAX_DATA_PER_TXD
            memory.write(addr, chunk)
            cmd = lower | len(chunk)
            if n == len(chunks) - 1:
                cmd |= (r.TXD_CMD_EOP | r.TXD_CMD_RS | r.TXD_CMD_IDE) << 24
            memory.write_struct(_TX_DESC, self.tx_ring + 16 * i, addr, cmd, upper)
            self.tx_next = (i + 1) % self.tx_count
        self.tx_watch.append(i)
        self.ew32(r.TDT, self.tx_next)
        return True

    def _context(self, ipcss: int, ipcso: int, ipcse: int, tucss: int, tucso: int, tucse: int, cmd: int, hdr_len: int, mss: int) -> None:
        i = self.tx_next
        qword = ipcss | ipcso << 8 | ipcse << 16 | tucss << 32 | tucso << 40 | tucse << 48
        upper = hdr_len << 8 | mss << 16
        self.machine.memory.write_struct(_TX_DESC, self.tx_ring + 16 * i, qword, cmd | r.TXD_CMD_DEXT << 24, upper)
        self.tx_next = (i + 1) % self.tx_count

    def clean_tx(self) -> int:
        """``e1000_clean_tx_irq``: reclaim every packet whose EOP descriptor has DD."""
        cleaned = 0
        memory = self.machine.memory
        while self.tx_watch:
            eop = self.tx_watch[0]
            if not memory.load_u8(self.tx_ring + 16 * eop + 12) & r.TXD_STAT_DD:
                break
            self.tx_watch.pop(0)
            while True:
                memory.store_u32(self.tx_ring + 16 * self.tx_clean + 12, 0)
                done = self.tx_clean == eop
                self.tx_clean = (self.tx_clean + 1) % self.tx_count
                cleaned += 1
                if done:
                    break
        return cleaned

    # -- receive -------------------------------------------------------------------------

    def clean_rx(self, budget: int = 256) -> list[RxFrame]:
        """``e1000_clean_rx_irq``: take DD descriptors, strip the FCS, refill, bump RDT."""
        memory = self.machine.memory
        frames: list[RxFrame] = []
        pending = bytearray()
        refilled = False
        for _ in range(min(budget, self.rx_count)):
            gpa = self.rx_ring + 16 * self.rx_clean
            addr, length, csum, status, errors, special = memory.read_struct(RX_DESC, gpa)
            if not status & r.RXD_STAT_DD:
                break
            pending += memory.read(addr, length)
            if status & r.RXD_STAT_EOP:
                fcs_len = 0 if self.er32(r.RCTL) & r.RCTL_SECRC else 4
                frames.append(RxFrame(bytes(pending[: len(pending) - fcs_len]), status, errors, special, csum))
                pending = bytearray()
            self._post_rx(self.rx_clean)
            last = self.rx_clean
            self.rx_clean = (self.rx_clean + 1) % self.rx_count
            refilled = True
        if refilled:
            self.ew32(r.RDT, last)
        if _tp.on:
            _tp.emit(rx=len(frames))
        return frames

    def poll(self) -> list[RxFrame]:
        """Run timers and service every interrupt until the line drops (bounded)."""
        frames: list[RxFrame] = []
        for _ in range(64):
            self.run_timers()
            if not self.irq_asserted():
                break
            _, got, _ = self.handle_irq()
            frames.extend(got)
        return frames


def _sum16(data: bytes | bytearray) -> int:
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(value: int) -> int:
    while value > 0xFFFF:
        value = (value & 0xFFFF) + (value >> 16)
    return value
