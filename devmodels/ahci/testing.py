"""A driver simulator that does what Linux libahci does, through registers and guest RAM only.

Rules:

1. ``AhciDriver`` reaches the controller only as a guest would: dword register accesses
   relative to ABAR and structures in guest RAM (command lists, tables, PRDTs, the received
   FIS area). It never calls into ports or drives. ``poll`` stands in for the VMM's event
   loop (``AhciController.poll`` when backend completions are ready).
2. Every wait is a bounded loop (``WAIT_ROUNDS``) that raises ``DriverTimeout`` instead of
   spinning forever, so a device bug shows up as a failed test rather than a hang.
3. The sequences follow libahci: HBA reset (GHC.HR, then GHC.IE), port start (stop engine,
   CLB/FB, SUD, FRE, COMRESET through PxSCTL.DET, clear PxSERR, ST, PxIE), IDENTIFY, DMA and
   FPDMA I/O, and error recovery (clear ST, wait CR, READ LOG EXT 10h after an NCQ error).

VMM integrators can reuse it to smoke-test a controller wired into their own machine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._errors import UsageError
from .._memory import GuestMemory
from ..testing import DriverError
from . import defs as d
from . import regs as r
from .fis import TaskFile, build_h2d
from .layouts import CMD_HEADER, PRD_ENTRY

__all__ = ["AhciDriver", "DriverTimeout", "Result", "DEFAULT_PORT_IRQ", "WAIT_ROUNDS"]

WAIT_ROUNDS = 10_000
# what libahci enables: errors, descriptor processed, SDB, DMA/PIO setup, D2H
DEFAULT_PORT_IRQ = (
    r.PxIS_TFES | r.PxIS_HBFS | r.PxIS_HBDS | r.PxIS_IFS | r.PxIS_PCS | r.PxIS_PRCS | r.PxIS_UFS
    | r.PxIS_DPS | r.PxIS_SDBS | r.PxIS_DSS | r.PxIS_PSS | r.PxIS_DHRS
)
_TABLE_SIZE = 0x80 + 64 * r.PRDT_ENTRY_SIZE  # room for 64 PRD entries per slot


class DriverTimeout(DriverError):
    """A bounded wait ran out (the device did not do what the spec says it will); a
    ``devmodels.testing.DriverError``."""


@dataclass(frozen=True)
class Result:
    """How a command ended, as the driver sees it.

    Attributes:
        status, error: PxTFD (or the PIO Setup FIS E_Status for PIO data-in).
        pxis: PxIS at completion (before the driver cleared it).
        prdbc: the command header's byte count.
    """

    status: int
    error: int
    pxis: int
    prdbc: int

    @property
    def ok(self) -> bool:
        """No error bit in PxIS and no ERR/DF in the status."""
        return not self.pxis & r.PxIS_FATAL and not self.status & (d.ATA_ERR | d.ATA_DF)


class AhciDriver:
    """A libahci-like driver.

    Args:
        read, write: dword accesses at ABAR offsets.
        memory: guest RAM.
        dma_base, dma_size: a RAM window the driver may use for its structures.
        poll: called whenever the driver waits (the VMM's completion processing).
    """

    def __init__(
        self,
        read: Callable[[int, int], int],
        write: Callable[[int, int, int], None],
        memory: GuestMemory,
        dma_base: int,
        dma_size: int,
        poll: Callable[[], object] = lambda: None,
    ) -> None:
        self._read, self._write = read, write
        self.memory = memory
        self._next = dma_base
        self._end = dma_base + dma_size
        self.poll = poll
        self.clb: dict[int, int] = {}
        self.fb: dict[int, int] = {}
        self.tables: dict[int, int] = {}

    @classmethod
    def for_controller(cls, hba: object, memory: GuestMemory, dma_base: int, dma_size: int) -> AhciDriver:
        """A driver on an in-process ``AhciController`` (enables memory decode and bus mastering)."""
        from ..pci.defs import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY
        from .hba import AhciController

        if not isinstance(hba, AhciController):
            raise UsageError("for_controller needs an AhciController")
        hba.config_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        return cls(hba.read, hba.write, memory, dma_base, dma_size, hba.poll)

    # -- plumbing -------------------------------------------------------------------------

    def alloc(self, size: int, align: int = 128) -> int:
        """Bump-allocate ``size`` bytes of the DMA window."""
        base = (self._next + align - 1) & ~(align - 1)
        if base + size > self._end:
            raise UsageError("the driver's DMA window is full")
        self._next = base + size
        self.memory.fill(base, size)
        return base

    def reg(self, offset: int) -> int:
        """Read an HBA register."""
        return self._read(offset, 4)

    def set_reg(self, offset: int, value: int) -> None:
        """Write an HBA register."""
        self._write(offset, 4, value)

    def preg(self, port: int, offset: int) -> int:
        """Read a port register."""
        return self._read(r.PORT_BASE + port * r.PORT_STRIDE + offset, 4)

    def set_preg(self, port: int, offset: int, value: int) -> None:
        """Write a port register."""
        self._write(r.PORT_BASE + port * r.PORT_STRIDE + offset, 4, value)

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        """Poll until ``condition()`` (bounded, rule 2)."""
        for _ in range(WAIT_ROUNDS):
            if condition():
                return
            self.poll()
        raise DriverTimeout(what)

    # -- bring-up (libahci ahci_reset_controller / ahci_port_start / ahci_hardreset) ------

    def reset_hba(self) -> None:
        """GHC.HR, wait for it to clear, then GHC.IE."""
        self.set_reg(r.GHC, self.reg(r.GHC) | r.GHC_HR)
        self.wait(lambda: not self.reg(r.GHC) & r.GHC_HR, "GHC.HR to clear")
        self.set_reg(r.GHC, self.reg(r.GHC) | r.GHC_IE)

    def stop_engine(self, port: int) -> None:
        """Clear PxCMD.ST and wait for CR (ahci_stop_engine)."""
        self.set_preg(port, r.PxCMD, self.preg(port, r.PxCMD) & ~r.PxCMD_ST)
        self.wait(lambda: not self.preg(port, r.PxCMD) & r.PxCMD_CR, "PxCMD.CR to clear")

    def start_engine(self, port: int) -> None:
        """Set PxCMD.ST (ahci_start_engine)."""
        self.set_preg(port, r.PxCMD, self.preg(port, r.PxCMD) | r.PxCMD_ST)

    def start_port(self, port: int) -> int:
        """Allocate and program the port's structures, reset the link, start the engine.

        Returns:
            PxSIG (the device signature).
        """
        self.stop_engine(port)
        self.set_preg(port, r.PxCMD, self.preg(port, r.PxCMD) & ~r.PxCMD_FRE)
        self.wait(lambda: not self.preg(port, r.PxCMD) & r.PxCMD_FR, "PxCMD.FR to clear")
        if port not in self.clb:
            self.clb[port] = self.alloc(r.CMD_LIST_SIZE, 1024)
            self.fb[port] = self.alloc(r.RX_FIS_SIZE, 256)
            self.tables[port] = self.alloc(_TABLE_SIZE * r.NUM_SLOTS, 128)
        for offset, value in ((r.PxCLB, self.clb[port]), (r.PxFB, self.fb[port])):
            self.set_preg(port, offset, value & 0xFFFF_FFFF)
            self.set_preg(port, offset + 4, value >> 32)
        self.set_preg(port, r.PxSERR, 0xFFFF_FFFF)
        self.set_preg(port, r.PxIS, 0xFFFF_FFFF)
        self.set_preg(port, r.PxCMD, self.preg(port, r.PxCMD) | r.PxCMD_SUD | r.PxCMD_POD | 1 << r.PxCMD_ICC_SHIFT)
        self.set_preg(port, r.PxCMD, self.preg(port, r.PxCMD) | r.PxCMD_FRE)
        self.hardreset(port)
        self.start_engine(port)
        self.set_preg(port, r.PxIE, DEFAULT_PORT_IRQ)
        return self.preg(port, r.PxSIG)

    def hardreset(self, port: int) -> None:
        """COMRESET through PxSCTL.DET (sata_link_hardreset), then wait for !BSY."""
        sctl = self.preg(port, r.PxSCTL) & ~r.SCTL_DET_MASK
        self.set_preg(port, r.PxSCTL, sctl | 0x300 | r.SCTL_DET_COMRESET)
        self.set_preg(port, r.PxSCTL, sctl | 0x300)
        self.wait(lambda: self.preg(port, r.PxSSTS) & 0xF == r.SSTS_DET_PHY, "the link to come up")
        self.wait(lambda: not self.preg(port, r.PxTFD) & d.ATA_BUSY, "BSY to clear after COMRESET")
        self.set_preg(port, r.PxSERR, self.preg(port, r.PxSERR))
        self.set_preg(port, r.PxIS, 0xFFFF_FFFF)

    # -- building and issuing commands ----------------------------------------------------

    def table(self, port: int, slot: int) -> int:
        """gpa of ``slot``'s command table."""
        return self.tables[port] + slot * _TABLE_SIZE

    def prepare(
        self,
        port: int,
        slot: int,
        tf: TaskFile,
        prdt: Sequence[tuple[int, int]] = (),
        *,
        write: bool = False,
        atapi: bool = False,
        cdb: bytes = b"",
        flags: int = 0,
        interrupt_on: Sequence[int] = (),
    ) -> None:
        """Build ``slot``'s command header and table (ahci_qc_prep / ahci_fill_cmd_slot)."""
        if len(prdt) > 64:
            raise UsageError("at most 64 PRD entries per slot in this driver")
        table = self.table(port, slot)
        self.memory.write(table, build_h2d(tf).ljust(64, b"\0") + cdb.ljust(16, b"\0"))
        for i, (gpa, length) in enumerate(prdt):
            dw3 = (length - 1) | ((1 << 31) if i in interrupt_on else 0)
            self.memory.write(table + r.CMD_TABLE_PRDT + i * 16, PRD_ENTRY.pack(gpa & 0xFFFF_FFFF, gpa >> 32, 0, dw3))
        dw0 = 5 | len(prdt) << r.CMDH_PRDTL_SHIFT | flags
        dw0 |= r.CMDH_W if write else 0
        dw0 |= r.CMDH_A | r.CMDH_P if atapi else 0
        self.memory.write(self.clb[port] + slot * 32, CMD_HEADER.pack(dw0, 0, table & 0xFFFF_FFFF, table >> 32))

    def issue(self, port: int, slots: int, *, queued: bool = False) -> None:
        """Write PxSACT (for queued commands) then PxCI (ahci_qc_issue)."""
        if queued:
            self.set_preg(port, r.PxSACT, slots)
        self.set_preg(port, r.PxCI, slots)

    def wait_slot(self, port: int, slot: int, *, queued: bool = False) -> Result:
        """Wait until ``slot`` completes or the port reports an error; clear PxIS/IS."""
        bit = 1 << slot
        register = r.PxSACT if queued else r.PxCI

        def done() -> bool:
            return not self.preg(port, register) & bit or bool(self.preg(port, r.PxIS) & r.PxIS_FATAL)

        self.wait(done, f"slot {slot} to complete")
        return self.collect(port, slot)

    def collect(self, port: int, slot: int) -> Result:
        """Read the ending state of ``slot`` and clear the interrupt (ahci_port_intr)."""
        pxis = self.preg(port, r.PxIS)
        self.set_preg(port, r.PxIS, pxis)
        self.set_reg(r.IS, 1 << port)
        tfd = self.preg(port, r.PxTFD)
        prdbc = self.memory.load_u32(self.clb[port] + slot * 32 + 4)
        status = tfd & 0xFF
        if pxis & r.PxIS_PSS and not pxis & r.PxIS_DHRS:
            status = self.memory.load_u8(self.fb[port] + r.RX_FIS_PSFIS + 15)  # ahci_qc_fill_rtf
        return Result(status, tfd >> 8, pxis, prdbc)

    def command(
        self,
        port: int,
        tf: TaskFile,
        prdt: Sequence[tuple[int, int]] = (),
        *,
        slot: int = 0,
        write: bool = False,
        atapi: bool = False,
        cdb: bytes = b"",
    ) -> Result:
        """Build, issue and wait for one non-queued command."""
        self.prepare(port, slot, tf, prdt, write=write, atapi=atapi, cdb=cdb)
        self.issue(port, 1 << slot)
        return self.wait_slot(port, slot)

    # -- ATA commands ---------------------------------------------------------------------

    def identify(self, port: int, *, packet: bool = False) -> tuple[Result, bytes]:
        """IDENTIFY (PACKET) DEVICE; returns the result and the 512 bytes."""
        buf = self.alloc(512)
        command = d.ATA_CMD_ID_ATAPI if packet else d.ATA_CMD_ID_ATA
        result = self.command(port, TaskFile(command=command), [(buf, 512)])
        return result, self.memory.read(buf, 512)

    def rw_dma(self, port: int, lba: int, count: int, buf: int, *, write: bool, slot: int = 0) -> Result:
        """READ/WRITE DMA EXT of ``count`` sectors at ``lba`` from/to ``buf``."""
        command = d.ATA_CMD_WRITE_EXT if write else d.ATA_CMD_READ_EXT
        tf = TaskFile(command=command, lba=lba, count=count & 0xFFFF, device=d.ATA_LBA)
        return self.command(port, tf, _chunks(buf, count * 512), slot=slot, write=write)

    def fpdma(self, port: int, tag: int, lba: int, count: int, buf: int, *, write: bool) -> None:
        """Prepare (but do not issue) a READ/WRITE FPDMA QUEUED with NCQ ``tag`` in slot ``tag``."""
        command = d.ATA_CMD_FPDMA_WRITE if write else d.ATA_CMD_FPDMA_READ
        tf = TaskFile(command=command, lba=lba, features=count & 0xFFFF, count=tag << 3, device=d.ATA_LBA)
        self.prepare(port, tag, tf, _chunks(buf, count * 512), write=write)

    def flush(self, port: int) -> Result:
        """FLUSH CACHE EXT."""
        return self.command(port, TaskFile(command=d.ATA_CMD_FLUSH_EXT))

    def trim(self, port: int, ranges: Sequence[tuple[int, int]]) -> Result:
        """DATA SET MANAGEMENT / TRIM of ``(lba, sectors)`` ranges (one 512-byte block)."""
        if len(ranges) > 64:
            raise UsageError("one block holds 64 ranges")
        buf = self.alloc(512)
        payload = b"".join(struct.pack("<Q", lba | n << 48) for lba, n in ranges)
        self.memory.write(buf, payload.ljust(512, b"\0"))
        tf = TaskFile(command=d.ATA_CMD_DSM, features=d.ATA_DSM_TRIM, count=1, device=d.ATA_LBA)
        return self.command(port, tf, [(buf, 512)], write=True)

    def read_log(self, port: int, log: int, page: int = 0, count: int = 1) -> tuple[Result, bytes]:
        """READ LOG EXT (ata_read_log_page)."""
        buf = self.alloc(512 * count)
        tf = TaskFile(command=d.ATA_CMD_READ_LOG_EXT, lba=log | page << 8, count=count, device=d.ATA_LBA)
        result = self.command(port, tf, [(buf, 512 * count)])
        return result, self.memory.read(buf, 512 * count)

    def set_features(self, port: int, sub: int, count: int = 0) -> Result:
        """SET FEATURES ``sub``."""
        return self.command(port, TaskFile(command=d.ATA_CMD_SET_FEATURES, features=sub, count=count))

    def packet(self, port: int, cdb: bytes, nbytes: int, *, dma: bool = False) -> tuple[Result, bytes]:
        """A PACKET command reading up to ``nbytes`` (0 for none)."""
        buf = self.alloc(max(nbytes, 2))
        prdt = _chunks(buf, nbytes) if nbytes else []
        tf = TaskFile(command=d.ATA_CMD_PACKET, features=1 if dma else 0, lba=(min(nbytes, 0xFFFE) & 0xFFFF) << 8)
        result = self.command(port, tf, prdt, atapi=True, cdb=cdb)
        return result, self.memory.read(buf, min(result.prdbc, nbytes))

    # -- error handling (ahci_error_handler, ata_eh_read_log_10h) -------------------------

    def recover(self, port: int) -> None:
        """Restart the engine after an error: clear ST (wait CR), clear PxSERR/PxIS, set ST."""
        self.stop_engine(port)
        self.set_preg(port, r.PxSERR, self.preg(port, r.PxSERR))
        self.set_preg(port, r.PxIS, 0xFFFF_FFFF)
        self.set_reg(r.IS, 1 << port)
        self.start_engine(port)

    def ncq_error_tag(self, port: int) -> int | None:
        """READ LOG EXT 10h after an NCQ error: the failed tag, or None (NQ set)."""
        result, page = self.read_log(port, d.ATA_LOG_SATA_NCQ)
        if not result.ok:
            raise DriverTimeout(f"READ LOG EXT 10h failed: status {result.status:#x} error {result.error:#x}")
        if sum(page) & 0xFF:
            raise DriverTimeout("log page 10h checksum is wrong")
        return None if page[0] & 0x80 else page[0] & 0x1F


def _chunks(buf: int, nbytes: int, chunk: int = 64 * 1024) -> list[tuple[int, int]]:
    """Split a contiguous buffer into PRD-sized pieces."""
    return [(buf + off, min(chunk, nbytes - off)) for off in range(0, nbytes, chunk)]
