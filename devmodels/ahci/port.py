"""One AHCI port: its registers, the command-list engine, received-FIS posting, the link.

Rules:

1. All reads of the command list, command tables and PRDTs, and all writes of received
   FISes and PRDBC, happen here (through ``GuestMemory``); drives never see memory.
2. Register writes only record what must happen (the ``Reg`` hooks return values); the
   work runs after the write in ``after_write``, so a hook never fights the value the
   register file stores.
3. Command slots are processed in round-robin order from PxCMD.CCS (AHCI 1.3.1 §3.3.7). A
   non-queued command runs alone; FPDMA commands are accepted (PxCI cleared by a D2H FIS)
   and complete out of order with Set Device Bits FISes (§5.3.8, §5.3.10).
4. Every guest error ends in an architected state (§6.1.2): the PxIS bit of the
   ``AhciGuestError`` (IFS, OFS, HBFS), or TFES with ERR in PxTFD for a failing command,
   and the port halts until software clears PxCMD.ST. Nothing guest-controlled raises.
5. Requests in flight are owned here. Clearing ST, COMRESET, SRST or an HBA reset cancels
   their commands, but PxCMD.CR, the link (PxSSTS.DET) and GHC.HR stay busy until the
   backend has returned them, so the guest never reuses a buffer the backend still fills.
6. Work is bounded: one entry point processes at most 32 slots and each PRDT walk is
   bounded by the command's bytes (``command.py`` rule 3).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import GuestMemoryError
from .._memory import GuestMemory
from .._regs import Access, Reg, RegisterFile
from .._trace import tracepoint
from ..backends import BlockBackend, BlockCompletion
from . import defs as d
from . import regs as r
from .command import Command, DataPhase, Drive, Finish, Outcome, Pending, Prdt
from .errors import AhciGuestError, BadCommandFis, BusMasterDisabled
from .fis import TaskFile, build_d2h, build_dma_setup, build_pio_setup, build_sdb, parse_h2d
from .layouts import CMD_HEADER

if TYPE_CHECKING:
    from .hba import AhciController

__all__ = ["AhciPort", "LinkState"]

_tp_fatal = tracepoint("ahci.port.fatal")
_tp_cmd = tracepoint("ahci.port.command")
_tp_done = tracepoint("ahci.port.complete")
_tp_link = tracepoint("ahci.port.link")
_tp_drop = tracepoint("ahci.port.stray_completion")

_ALL_SLOTS = (1 << r.NUM_SLOTS) - 1
# §5.3.8: the device accepts a queued command with a Register D2H FIS, BSY clear, no I bit
_ACCEPT_D2H = build_d2h(d.ATA_DRDY, 0, interrupt=False)
_MASK64 = (1 << 64) - 1


class LinkState(enum.IntEnum):
    """PxSSTS.DET as a small state machine (snapshots store the integer values)."""

    DOWN = 0  # no device, or not spun up (staggered spin-up), or offline
    RESET = 1  # COMRESET asserted (PxSCTL.DET = 1)
    WAITING = 2  # COMRESET released; the device finishes cancelled I/O first
    UP = 3  # Phy communication established


@dataclass(eq=False)
class _InFlight:
    """A command the drive is working on, with its backend requests."""

    slot: int
    cmd: Command
    queued: bool
    backend: BlockBackend
    pending: Pending
    results: dict[int, BlockCompletion] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    cancelled: bool = False


class AhciPort:
    """Port ``index`` of a controller.

    Args:
        hba: the controller (for interrupts, DMA permission, 64-bit addressing).
        index: the port number.
        memory: guest RAM.
    """

    def __init__(self, hba: AhciController, index: int, memory: GuestMemory) -> None:
        self.hba = hba
        self.index = index
        self.memory = memory
        self.drive: Drive | None = None
        self.regs = RegisterFile(self._table(), device=f"ahci.port{index}")
        self.halted = False
        self.next_slot = 0
        self.srst = False
        self.link = LinkState.DOWN
        self._active: int | None = None  # the non-queued command in progress
        self._ncq = 0  # slots whose queued command the device has accepted
        self._records: dict[int, _InFlight] = {}  # backend tag -> record
        self._backend_refs: dict[int, list[Any]] = {}  # id(backend) -> [backend, requests in flight]
        self._live: list[_InFlight] = []
        self._todo: set[str] = set()

    # -- the register table ---------------------------------------------------------------

    def _table(self) -> list[Reg]:
        return [
            Reg("PxCLB", r.PxCLB, mask=r.PxCLB_MASK, partial=True),
            Reg("PxCLBU", r.PxCLBU, partial=True),
            Reg("PxFB", r.PxFB, mask=r.PxFB_MASK, partial=True),
            Reg("PxFBU", r.PxFBU, partial=True),
            Reg("PxIS", r.PxIS, access=Access.W1C, mask=r.PxIS_W1C, on_read=self._read_is, partial=True),
            Reg("PxIE", r.PxIE, mask=r.PxIE_MASK, on_write=self._write_ie, partial=True),
            Reg("PxCMD", r.PxCMD, mask=r.PxCMD_WRITABLE, reset=r.PxCMD_POD, on_write=self._write_cmd, partial=True),
            Reg("PxTFD", r.PxTFD, access=Access.RO, reset=r.PxTFD_RESET, partial=True),
            Reg("PxSIG", r.PxSIG, access=Access.RO, reset=0xFFFF_FFFF, partial=True),
            Reg("PxSSTS", r.PxSSTS, access=Access.RO, partial=True),
            Reg("PxSCTL", r.PxSCTL, mask=r.SCTL_WRITABLE, on_write=self._write_sctl, partial=True),
            Reg("PxSERR", r.PxSERR, access=Access.W1C, mask=0xFFFF_FFFF, on_write=self._write_ie, partial=True),
            Reg("PxSACT", r.PxSACT, access=Access.W1S, on_write=self._write_sact, partial=True),
            Reg("PxCI", r.PxCI, access=Access.W1S, on_write=self._write_ci, partial=True),
            Reg("PxSNTF", r.PxSNTF, access=Access.W1C, mask=0xFFFF, partial=True),
        ]

    def _read_is(self, stored: int) -> int:
        return self.interrupt_status

    @property
    def interrupt_status(self) -> int:
        """PxIS as the guest reads it: PCS and PRCS mirror PxSERR.DIAG.X and .N (§3.3.5)."""
        values = self.regs.values  # by offset: this runs on every poll
        serr = values[r.PxSERR]
        return (
            values[r.PxIS]
            | (r.PxIS_PCS if serr & r.SERR_DIAG_X else 0)
            | (r.PxIS_PRCS if serr & r.SERR_DIAG_N else 0)
        )

    @property
    def interrupt_pending(self) -> bool:
        """Some enabled PxIS condition is set."""
        return bool(self.interrupt_status & self.regs.values[r.PxIE])

    def _write_ie(self, old: int, new: int) -> int:
        self._todo.add("irq")
        return new

    def _write_sact(self, old: int, new: int) -> int:
        # §3.3.13: software sets bits only while PxCMD.ST is 1
        return new if self.regs.values[r.PxCMD] & r.PxCMD_ST else old

    def _write_ci(self, old: int, new: int) -> int:
        if not self.regs.values[r.PxCMD] & r.PxCMD_ST:
            return old  # §3.3.14: PxCI is only valid while ST is 1
        self._todo.add("run")
        return new

    def _write_cmd(self, old: int, new: int) -> int:
        if new & r.PxCMD_CLO:
            # §3.3.7 CLO: clear BSY and DRQ so a softreset FIS can be sent; only with ST clear
            if not old & r.PxCMD_ST:
                self.regs["PxTFD"] = self.regs["PxTFD"] & ~(d.ATA_BUSY | d.ATA_DRQ)
            new &= ~r.PxCMD_CLO
        new &= ~r.PxCMD_ICC_MASK  # interface state changes complete at once
        if (new ^ old) & r.PxCMD_FRE:
            new = new | r.PxCMD_FR if new & r.PxCMD_FRE else new & ~r.PxCMD_FR
        if new & r.PxCMD_ST and not old & r.PxCMD_ST:
            new |= r.PxCMD_CR
            self.next_slot = 0
            self._todo.add("run")
        elif old & r.PxCMD_ST and not new & r.PxCMD_ST:
            self._todo.add("stop")
        if new & r.PxCMD_SUD and not old & r.PxCMD_SUD:
            self._todo.add("spin-up")
        return new

    def _write_sctl(self, old: int, new: int) -> int:
        det_old, det_new = old & r.SCTL_DET_MASK, new & r.SCTL_DET_MASK
        if det_new == r.SCTL_DET_COMRESET and det_old != r.SCTL_DET_COMRESET:
            self._todo.add("comreset")
        elif det_new == 0 and det_old in (r.SCTL_DET_COMRESET, r.SCTL_DET_OFFLINE):
            self._todo.add("release")
        elif det_new == r.SCTL_DET_OFFLINE and det_old != r.SCTL_DET_OFFLINE:
            self._todo.add("offline")
        return new

    # -- guest accesses -------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A register read inside this port's window."""
        return self.regs.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A register write, then the work it asked for (rule 2)."""
        self.regs.write(offset, size, value)
        self.after_write()

    def after_write(self) -> None:
        """Run what the last register write recorded."""
        todo, self._todo = self._todo, set()
        if "stop" in todo:
            self._stop()
        if "comreset" in todo:
            self._comreset()
        if "offline" in todo:
            self._set_link(LinkState.DOWN, det=r.SCTL_DET_OFFLINE)
        if "release" in todo or "spin-up" in todo:
            self._try_link_up()
        if "run" in todo and not self.hba.post(self):
            self.run()

    # -- link and resets ------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Backend requests are still in flight."""
        return bool(self._records)

    def _set_link(self, link: LinkState, det: int | None = None) -> None:
        self.link = link
        if link == LinkState.UP:
            sctl_spd = (self.regs["PxSCTL"] >> r.SCTL_SPD_SHIFT) & 0xF
            speed = min(r.SPEED_GEN2, sctl_spd) if sctl_spd else r.SPEED_GEN2
            self.regs["PxSSTS"] = r.SSTS_IPM_ACTIVE | speed << r.SSTS_SPD_SHIFT | r.SSTS_DET_PHY
        elif link == LinkState.DOWN:
            self.regs["PxSSTS"] = det if det is not None else r.SSTS_DET_NONE
        else:  # RESET, WAITING: a device is there but the Phy is not talking yet
            self.regs["PxSSTS"] = r.SSTS_DET_PRESENT if self.drive is not None else r.SSTS_DET_NONE
        if _tp_link.on:
            _tp_link.emit(port=self.index, link=link, ssts=self.regs["PxSSTS"])

    def _comreset(self) -> None:
        """PxSCTL.DET = 1 (§10.4.2): reset the device, abandon its commands."""
        self._cancel_all()
        self.srst = False
        if self.drive is not None:
            self.drive.reset()
        self.regs["PxTFD"] = d.ATA_BUSY  # BSY until the signature FIS arrives
        self._set_link(LinkState.RESET)

    def _spun_up(self) -> bool:
        return bool(self.regs["PxCMD"] & r.PxCMD_SUD) or not self.hba.staggered_spin_up

    def _try_link_up(self) -> None:
        """COMRESET released, or spin-up: establish the link once the device is idle."""
        det = self.regs["PxSCTL"] & r.SCTL_DET_MASK
        if det != 0 or not self._spun_up() or self.hba.resetting:
            return
        if self.drive is None:
            self._set_link(LinkState.DOWN)
            return
        if self._records:
            self._set_link(LinkState.WAITING)
            return
        self._set_link(LinkState.UP)
        # §3.3.12: COMINIT from the device sets DIAG.X (exchanged) and DIAG.N (PhyRdy change)
        self.regs["PxSERR"] = self.regs["PxSERR"] | r.SERR_DIAG_X | r.SERR_DIAG_N
        self.drive.reset()
        self._send_signature()
        self.run()  # commands issued while the link was down start now

    def _send_signature(self) -> None:
        """The device's first D2H FIS after reset (ACS-3 Table 184): PxSIG and PxTFD."""
        assert self.drive is not None  # callers check (host-side invariant, not guest data)
        count, low, mid, high = self.drive.signature
        status = self.drive.reset_status
        self.regs["PxSIG"] = high << 24 | mid << 16 | low << 8 | count
        self.regs["PxTFD"] = 0x01 << 8 | status
        # §3.3.7 FRE: the first D2H FIS after reset is accepted even with FRE clear; it is
        # posted to memory only when FRE is set.
        try:
            self._post(r.RX_FIS_RFIS, build_d2h(status, 0x01, lba=high << 16 | mid << 8 | low, count=count, interrupt=False))
        except GuestMemoryError as exc:
            self._fatal(r.PxIS_HBFS, None, exc)

    def _stop(self) -> None:
        """ST 1 -> 0 (§3.3.7): clear PxCI/PxSACT and CCS; CR falls when the engine is idle."""
        self._cancel_all()
        self.regs["PxCI"] = 0
        self.regs["PxSACT"] = 0
        self.regs["PxCMD"] = self.regs["PxCMD"] & ~r.PxCMD_CCS_MASK
        self.halted = False
        self._update_cr()

    def _update_cr(self) -> None:
        cmd = self.regs["PxCMD"]
        if not cmd & r.PxCMD_ST and not self._records:
            self.regs["PxCMD"] = cmd & ~r.PxCMD_CR

    def _cancel_all(self) -> None:
        for record in self._live:
            record.cancelled = True
        self._live = [rec for rec in self._live if not rec.cancelled]
        self._active = None
        self._ncq = 0

    def hba_reset(self) -> None:
        """GHC.HR (§10.4.3): port registers to reset values except PxCLB/PxFB."""
        self._cancel_all()
        keep = {name: self.regs[name] for name in ("PxCLB", "PxCLBU", "PxFB", "PxFBU")}
        self.regs.reset()
        for name, value in keep.items():
            self.regs[name] = value
        if self.drive is not None:
            self.drive.reset()
        self.halted = False
        self.srst = False
        self.next_slot = 0
        self.link = LinkState.DOWN
        if self._records:  # rule 5: the engine is still running for the backend
            self.regs["PxCMD"] = self.regs["PxCMD"] | r.PxCMD_CR

    def after_hba_reset(self) -> None:
        """The reset finished: without staggered spin-up the link comes up by itself."""
        self._try_link_up()

    # -- received FIS area ----------------------------------------------------------------

    # The per-command paths below read and write ``regs.values`` by offset: the same
    # stored values as ``regs[name]``, without the name lookup (every value stays < 2**32).

    def _post(self, offset: int, fis: bytes) -> None:
        values = self.regs.values
        if not values[r.PxCMD] & r.PxCMD_FRE:
            return
        base = values[r.PxFBU] << 32 | values[r.PxFB] if self.hba.s64a else values[r.PxFB]
        self.memory.write(base + offset, fis)

    def _raise(self, bits: int) -> None:
        self.regs.values[r.PxIS] |= bits

    # -- the command engine ---------------------------------------------------------------

    def run(self) -> None:
        """Fetch and start issued commands (rules 3 and 6)."""
        values = self.regs.values
        for _ in range(r.NUM_SLOTS):
            if self.halted or self._active is not None or self.link != LinkState.UP or self.hba.resetting:
                return
            if not values[r.PxCMD] & r.PxCMD_ST:
                return
            issued = values[r.PxCI] & _ALL_SLOTS
            if not issued:
                return
            slot = self._pick(issued)
            self.next_slot = (slot + 1) % r.NUM_SLOTS
            self._start(slot)

    def _pick(self, issued: int) -> int:
        rotated = (issued >> self.next_slot) | (issued << (r.NUM_SLOTS - self.next_slot)) & _ALL_SLOTS
        offset = (rotated & -rotated).bit_length() - 1
        return (self.next_slot + offset) % r.NUM_SLOTS

    def _clb(self) -> int:
        values = self.regs.values
        return values[r.PxCLBU] << 32 | values[r.PxCLB] if self.hba.s64a else values[r.PxCLB]

    def _start(self, slot: int) -> None:
        values = self.regs.values
        values[r.PxCMD] = values[r.PxCMD] & ~r.PxCMD_CCS_MASK | slot << r.PxCMD_CCS_SHIFT
        try:
            if not self.hba.dma_allowed:
                raise BusMasterDisabled("command issued with PCI bus mastering disabled")
            header = self._clb() + slot * r.CMD_HEADER_SIZE
            dw0, _prdbc, ctba, ctbau = CMD_HEADER.unpack(self.memory.read(header, r.CMD_HEADER_SIZE))
            cfl = dw0 & r.CMDH_CFL_MASK
            if not 5 <= cfl <= 16:  # §4.2.2: CFL is 2..16 dwords; a register FIS needs 5
                raise BadCommandFis(f"CFL {cfl} cannot hold a Register H2D FIS")
            table = (ctbau << 32 | ctba) & ~0x7F if self.hba.s64a else ctba & ~0x7F  # 128-byte aligned
            raw = self.memory.read(table, r.CMD_TABLE_PRDT)
            tf = parse_h2d(raw[: cfl * 4])
            self.memory.store_u32(header + 4, 0)  # PRDBC counts this execution's bytes
            if dw0 & r.CMDH_R or not tf.is_command:
                self._control(slot, tf, dw0)
                return
            cmd = Command(
                self.memory, slot, tf, raw[r.CMD_TABLE_ACMD : r.CMD_TABLE_ACMD + 16],
                bool(dw0 & r.CMDH_W), bool(dw0 & r.CMDH_A), Prdt(self.memory, table, dw0 >> r.CMDH_PRDTL_SHIFT),
            )
            if _tp_cmd.on:
                _tp_cmd.emit(port=self.index, slot=slot, command=tf.command, lba=tf.lba, count=tf.count)
            drive = self.drive
            assert drive is not None  # run() requires the link up, which requires a drive
            queued = drive.is_queued(tf)
            if queued and self._ncq & (1 << slot) or not queued and self._ncq:
                # SATA 3.x §13.6.3: a tag already in use, or a non-queued command while
                # queued ones are outstanding, aborts every outstanding command
                self._cancel_all()
                self._finish_plain(cmd, Finish(d.STATUS_ERR, d.ATA_ABORTED))
                drive.ncq_failed(None, Finish(d.STATUS_ERR, d.ATA_ABORTED))
                return
            outcome = drive.execute(cmd)
            if queued:
                self._accept_queued(slot)
            self._handle(cmd, outcome, queued, None)
        except AhciGuestError as exc:
            self._fatal(exc.pxis, slot, exc)
        except GuestMemoryError as exc:
            self._fatal(r.PxIS_HBFS, slot, exc)

    def _control(self, slot: int, tf: TaskFile, dw0: int) -> None:
        """A device-control FIS (C=0): software reset (§10.4.1)."""
        bit = 1 << slot
        if tf.control & d.ATA_SRST:
            self._cancel_all()
            self.srst = True
            if self.drive is not None:
                self.drive.reset()
            # with the header's C bit the HBA clears BSY once the FIS is sent (R_OK)
            self.regs["PxTFD"] = (self.regs["PxTFD"] & ~0xFF) | (0 if dw0 & r.CMDH_C else d.ATA_BUSY)
        elif self.srst:
            self.srst = False
            if self.drive is not None:
                self._send_signature()
        self.regs["PxCI"] = self.regs["PxCI"] & ~bit

    def _accept_queued(self, slot: int) -> None:
        """The device accepts an FPDMA command: D2H with BSY clear, PxCI cleared (§5.3.8)."""
        self._ncq |= 1 << slot
        self._post(r.RX_FIS_RFIS, _ACCEPT_D2H)
        values = self.regs.values
        values[r.PxTFD] = d.ATA_DRDY
        values[r.PxCI] &= ~(1 << slot)

    def _handle(self, cmd: Command, outcome: Outcome, queued: bool, record: _InFlight | None) -> None:
        if isinstance(outcome, Pending):
            backend = self.drive.backend if self.drive is not None else None
            if backend is None or not outcome.requests:
                raise AssertionError("a drive returned backend work without a backend")  # host-side bug
            if record is None:
                record = _InFlight(cmd.slot, cmd, queued, backend, outcome)
                self._live.append(record)
                if not queued:
                    self._active = cmd.slot
            record.pending = outcome
            record.results = {}
            record.order = []
            if queued and outcome.nbytes:
                # first-party DMA: the device names the slot whose PRDT moves the data
                self._post(r.RX_FIS_DSFIS, build_dma_setup(cmd.slot, outcome.nbytes, to_host=outcome.to_host))
            ref = self._backend_refs.setdefault(id(backend), [backend, 0])
            for request in outcome.requests:
                tag = self.hba.new_tag()
                request.tag = tag
                record.order.append(tag)
                self._records[tag] = record
                ref[1] += 1
                backend.submit(request, self.memory)
            return
        if record is not None and record in self._live:
            self._live.remove(record)
        if queued:
            self._finish_queued(cmd, outcome)
        else:
            self._active = None
            self._finish_plain(cmd, outcome)

    def _finish_plain(self, cmd: Command, result: Finish) -> None:
        """End a non-queued command (§5.3.x register, PIO and DMA protocols)."""
        slot, bit = cmd.slot, 1 << cmd.slot
        nbytes = result.transferred
        if result.data:
            cmd.scatter(result.data)
            nbytes = len(result.data)
        header = self._clb() + slot * r.CMD_HEADER_SIZE
        self.memory.store_u32(header + 4, nbytes)
        if _tp_done.on:
            _tp_done.emit(port=self.index, slot=slot, status=result.status, error=result.error, nbytes=nbytes)
        status, error = result.status, result.error
        if result.failed:
            self._post(r.RX_FIS_RFIS, build_d2h(status, error, result.lba, result.count, result.device))
            self.regs["PxTFD"] = error << 8 | status
            # §6.1.2: a task-file error halts the port; PxCI keeps the failing slot's bit
            self._raise(r.PxIS_DHRS | r.PxIS_TFES)
            self.halted = True
            return
        bits = r.PxIS_DPS if nbytes and cmd.prdt.interrupt_within(nbytes) else 0
        phase = result.phase
        if phase is DataPhase.PIO_IN:
            self._post(r.RX_FIS_PSFIS, build_pio_setup(d.STATUS_PIO_DATA, status, nbytes, to_host=True,
                                                       lba=result.lba, count=result.count, device=result.device))
            bits |= r.PxIS_PSS
        else:
            if phase in (DataPhase.PIO_OUT, DataPhase.PACKET_PIO) and nbytes:
                to_host = phase is DataPhase.PACKET_PIO
                self._post(r.RX_FIS_PSFIS, build_pio_setup(d.STATUS_PIO_DATA, status, nbytes, to_host=to_host,
                                                           interrupt=to_host))
                bits |= r.PxIS_PSS if to_host else 0
            self._post(r.RX_FIS_RFIS, build_d2h(status, error, result.lba, result.count, result.device))
            bits |= r.PxIS_DHRS
        self.regs["PxTFD"] = error << 8 | status
        self.regs["PxCI"] = self.regs["PxCI"] & ~bit
        self._raise(bits)

    def _finish_queued(self, cmd: Command, result: Finish) -> None:
        """Complete (SDB with the tag) or fail (SDB with ERR, NCQ error state) a queued command."""
        bit = 1 << cmd.slot
        self._ncq &= ~bit
        if result.failed:
            assert self.drive is not None
            self.drive.ncq_failed(cmd.slot, result)
            self._cancel_all()  # the device aborts every outstanding queued command
            self._post(r.RX_FIS_SDBFIS, build_sdb(result.status, result.error, 0))
            self.regs["PxTFD"] = result.error << 8 | (self.regs["PxTFD"] & 0b1000_1000) | result.status & 0b0111_0111
            self._raise(r.PxIS_SDBS | r.PxIS_TFES)
            self.halted = True
            return
        header = self._clb() + cmd.slot * r.CMD_HEADER_SIZE
        self.memory.store_u32(header + 4, result.transferred)
        self._post(r.RX_FIS_SDBFIS, build_sdb(result.status, 0, bit))
        values = self.regs.values
        values[r.PxTFD] = (values[r.PxTFD] & 0b1000_1000) | result.status & 0b0111_0111
        values[r.PxSACT] &= ~bit
        bits = r.PxIS_SDBS
        if result.transferred and cmd.prdt.interrupt_within(result.transferred):
            bits |= r.PxIS_DPS
        self._raise(bits)

    def _fatal(self, bit: int, slot: int | None, exc: Exception) -> None:
        """A fatal port error (§6.1.2): set the bit, stop, abandon the device's commands."""
        if _tp_fatal.on:
            _tp_fatal.emit(port=self.index, slot=slot, pxis=bit, error=str(exc))
        self._cancel_all()
        self._raise(bit)
        self.halted = True

    # -- completions ----------------------------------------------------------------------

    def backends(self) -> list[BlockBackend]:
        """Backends with requests in flight (the controller polls each once)."""
        return [ref[0] for ref in self._backend_refs.values()]

    def complete(self, completion: BlockCompletion) -> bool:
        """Take one backend completion; return whether it was this port's."""
        tag = completion.tag
        if not isinstance(tag, int):
            return False
        record = self._records.pop(tag, None)
        if record is None:
            return False
        ref = self._backend_refs[id(record.backend)]
        ref[1] -= 1
        if not ref[1]:
            del self._backend_refs[id(record.backend)]
        record.results[tag] = completion
        if any(t in self._records for t in record.order):
            return True
        if not record.cancelled:
            results = [record.results[t] for t in record.order]
            try:
                outcome = record.pending.resume(results)
                self._handle(record.cmd, outcome, record.queued, record)
            except AhciGuestError as exc:
                self._fatal(exc.pxis, record.slot, exc)
            except GuestMemoryError as exc:
                self._fatal(r.PxIS_HBFS, record.slot, exc)
        self._after_drain()
        return True

    def _after_drain(self) -> None:
        if not self._records:
            self._update_cr()
            if self.link == LinkState.WAITING:
                self._try_link_up()
        self.run()

    # -- host side ------------------------------------------------------------------------

    def attach(self, drive: Drive | None) -> None:
        """Connect ``drive`` (or nothing) to this port; the link comes up when allowed."""
        self.drive = drive
        self._set_link(LinkState.DOWN)
        self._try_link_up()
