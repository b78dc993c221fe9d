"""The receive engine: filtering, VLAN, checksum offload, descriptor write-back (SDM §3.2, ch. 9).

Rules:

1. All writes to the receive ring and receive buffers happen here, through ``GuestMemory``.
2. A frame is written whole or not at all: before touching memory the engine checks that
   the descriptors between RDH and RDT can hold it (one per RCTL buffer size). When they
   cannot — including the "ring full" case RDH == RDT — the frame is dropped and counted
   (MPC, RNBC) and RXO is raised; nothing waits or spins (SDM §3.2.6, §13.7 MPC).
3. Filtering order (SDM §3.2.1, §9.3): length (LPE), destination address (RAL/RAH with AV,
   UPE; MTA hash by RCTL.MO, MPE; broadcast with BAM), then the VLAN filter (VFE, VFTA,
   CFIEN/CFI). Filtered frames are not counted.
4. VLAN stripping when CTRL.VME and the type matches VET: the tag goes to the descriptor's
   special field with status VP. Checksum offload per RXCSUM (IPOFL, TUOFL); without either
   the status says IXSM. Unless RCTL.SECRC the FCS is appended and counted in the length.
5. Short frames from a software backend are padded to 60 bytes, as a sender on a wire
   must have padded them (IEEE 802.3 §4.2.3.3).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .._errors import GuestMemoryError
from .._memory import GuestMemory
from .._regs import RegisterFile
from .._trace import tracepoint
from . import regs as r
from .errors import DescriptorRingError
from .interrupts import InterruptUnit
from .layouts import RX_WRITEBACK
from .offload import fcs, ones_sum, rx_checksum, strip_vlan
from .stats import Stats

__all__ = ["RxEngine", "RxResult", "buffer_size", "mta_hash"]

_tp_rx = tracepoint("e1000.rx_frame")
_tp_drop = tracepoint("e1000.rx_drop")

_BSIZE = {0b00: 2048, 0b01: 1024, 0b10: 512, 0b11: 256}
_BSIZE_EXT = {0b00: 0, 0b01: 16384, 0b10: 8192, 0b11: 4096}  # BSEX: 00 is reserved
_BROADCAST = b"\xff" * 6


class RxResult(enum.Enum):
    """What became of a frame handed to ``RxEngine.receive``."""

    DELIVERED = "delivered"
    FILTERED = "filtered"
    DISABLED = "disabled"
    NO_BUFFERS = "no-buffers"
    BAD_LENGTH = "bad-length"
    RING_ERROR = "ring-error"


def buffer_size(rctl: int) -> int:
    """The receive buffer size RCTL.BSIZE/BSEX select (SDM §13.4.22); 0 if reserved."""
    code = (rctl >> r.RCTL_BSIZE_SHIFT) & 0b11
    return _BSIZE_EXT[code] if rctl & r.RCTL_BSEX else _BSIZE[code]


def mta_hash(address: bytes | bytearray, mo: int) -> int:
    """The 12-bit multicast table index of ``address`` for RCTL.MO (SDM §13.4.22)."""
    shift = (4, 3, 2, 0)[mo & 0b11]
    return ((address[4] >> shift) | (address[5] << (8 - shift))) & 0xFFF


class RxEngine:
    """Delivers frames into the receive ring (rules 1–5).

    Args:
        regs: the register file.
        memory: guest RAM.
        irq: the interrupt unit.
        stats: statistics counters.
        dma_allowed: PCI Command.MASTER.
    """

    def __init__(
        self,
        regs: RegisterFile,
        memory: GuestMemory,
        irq: InterruptUnit,
        stats: Stats,
        dma_allowed: Callable[[], bool],
    ) -> None:
        self.regs = regs
        self.memory = memory
        self.irq = irq
        self.stats = stats
        self.dma_allowed = dma_allowed

    # -- capacity ------------------------------------------------------------------------

    def _ring(self) -> tuple[int, int, int, int] | None:
        """(base, size, head, tail) or ``None`` when the ring is unusable."""
        regs = self.regs
        size = regs["RDLEN"] // r.DESC_SIZE
        head, tail = regs["RDH"], regs["RDT"]
        if size == 0 or head >= size or tail >= size:
            return None
        return regs["RDBAH"] << 32 | regs["RDBAL"], size, head, tail

    def free_descriptors(self) -> int:
        """Descriptors the driver has handed to the device (RDH up to RDT, exclusive)."""
        ring = self._ring()
        if ring is None:
            return 0
        _, size, head, tail = ring
        return (tail - head) % size

    def ready(self) -> bool:
        """Whether a frame of the largest size the filter accepts would be written now."""
        rctl = self.regs["RCTL"]
        if not rctl & r.RCTL_EN or not self.dma_allowed():
            return False
        bsize = buffer_size(rctl)
        if bsize == 0:
            return False
        largest = (r.MAX_LPE_FRAME if rctl & r.RCTL_LPE else r.MAX_STD_FRAME + 4) + r.ETH_FCS_LEN
        ring = self._ring()
        if ring is None:
            return False
        needed = min(-(-largest // bsize), ring[1] - 1)
        return self.free_descriptors() >= max(needed, 1)

    # -- filtering -----------------------------------------------------------------------

    def address_match(self, frame: bytes | bytearray) -> bool:
        """Destination-address filter (rule 3)."""
        regs = self.regs
        rctl = regs["RCTL"]
        dest = bytes(frame[:6])
        if dest == _BROADCAST:
            if rctl & r.RCTL_BAM:
                return True
        elif dest[0] & 1:
            if rctl & r.RCTL_MPE:
                return True
            index = mta_hash(dest, (rctl >> r.RCTL_MO_SHIFT) & 0b11)
            if regs.values[r.MTA + 4 * (index >> 5)] >> (index & 0x1F) & 1:
                return True
        elif rctl & r.RCTL_UPE:
            return True
        values = regs.values
        low = int.from_bytes(dest[:4], "little")
        high = int.from_bytes(dest[4:], "little") | r.RAH_AV
        for i in range(r.NUM_RAR):
            rah = values[r.RAL0 + 8 * i + 4]
            # AV set and address select 00 (destination address), SDM §13.5.2
            if rah & 0x8003_FFFF == high and values[r.RAL0 + 8 * i] == low:
                return True
        return False

    def vlan_match(self, tci: int) -> bool:
        """VLAN filter for a tagged frame (SDM §13.4.22 VFE, CFIEN, CFI)."""
        rctl = self.regs["RCTL"]
        if rctl & r.RCTL_CFIEN and bool(tci & 0x1000) != bool(rctl & r.RCTL_CFI):
            return False
        if not rctl & r.RCTL_VFE:
            return True
        vid = tci & 0xFFF
        return bool(self.regs.values[r.VFTA + 4 * (vid >> 5)] >> (vid & 0x1F) & 1)

    # -- delivery ------------------------------------------------------------------------

    def receive(self, frame: bytes | bytearray | memoryview) -> RxResult:
        """Deliver one frame from the wire (no FCS) into the ring."""
        regs = self.regs
        rctl = regs["RCTL"]
        if not rctl & r.RCTL_EN:
            return RxResult.DISABLED
        data = bytes(frame)
        if len(data) < 14:
            self.stats.add("RUC")
            return self._dropped(RxResult.BAD_LENGTH, len(data))
        if len(data) < r.ETH_ZLEN:
            data += bytes(r.ETH_ZLEN - len(data))
        vet = regs["VET"]
        tagged = int.from_bytes(data[12:14], "big") == vet and len(data) >= 18
        limit = r.MAX_LPE_FRAME if rctl & r.RCTL_LPE else r.MAX_STD_FRAME + (4 if tagged else 0)
        if len(data) + r.ETH_FCS_LEN > limit:
            self.stats.add("ROC")
            return self._dropped(RxResult.BAD_LENGTH, len(data))
        if not self.address_match(data):
            return RxResult.FILTERED
        special = 0
        status = r.RXD_STAT_DD | r.RXD_STAT_EOP
        wire_fcs = b"" if rctl & r.RCTL_SECRC else fcs(data)
        if tagged:
            tci = int.from_bytes(data[14:16], "big")
            if not self.vlan_match(tci):
                return RxResult.FILTERED
            if regs["CTRL"] & r.CTRL_VME:
                data = bytes(strip_vlan(data, vet)[0])
                special = tci
                status |= r.RXD_STAT_VP
        errors = 0
        rxcsum = regs["RXCSUM"]
        ipofl, tuofl = bool(rxcsum & r.RXCSUM_IPOFL), bool(rxcsum & r.RXCSUM_TUOFL)
        if ipofl or tuofl:
            check = rx_checksum(data, ip=ipofl, l4=tuofl)
            if check.ip_checked:
                status |= r.RXD_STAT_IPCS
                errors |= 0 if check.ip_ok else r.RXD_ERR_IPE
            if check.l4_checked:
                status |= r.RXD_STAT_TCPCS
                errors |= 0 if check.l4_ok else r.RXD_ERR_TCPE
        else:
            status |= r.RXD_STAT_IXSM
        pcss = rxcsum & r.RXCSUM_PCSS_MASK
        csum = ones_sum(data, pcss) if pcss < len(data) else 0
        payload = data + wire_fcs
        return self._write(payload, csum, status, errors, special, data)

    def _write(self, payload: bytes, csum: int, status: int, errors: int, special: int, frame: bytes) -> RxResult:
        ring = self._ring()
        bsize = buffer_size(self.regs["RCTL"])
        if ring is None or bsize == 0 or not self.dma_allowed():
            if ring is None and (self.regs["RDLEN"] or self.regs["RDH"] or self.regs["RDT"]):
                _trace_error(DescriptorRingError("rx", self.regs["RDH"], "head/tail outside the ring"))
            return self._no_buffers(len(payload))
        base, size, head, tail = ring
        needed = -(-len(payload) // bsize)
        if (tail - head) % size < needed:
            return self._no_buffers(len(payload))
        memory = self.memory
        # Fetch every descriptor first so that a bad one leaves the ring untouched (rule 2).
        slots = []
        index = head
        for _ in range(needed):
            desc = base + index * r.DESC_SIZE
            try:
                slots.append((index, desc, memory.load_u64(desc)))
            except GuestMemoryError:
                _trace_error(DescriptorRingError("rx", index, "descriptor outside guest RAM"))
                return self._no_buffers(len(payload), RxResult.RING_ERROR)
            index = index + 1 if index + 1 < size else 0
        for n, (index, desc, buffer_addr) in enumerate(slots):
            chunk = payload[n * bsize : (n + 1) * bsize]
            last = n == needed - 1
            try:
                memory.write(buffer_addr, chunk)
                chunk_errors = errors if last else 0
            except GuestMemoryError:
                # SDM §3.2.3.2: the data did not reach memory; report RXE.
                _trace_error(DescriptorRingError("rx", index, f"buffer {buffer_addr:#x} outside guest RAM"))
                errors |= r.RXD_ERR_RXE
                chunk_errors = errors if last else r.RXD_ERR_RXE
            desc_status = status if last else r.RXD_STAT_DD
            try:
                memory.write_struct(RX_WRITEBACK, desc + 8, len(chunk), csum if last else 0, desc_status, chunk_errors, special if last else 0)
            except GuestMemoryError:
                _trace_error(DescriptorRingError("rx", index, "write-back outside guest RAM"))
        index = slots[-1][0] + 1 if slots[-1][0] + 1 < size else 0
        self.regs["RDH"] = index
        if _tp_rx.on:
            _tp_rx.emit(length=len(payload), descriptors=needed, status=status, errors=errors)
        self.stats.rx_good(frame, len(frame) + r.ETH_FCS_LEN)
        self.irq.rx_packet()
        free = (tail - index) % size
        rdmts = (self.regs["RCTL"] >> r.RCTL_RDMTS_SHIFT) & 0b11
        if rdmts != 0b11 and free <= size >> (rdmts + 1):
            self.irq.raise_cause(r.ICR_RXDMT0)
        return RxResult.DELIVERED

    def _no_buffers(self, length: int, result: RxResult = RxResult.NO_BUFFERS) -> RxResult:
        self.stats.add("RNBC")
        self.stats.add("MPC")
        self.irq.raise_cause(r.ICR_RXO)
        return self._dropped(result, length)

    def _dropped(self, result: RxResult, length: int) -> RxResult:
        if _tp_drop.on:
            _tp_drop.emit(reason=result.value, length=length)
        return result


def _trace_error(error: DescriptorRingError) -> None:
    if _tp_drop.on:
        _tp_drop.emit(reason="guest-error", detail=str(error))
