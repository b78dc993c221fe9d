"""An ATA disk (ACS-3 command set) on a ``BlockBackend``, with NCQ, TRIM and logs.

Rules:

1. Dispatch is one table lookup by opcode (``_COMMANDS``); a missing opcode is aborted
   with ERR and ABRT in the task file (ACS-3 §6.3.2), never an exception.
2. Every LBA range is checked against the capacity before any backend request is built:
   past the end is ERR with IDNF and the first invalid LBA in the ending registers.
3. Durability: with the write cache disabled, and for FUA writes, the data write is
   followed by a backend FLUSH before the command completes; FLUSH CACHE (EXT) completes
   only after the backend flushed, and the backend flushes every write completed before it
   (``backends._block`` rule 5). So no data acknowledged before a FLUSH is lost.
4. After a queued command fails the device is in the NCQ error state (SATA 3.x §13.6.3.2):
   every command except READ LOG EXT of log 10h is aborted; reading log 10h reports the
   failed tag and leaves the state. COMRESET also leaves it.
5. The disk never touches guest memory itself: it asks the ``Command`` for checked
   segments (rule 1 of ``command.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..args import check_implements
from .._errors import UsageError
from .._trace import tracepoint
from ..backends import BlockBackend, BlockCompletion, BlockOp, BlockRequest, BlockStatus
from . import defs as d
from .command import Command, DataPhase, Finish, Outcome, Pending
from .fis import TaskFile
from .identify import DSM_MAX_BLOCKS, MAX_MULTIPLE, SUPPORTED_ID_PAGES, DriveInfo, identify_device, identify_log_page

__all__ = ["AtaDisk", "SECTOR_SIZE"]

SECTOR_SIZE = 512

_tp_cmd = tracepoint("ahci.ata.command")
_tp_abort = tracepoint("ahci.ata.abort")

_LOG_NCQ_NQ = 0x80  # byte 0 bit 7: the error was not for a queued command (SATA 3.x §13.7.4)


def _sum_checksum(page: bytearray) -> bytes:
    page[511] = (-sum(page[:511])) & 0xFF
    return bytes(page)


class AtaDisk:
    """A SATA disk: 512-byte sectors, LBA48, NCQ depth 32, TRIM, write cache, logs.

    Args:
        backend: the disk image; its capacity is rounded down to whole sectors.
        model, serial, firmware: IDENTIFY strings.
        rotational: report a spinning disk (word 217) instead of an SSD.

    Raises:
        UsageError: the backend's logical block size is not a divisor of 512, or it holds
            less than one sector.
    """

    signature = (d.SIG_ATA[0], d.SIG_ATA[1], d.SIG_ATA[2], d.SIG_ATA[3])
    reset_status = d.STATUS_OK
    is_atapi = False

    def __init__(
        self,
        backend: BlockBackend,
        *,
        model: str = "DEVMODELS HARDDISK",
        serial: str = "DM0000000001",
        firmware: str = "0.1",
        rotational: bool = False,
    ) -> None:
        check_implements("AtaDisk", "backend", backend, BlockBackend)
        block = backend.logical_block_size
        if block <= 0 or SECTOR_SIZE % block:
            raise UsageError(f"an ATA disk needs a backend block size dividing 512, got {block}")
        if backend.capacity < SECTOR_SIZE:
            raise UsageError(f"backend capacity {backend.capacity} is smaller than one sector")
        self.backend = backend
        self.info = DriveInfo(model, serial, firmware)
        self.rotational = rotational
        self.sectors = backend.capacity // SECTOR_SIZE
        # persistent settings (SET FEATURES; kept across resets)
        self.write_cache = True
        self.read_ahead = True
        self.udma_mode: int | None = 6
        self.mwdma_mode: int | None = None
        self.multiple = MAX_MULTIPLE
        self.smart_enabled = True
        # volatile state
        self.power = d.POWER_ACTIVE
        self.ncq_error: bytes | None = None  # the pending log 10h page

    # -- identity -------------------------------------------------------------------------

    def identify(self) -> bytes:
        """The current IDENTIFY DEVICE data."""
        return identify_device(
            self.info,
            self.sectors,
            write_cache=self.write_cache,
            read_ahead=self.read_ahead,
            udma_mode=self.udma_mode,
            mwdma_mode=self.mwdma_mode,
            multiple=self.multiple,
            rotational=self.rotational,
        )

    # -- the Drive protocol ---------------------------------------------------------------

    def is_queued(self, tf: TaskFile) -> bool:
        """READ/WRITE FPDMA QUEUED."""
        return tf.command in (d.ATA_CMD_FPDMA_READ, d.ATA_CMD_FPDMA_WRITE)

    def reset(self) -> None:
        """COMRESET/SRST: leave the NCQ error state; settings persist."""
        self.ncq_error = None
        self.power = d.POWER_ACTIVE

    def ncq_error_pending(self) -> bool:
        """Rule 4."""
        return self.ncq_error is not None

    def ncq_failed(self, tag: int | None, result: Finish) -> None:
        """Build the log 10h page for a failed queued command (SATA 3.x §13.7.4)."""
        page = bytearray(512)
        page[0] = (tag & 0x1F) if tag is not None else _LOG_NCQ_NQ
        page[2] = result.status & 0xFF
        page[3] = result.error & 0xFF
        struct.pack_into("<BBBBBBB", page, 4, *(result.lba >> s & 0xFF for s in (0, 8, 16)), result.device & 0xFF,
                         *(result.lba >> s & 0xFF for s in (24, 32, 40)))
        struct.pack_into("<H", page, 12, result.count & 0xFFFF)
        self.ncq_error = _sum_checksum(page)

    def execute(self, cmd: Command) -> Outcome:
        """Run one command (rule 1)."""
        tf = cmd.tf
        if _tp_cmd.on:
            _tp_cmd.emit(slot=cmd.slot, command=tf.command, features=tf.features, lba=tf.lba, count=tf.count)
        if self.ncq_error is not None and not (
            tf.command == d.ATA_CMD_READ_LOG_EXT and tf.lba & 0xFF == d.ATA_LOG_SATA_NCQ
        ):
            return self._abort(cmd, "NCQ error state")
        handler = _COMMANDS.get(tf.command)
        if handler is None:
            return self._abort(cmd, "unsupported command")
        return handler(self, cmd)

    # -- helpers --------------------------------------------------------------------------

    def _abort(self, cmd: Command, why: str) -> Finish:
        if _tp_abort.on:
            _tp_abort.emit(slot=cmd.slot, command=cmd.tf.command, reason=why)
        phase = DataPhase.NCQ if self.is_queued(cmd.tf) else DataPhase.NON_DATA
        return Finish(d.STATUS_ERR, d.ATA_ABORTED, phase=phase)

    def _idnf(self, lba: int, phase: DataPhase) -> Finish:
        # ACS-3 §6.3.5: ID NOT FOUND, LBA of the first address past the end
        return Finish(d.STATUS_ERR, d.ATA_IDNF, lba=max(lba, self.sectors), phase=phase)

    def _in_range(self, lba: int, count: int) -> bool:
        return lba + count <= self.sectors

    def _with_flush(
        self, requests: list[BlockRequest], done: Callable[[BlockStatus, int], Finish], *, to_host: bool, nbytes: int,
        flush: bool,
    ) -> Pending:
        """Run ``requests``; if ``flush``, follow them with a FLUSH before finishing (rule 3).
        ``done`` gets the worst status and, when it failed, the bytes the failing request
        moved before its error."""

        def after_io(results: list[BlockCompletion]) -> Outcome:
            status, transferred = _worst(results)
            if status is not BlockStatus.OK or not flush:
                return done(status, transferred)
            return Pending([BlockRequest(BlockOp.FLUSH, 0, 0)], lambda r: done(*_worst(r)), to_host=to_host)

        return Pending(requests, after_io, to_host=to_host, nbytes=nbytes)

    # -- data transfer --------------------------------------------------------------------

    def _transfer(
        self, cmd: Command, lba: int, count: int, *, write: bool, phase: DataPhase, fua: bool = False
    ) -> Outcome:
        if not self._in_range(lba, count):
            return self._idnf(lba, DataPhase.NCQ if phase is DataPhase.NCQ else DataPhase.NON_DATA)
        if write and self.backend.readonly:
            return self._abort(cmd, "read-only backend")
        nbytes = count * SECTOR_SIZE
        segments = cmd.segments(nbytes, to_host=not write)
        self.power = d.POWER_ACTIVE
        op = BlockOp.WRITE if write else BlockOp.READ
        request = BlockRequest(op, lba * SECTOR_SIZE, nbytes, segments)

        def done(status: BlockStatus, transferred: int) -> Finish:
            if status is BlockStatus.OK:
                return Finish(d.STATUS_OK, phase=phase, transferred=nbytes)
            # The error outputs name the first sector that failed (ACS-3 READ/WRITE DMA EXT
            # error outputs: "LBA of First Unrecoverable Error"; for NCQ the same LBA goes to
            # log 10h, SATA 3.x §13.7.4): the sectors before it were transferred.
            failed = lba + min(max(transferred, 0), nbytes - SECTOR_SIZE) // SECTOR_SIZE
            if write:  # a failed media write is a device fault (ACS-3 §6.2.6)
                return Finish(d.STATUS_ERR | d.ATA_DF, d.ATA_ABORTED, lba=failed, phase=_error_phase(phase))
            return Finish(d.STATUS_ERR, d.ATA_UNC, lba=failed, phase=_error_phase(phase))

        flush = write and (fua or not self.write_cache)
        return self._with_flush([request], done, to_host=not write, nbytes=nbytes, flush=flush)

    def _rw28(self, cmd: Command, *, write: bool, phase: DataPhase, multiple: bool = False) -> Outcome:
        tf = cmd.tf
        if not tf.device & d.ATA_LBA:
            return self._abort(cmd, "CHS addressing is not supported")
        if multiple and not self.multiple:
            return self._abort(cmd, "READ/WRITE MULTIPLE with multiple mode disabled")
        return self._transfer(cmd, tf.lba28, (tf.count & 0xFF) or 256, write=write, phase=phase)

    def _rw48(self, cmd: Command, *, write: bool, phase: DataPhase, multiple: bool = False, fua: bool = False) -> Outcome:
        if multiple and not self.multiple:
            return self._abort(cmd, "READ/WRITE MULTIPLE with multiple mode disabled")
        return self._transfer(cmd, cmd.tf.lba, cmd.tf.count or 65536, write=write, phase=phase, fua=fua)

    def _fpdma(self, cmd: Command, *, write: bool) -> Outcome:
        tf = cmd.tf
        tag = (tf.count >> 3) & 0x1F
        if tag != cmd.slot:
            # AHCI first-party DMA: the DMA Setup FIS names a command slot by the NCQ tag,
            # so a tag that differs from its slot would move another command's data
            return self._abort(cmd, f"NCQ tag {tag} in slot {cmd.slot}")
        return self._transfer(
            cmd, tf.lba, tf.features or 65536, write=write, phase=DataPhase.NCQ, fua=bool(tf.device & d.ATA_FUA)
        )

    # -- non-data commands ----------------------------------------------------------------

    def _flush(self, cmd: Command) -> Outcome:
        def done(status: BlockStatus, transferred: int) -> Finish:
            if status is BlockStatus.OK:
                return Finish(d.STATUS_OK)
            return Finish(d.STATUS_ERR | d.ATA_DF, d.ATA_ABORTED)

        return self._with_flush([BlockRequest(BlockOp.FLUSH, 0, 0)], done, to_host=False, nbytes=0, flush=False)

    def _verify(self, cmd: Command, *, lba48: bool) -> Outcome:
        tf = cmd.tf
        if lba48:
            lba, count = tf.lba, tf.count or 65536
        else:
            if not tf.device & d.ATA_LBA:
                return self._abort(cmd, "CHS addressing is not supported")
            lba, count = tf.lba28, (tf.count & 0xFF) or 256
        if not self._in_range(lba, count):
            return self._idnf(lba, DataPhase.NON_DATA)
        # The backend has no verify operation; the image has no unreadable sectors to find.
        return Finish(d.STATUS_OK)

    def _set_features(self, cmd: Command) -> Outcome:
        tf = cmd.tf
        sub = tf.features & 0xFF
        if sub == d.SETFEATURES_WC_ON:
            self.write_cache = True
        elif sub == d.SETFEATURES_WC_OFF:
            self.write_cache = False
        elif sub == d.SETFEATURES_RA_ON:
            self.read_ahead = True
        elif sub == d.SETFEATURES_RA_OFF:
            self.read_ahead = False
        elif sub == d.SETFEATURES_XFER:
            mode = tf.count & 0xFF
            if mode in (d.XFER_PIO_DEFAULT, d.XFER_PIO_DEFAULT_NO_IORDY) or d.XFER_PIO_0 <= mode <= d.XFER_PIO_0 + 4:
                self.udma_mode = self.mwdma_mode = None
            elif d.XFER_MW_DMA_0 <= mode <= d.XFER_MW_DMA_0 + 2:
                self.udma_mode, self.mwdma_mode = None, mode - d.XFER_MW_DMA_0
            elif d.XFER_UDMA_0 <= mode <= d.XFER_UDMA_0 + 6:
                self.udma_mode, self.mwdma_mode = mode - d.XFER_UDMA_0, None
            else:
                return self._abort(cmd, f"transfer mode {mode:#x}")
        elif sub in (d.SETFEATURES_DEFAULTS_OFF, d.SETFEATURES_DEFAULTS_ON):
            pass  # reverting to power-on defaults: the settings persist either way
        else:  # SATA feature enables (word 78 advertises none) and the rest
            return self._abort(cmd, f"SET FEATURES {sub:#x}")
        return Finish(d.STATUS_OK)

    def _set_multiple(self, cmd: Command) -> Outcome:
        count = cmd.tf.count & 0xFF
        if count and (count > MAX_MULTIPLE or count & (count - 1)):
            return self._abort(cmd, f"multiple count {count}")
        self.multiple = count
        return Finish(d.STATUS_OK)

    def _dsm(self, cmd: Command) -> Outcome:
        tf = cmd.tf
        blocks = tf.count
        if not tf.features & d.ATA_DSM_TRIM or not 0 < blocks <= DSM_MAX_BLOCKS:
            return self._abort(cmd, f"DSM features {tf.features:#x} blocks {blocks}")
        if self.backend.readonly:
            return self._abort(cmd, "TRIM on a read-only backend")
        payload = cmd.gather(blocks * SECTOR_SIZE)
        ranges: list[tuple[int, int]] = []
        for (entry,) in struct.iter_unpack("<Q", payload):
            lba, length = entry & 0xFFFF_FFFF_FFFF, entry >> 48
            if not length:
                continue
            if not self._in_range(lba, length):
                return self._abort(cmd, f"TRIM range {lba}+{length} past the end")
            ranges.append((lba, length))
        transferred = blocks * SECTOR_SIZE
        if not ranges or not self.backend.supports_discard:
            # TRIM is advisory; without DRAT/RZAT (word 69) nothing promises zeros
            return Finish(d.STATUS_OK, phase=DataPhase.DMA, transferred=transferred)
        requests = [BlockRequest(BlockOp.DISCARD, lba * SECTOR_SIZE, n * SECTOR_SIZE) for lba, n in ranges]

        def done(results: list[BlockCompletion]) -> Outcome:
            if any(r.status is BlockStatus.IO_ERROR for r in results):
                return Finish(d.STATUS_ERR, d.ATA_ABORTED, phase=DataPhase.NON_DATA)
            return Finish(d.STATUS_OK, phase=DataPhase.DMA, transferred=transferred)

        return Pending(requests, done, to_host=False, nbytes=0)

    def _power(self, cmd: Command) -> Outcome:
        tf = cmd.tf
        if tf.command == d.ATA_CMD_CHK_POWER:
            return Finish(d.STATUS_OK, count=self.power)
        if tf.command in (d.ATA_CMD_STANDBY, d.ATA_CMD_STANDBYNOW1):
            self.power = d.POWER_STANDBY
        else:
            self.power = d.POWER_IDLE
        return Finish(d.STATUS_OK)

    def _smart(self, cmd: Command) -> Outcome:
        tf = cmd.tf
        if (tf.lba_mid, tf.lba_high) != (d.SMART_LBA_MID, d.SMART_LBA_HIGH):
            return self._abort(cmd, "SMART without its key")
        sub = tf.features & 0xFF
        if sub == d.SMART_ENABLE:
            self.smart_enabled = True
        elif sub == d.SMART_DISABLE:
            self.smart_enabled = False
        elif sub == d.SMART_STATUS and self.smart_enabled:
            # no threshold exceeded: LBA mid/high read back 4Fh/C2h (ACS-3 §7.48.10)
            return Finish(d.STATUS_OK, lba=d.SMART_LBA_HIGH << 16 | d.SMART_LBA_MID << 8)
        else:
            return self._abort(cmd, f"SMART {sub:#x}")
        return Finish(d.STATUS_OK)

    def _edd(self, cmd: Command) -> Outcome:
        count, low, mid, high = self.signature
        # ACS-3 §7.9: diagnostic code 01h (device 0 passed) in the error register
        return Finish(d.STATUS_OK, 0x01, lba=high << 16 | mid << 8 | low, count=count)

    # -- PIO data-in from the device ------------------------------------------------------

    def _identify(self, cmd: Command) -> Outcome:
        self.power = d.POWER_ACTIVE
        return Finish(d.STATUS_OK, phase=DataPhase.PIO_IN, data=self.identify())

    def _read_log(self, cmd: Command) -> Outcome:
        tf = cmd.tf
        log, page, count = tf.lba & 0xFF, (tf.lba >> 8) & 0xFFFF, tf.count
        sizes = {d.ATA_LOG_DIRECTORY: 1, d.ATA_LOG_SATA_NCQ: 1, d.ATA_LOG_IDENTIFY_DEVICE: max(SUPPORTED_ID_PAGES) + 1}
        if log not in sizes or count == 0 or page + count > sizes[log]:
            return self._abort(cmd, f"READ LOG EXT log {log:#x} page {page} count {count}")
        pages = [self._log_page(log, p) for p in range(page, page + count)]
        if any(p is None for p in pages):
            return self._abort(cmd, f"READ LOG EXT log {log:#x} page not supported")
        if log == d.ATA_LOG_SATA_NCQ:
            self.ncq_error = None  # reading log 10h leaves the NCQ error state
        return Finish(d.STATUS_OK, phase=DataPhase.PIO_IN, data=b"".join(p for p in pages if p is not None))

    def _log_page(self, log: int, page: int) -> bytes | None:
        if log == d.ATA_LOG_DIRECTORY:
            directory = [0] * 256
            directory[0] = 0x0001  # general purpose log directory version
            directory[d.ATA_LOG_SATA_NCQ] = 1
            directory[d.ATA_LOG_IDENTIFY_DEVICE] = max(SUPPORTED_ID_PAGES) + 1
            return struct.pack("<256H", *directory)
        if log == d.ATA_LOG_SATA_NCQ:
            if self.ncq_error is not None:
                return self.ncq_error
            empty = bytearray(512)
            empty[0] = _LOG_NCQ_NQ
            return _sum_checksum(empty)
        return identify_log_page(page, self.identify())


def _worst(results: list[BlockCompletion]) -> tuple[BlockStatus, int]:
    """The first failure's status and the bytes it moved before failing, or (OK, 0)."""
    for result in results:
        if result.status is not BlockStatus.OK:
            return result.status, result.transferred
    return BlockStatus.OK, 0


