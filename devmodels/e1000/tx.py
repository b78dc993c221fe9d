"""The transmit engine: ring walk, packet assembly, offloads, write-back (SDM §3.3–3.5).

Rules:

1. All reads of the transmit ring and of transmit buffers happen here, through
   ``GuestMemory``; nothing else in the package touches them.
2. ``process()`` runs when the driver writes TDT (or enables TCTL.EN). It walks from TDH
   towards TDT, reading each descriptor at most once per call, so one call examines at most
   one lap of the ring and can never loop. It does nothing while TCTL.EN or PCI Bus Master
   Enable is clear, or while TDH/TDT lie outside the ring (a guest error, traced).
3. A packet is the run of data descriptors up to EOP. If TDT is reached before EOP the
   descriptors are left for the next call (TDH stays at the packet's first descriptor), so
   no partial packet is held between calls. Context descriptors load one of the two
   contexts (the TSE context or the normal one, SDM §3.3.6) as they are met.
4. A packet that cannot be sent (buffer outside RAM, more than ``MAX_TX_PACKET`` bytes, an
   unusable TSO context, an unknown descriptor type) is dropped; its descriptors are still
   completed (DD written for RS) so the driver's ring keeps moving. Each drop is traced.
5. Completion: DD is written to every descriptor with RS; the interrupt unit hears one
   write-back per packet (with the last RS descriptor's IDE). TXQE is raised when the
   ring drains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .._errors import GuestError, GuestMemoryError
from .._memory import GuestMemory
from .._regs import RegisterFile
from .._trace import tracepoint
from . import regs as r
from .errors import DescriptorRingError, FrameTooLongError, TsoContextError, TxDescriptorError
from .interrupts import InterruptUnit
from .layouts import TX_DESC
from .offload import TsoContext, insert_checksum, insert_vlan, segment_tso
from .stats import Stats

__all__ = ["TxEngine"]

_tp_drop = tracepoint("e1000.tx_drop")
_tp_frame = tracepoint("e1000.tx_frame")

_DEXT = r.TXD_CMD_DEXT << 24
_DTYP_SHIFT = 20


@dataclass
class _Packet:
    """Descriptors gathered for one packet."""

    first: int = -1
    data: bytearray = field(default_factory=bytearray)
    indices: list[tuple[int, int]] = field(default_factory=list)  # (ring index, cmd) with RS
    extended: bool = False
    tse: bool = False
    popts: int = 0
    first_cmd: int = 0
    first_special: int = 0
    error: GuestError | None = None


class TxEngine:
    """Walks the transmit ring (rules 1–5).

    Args:
        regs: the register file.
        memory: guest RAM.
        irq: the interrupt unit.
        stats: statistics counters.
        emit: called with each finished frame (the device routes it to the backend or, in
            loopback, to its own receiver).
        dma_allowed: PCI Command.MASTER.
    """

    def __init__(
        self,
        regs: RegisterFile,
        memory: GuestMemory,
        irq: InterruptUnit,
        stats: Stats,
        emit: Callable[[bytearray], None],
        dma_allowed: Callable[[], bool],
    ) -> None:
        self.regs = regs
        self.memory = memory
        self.irq = irq
        self.stats = stats
        self.emit = emit
        self.dma_allowed = dma_allowed
        self.ctx_normal = TsoContext()
        self.ctx_tso = TsoContext()

    def reset(self) -> None:
        """Forget both contexts."""
        self.ctx_normal = TsoContext()
        self.ctx_tso = TsoContext()

    def process(self) -> int:
        """Transmit what the driver queued; return the number of packets completed."""
        regs = self.regs
        if not regs["TCTL"] & r.TCTL_EN or not self.dma_allowed():
            return 0
        size = regs["TDLEN"] // r.DESC_SIZE
        head, tail = regs["TDH"], regs["TDT"]
        if size == 0 or head == tail:
            return 0
        if head >= size or tail >= size:
            _drop(DescriptorRingError("tx", max(head, tail), f"head/tail outside a {size}-entry ring"))
            return 0
        base = regs["TDBAH"] << 32 | regs["TDBAL"]
        packets = 0
        packet = _Packet()
        index = head
        while index != tail:
            try:
                addr, lower, upper = self.memory.read_struct(TX_DESC, base + index * r.DESC_SIZE)
            except GuestMemoryError:
                _drop(DescriptorRingError("tx", index, "descriptor outside guest RAM"))
                break
            nxt = index + 1 if index + 1 < size else 0
            cmd = lower >> 24
            if lower & _DEXT and (lower >> _DTYP_SHIFT) & 0xF == r.TXD_DTYP_CONTEXT:
                self._load_context(addr, lower, upper)
                if packet.first < 0:
                    self._complete([(index, cmd)] if cmd & r.TXD_CMD_RS else [], base)
                    head = nxt
                elif cmd & r.TXD_CMD_RS:
                    packet.indices.append((index, cmd))
                index = nxt
                continue
            if packet.first < 0:
                packet.first = index
                packet.first_cmd = cmd
                packet.extended = bool(lower & _DEXT)
                packet.tse = packet.extended and bool(cmd & r.TXD_CMD_TSE)
                packet.popts = (upper >> 8) & 0xFF
                packet.first_special = upper >> 16
            self._gather(packet, index, addr, lower, upper)
            if cmd & r.TXD_CMD_RS:
                packet.indices.append((index, cmd))
            index = nxt
            if cmd & r.TXD_CMD_EOP:
                self._finish(packet, lower, upper)
                self._complete(packet.indices, base)
                packets += 1
                head = index
                packet = _Packet()
        regs["TDH"] = head
        if head == tail:
            self.irq.raise_cause(r.ICR_TXQE)
        return packets

    # -- descriptors ---------------------------------------------------------------------

    def _load_context(self, addr: int, lower: int, upper: int) -> None:
        ctx = TsoContext(
            ipcss=addr & 0xFF,
            ipcso=(addr >> 8) & 0xFF,
            ipcse=(addr >> 16) & 0xFFFF,
            tucss=(addr >> 32) & 0xFF,
            tucso=(addr >> 40) & 0xFF,
            tucse=(addr >> 48) & 0xFFFF,
            paylen=lower & 0xF_FFFF,
            tucmd=lower >> 24,
            hdrlen=(upper >> 8) & 0xFF,
            mss=upper >> 16,
        )
        if ctx.tucmd & r.TUCMD_TSE:
            self.ctx_tso = ctx
        else:
            self.ctx_normal = ctx

    def _gather(self, packet: _Packet, index: int, addr: int, lower: int, upper: int) -> None:
        if packet.error is not None:
            return
        if lower & _DEXT:
            if (lower >> _DTYP_SHIFT) & 0xF != r.TXD_DTYP_DATA:
                packet.error = TxDescriptorError(index, f"unknown descriptor type {(lower >> _DTYP_SHIFT) & 0xF}")
                return
            length = lower & 0xF_FFFF
        else:
            length = lower & 0xFFFF
        if not length:
            return  # SDM §3.3.3: a zero-length descriptor transfers no data
        if len(packet.data) + length > r.MAX_TX_PACKET:
            packet.error = FrameTooLongError(len(packet.data) + length)
            packet.data = bytearray()
            return
        try:
            packet.data += self.memory.read(addr, length)
        except GuestMemoryError as exc:
            packet.error = TxDescriptorError(index, f"buffer {addr:#x}+{length:#x} outside guest RAM ({exc.reason})")

    def _complete(self, indices: list[tuple[int, int]], base: int) -> None:
        """Write DD into every RS descriptor and tell the interrupt unit (rule 5)."""
        if not indices:
            return
        for index, _ in indices:
            gpa = base + index * r.DESC_SIZE + 12
            try:
                self.memory.store_u8(gpa, (self.memory.load_u8(gpa) & 0xF0) | r.TXD_STAT_DD)
            except GuestMemoryError:
                _drop(DescriptorRingError("tx", index, "status write-back outside guest RAM"))
        self.irq.tx_writeback(bool(indices[-1][1] & r.TXD_CMD_IDE))

    # -- packets -------------------------------------------------------------------------

    def _finish(self, packet: _Packet, lower: int, upper: int) -> None:
        """Offloads, VLAN, padding, then emit (rules 3–4). ``lower``/``upper`` are the EOP
        descriptor's dwords."""
        if packet.error is not None:
            if packet.tse:
                self.stats.add("TSCTFC")
            _drop(packet.error)
            return
        data = packet.data
        eop_cmd = lower >> 24
        if packet.tse:
            # SDM §3.3.7.1: with TSE, VLE and the VLAN tag come from the first descriptor.
            vle_cmd, special = packet.first_cmd, packet.first_special
            ctx = self.ctx_tso
            try:
                frames = segment_tso(
                    data,
                    ctx,
                    ip_csum=bool(packet.popts & r.POPTS_IXSM),
                    l4_csum=bool(packet.popts & r.POPTS_TXSM),
                )
            except TsoContextError as exc:
                self.stats.add("TSCTFC")
                _drop(exc)
                return
            self.stats.add("TSCTC" if len(data) - ctx.hdrlen == ctx.paylen else "TSCTFC")
        else:
            vle_cmd, special = eop_cmd, upper >> 16
            if packet.extended:
                ctx = self.ctx_normal
                if packet.popts & r.POPTS_IXSM:
                    insert_checksum(data, ctx.ipcss, ctx.ipcso, ctx.ipcse)
                if packet.popts & r.POPTS_TXSM:
                    insert_checksum(data, ctx.tucss, ctx.tucso, ctx.tucse, udp=not ctx.tcp)
            elif eop_cmd & r.TXD_CMD_IC:
                # Legacy descriptor: CSO in bits 23:16 of the lower dword, CSS in bits
                # 15:8 of the upper one; the sum runs to the end of the packet.
                insert_checksum(data, (upper >> 8) & 0xFF, (lower >> 16) & 0xFF, 0)
            frames = [data]
        vlan = bool(vle_cmd & r.TXD_CMD_VLE) and bool(self.regs["CTRL"] & r.CTRL_VME)
        pad = bool(self.regs["TCTL"] & r.TCTL_PSP)
        for frame in frames:
            if len(frame) < 14:
                _drop(TxDescriptorError(packet.first, f"{len(frame)}-byte frame is shorter than an Ethernet header"))
                continue
            if pad and len(frame) < r.ETH_ZLEN:
                frame += bytes(r.ETH_ZLEN - len(frame))
            if vlan:
                frame = insert_vlan(frame, self.regs["VET"], special)
            if _tp_frame.on:
                _tp_frame.emit(length=len(frame))
            self.stats.tx_good(frame, len(frame) + r.ETH_FCS_LEN)
            self.emit(frame)


def _drop(error: GuestError) -> None:
    if _tp_drop.on:
        _tp_drop.emit(error=type(error).__name__, detail=str(error))