def _error_phase(phase: DataPhase) -> DataPhase:
    return DataPhase.NCQ if phase is DataPhase.NCQ else DataPhase.NON_DATA


Handler = Callable[[AtaDisk, Command], Outcome]

_COMMANDS: dict[int, Handler] = {
    d.ATA_CMD_ID_ATA: AtaDisk._identify,
    d.ATA_CMD_READ: lambda s, c: s._rw28(c, write=False, phase=DataPhase.DMA),
    d.ATA_CMD_WRITE: lambda s, c: s._rw28(c, write=True, phase=DataPhase.DMA),
    d.ATA_CMD_READ_EXT: lambda s, c: s._rw48(c, write=False, phase=DataPhase.DMA),
    d.ATA_CMD_WRITE_EXT: lambda s, c: s._rw48(c, write=True, phase=DataPhase.DMA),
    d.ATA_CMD_WRITE_FUA_EXT: lambda s, c: s._rw48(c, write=True, phase=DataPhase.DMA, fua=True),
    d.ATA_CMD_PIO_READ: lambda s, c: s._rw28(c, write=False, phase=DataPhase.PIO_IN),
    d.ATA_CMD_PIO_WRITE: lambda s, c: s._rw28(c, write=True, phase=DataPhase.PIO_OUT),
    d.ATA_CMD_PIO_READ_EXT: lambda s, c: s._rw48(c, write=False, phase=DataPhase.PIO_IN),
    d.ATA_CMD_PIO_WRITE_EXT: lambda s, c: s._rw48(c, write=True, phase=DataPhase.PIO_OUT),
    d.ATA_CMD_READ_MULTI: lambda s, c: s._rw28(c, write=False, phase=DataPhase.PIO_IN, multiple=True),
    d.ATA_CMD_WRITE_MULTI: lambda s, c: s._rw28(c, write=True, phase=DataPhase.PIO_OUT, multiple=True),
    d.ATA_CMD_READ_MULTI_EXT: lambda s, c: s._rw48(c, write=False, phase=DataPhase.PIO_IN, multiple=True),
    d.ATA_CMD_WRITE_MULTI_EXT: lambda s, c: s._rw48(c, write=True, phase=DataPhase.PIO_OUT, multiple=True),
    d.ATA_CMD_FPDMA_READ: lambda s, c: s._fpdma(c, write=False),
    d.ATA_CMD_FPDMA_WRITE: lambda s, c: s._fpdma(c, write=True),
    d.ATA_CMD_FLUSH: AtaDisk._flush,
    d.ATA_CMD_FLUSH_EXT: AtaDisk._flush,
    d.ATA_CMD_VERIFY: lambda s, c: s._verify(c, lba48=False),
    d.ATA_CMD_VERIFY_EXT: lambda s, c: s._verify(c, lba48=True),
    d.ATA_CMD_SET_FEATURES: AtaDisk._set_features,
    d.ATA_CMD_SET_MULTI: AtaDisk._set_multiple,
    d.ATA_CMD_DSM: AtaDisk._dsm,
    d.ATA_CMD_CHK_POWER: AtaDisk._power,
    d.ATA_CMD_IDLE: AtaDisk._power,
    d.ATA_CMD_IDLEIMMEDIATE: AtaDisk._power,
    d.ATA_CMD_STANDBY: AtaDisk._power,
    d.ATA_CMD_STANDBYNOW1: AtaDisk._power,
    d.ATA_CMD_SMART: AtaDisk._smart,
    d.ATA_CMD_READ_LOG_EXT: AtaDisk._read_log,
    d.ATA_CMD_EDD: AtaDisk._edd,
}
