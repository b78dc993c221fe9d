"""An ATAPI CD/DVD-ROM drive: the PACKET command with the MMC subset Linux uses.

Rules:

1. ATA commands go through ``_ATA_COMMANDS`` (IDENTIFY PACKET DEVICE, PACKET, DEVICE
   RESET, ...); every other ATA opcode is aborted, IDENTIFY DEVICE with the packet
   signature in the task file (ACS-3 §7.12.4) so a driver can tell what it talks to.
2. CDBs go through ``_SCSI_COMMANDS``; a missing opcode is CHECK CONDITION with ILLEGAL
   REQUEST / INVALID COMMAND OPERATION CODE. A failed command ends with ERR (CHK) set and
   the sense key in error bits 7:4 (ACS-3 §7.18.6); REQUEST SENSE returns the details.
3. Device-generated data is cut to the CDB's allocation length; the port cuts nothing
   else: a PRDT too small for what the device sends is PxIS.OFS.
4. The medium is an optional read-only ``BlockBackend`` read in 2048-byte blocks. A unit
   attention (MEDIUM MAY HAVE CHANGED) and a media event follow every change; the unit
   attention is reported once, by the first command that is not INQUIRY, REQUEST SENSE,
   GET CONFIGURATION or GET EVENT STATUS NOTIFICATION (MMC-5 §4.1.6.1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..args import check_implements
from .._errors import UsageError
from .._trace import tracepoint
from ..backends import BlockBackend, BlockCompletion, BlockOp, BlockRequest, BlockStatus
from . import defs as d
from .command import Command, DataPhase, Finish, Outcome, Pending
from .fis import TaskFile
from .identify import DriveInfo, identify_packet_device

__all__ = ["AtapiCdrom", "Sense"]

_tp_packet = tracepoint("ahci.atapi.packet")

_ATAPI_STATUS_OK = d.ATA_DRDY | d.ATA_DSC
_ATAPI_STATUS_CHK = d.ATA_DRDY | d.ATA_ERR
_IREASON_STATUS = 0b11  # count register after the status phase: I/O=1, C/D=1

# media event codes (MMC-5 Table 164)
_EVENT_NONE = 0
_EVENT_NEW_MEDIA = 2
_EVENT_MEDIA_REMOVAL = 3


@dataclass(frozen=True)
class Sense:
    """Fixed-format sense data fields (SPC-3 §4.5.3)."""

    key: int = d.NO_SENSE
    asc: int = 0
    ascq: int = 0

    def fixed(self) -> bytes:
        """The 18-byte fixed-format sense data (response code 70h)."""
        return bytes([0x70, 0, self.key, 0, 0, 0, 0, 10, 0, 0, 0, 0, self.asc, self.ascq, 0, 0, 0, 0])


class _CheckCondition(Exception):
    """Internal: ends a CDB with CHECK CONDITION (never leaves this module)."""

    def __init__(self, key: int, code: tuple[int, int]) -> None:
        self.sense = Sense(key, *code)


def _be16(cdb: bytes, at: int) -> int:
    return int(cdb[at]) << 8 | cdb[at + 1]


def _be32(cdb: bytes, at: int) -> int:
    return int.from_bytes(cdb[at : at + 4], "big")


def _msf(lba: int) -> bytes:
    lba += 150  # MMC-5 §6.3: MSF addresses count the 2-second pregap
    return bytes([0, lba // (60 * 75), (lba // 75) % 60, lba % 75])


class AtapiCdrom:
    """A removable CD/DVD-ROM drive.

    Args:
        medium: an ISO image (read-only is expected; writes are never issued), or None
            for an empty drive.
        model, serial, firmware: IDENTIFY PACKET DEVICE strings.
        vendor, product, revision: INQUIRY strings (8, 16 and 4 characters at most).

    Raises:
        UsageError: a string is too long or the medium's block size does not divide 2048.
    """

    signature = (d.SIG_ATAPI[0], d.SIG_ATAPI[1], d.SIG_ATAPI[2], d.SIG_ATAPI[3])
    reset_status = 0x00  # packet devices clear DRDY after reset (ACS-3 §9.12)
    is_atapi = True

    def __init__(
        self,
        medium: BlockBackend | None = None,
        *,
        model: str = "DEVMODELS DVD-ROM",
        serial: str = "DM0000000002",
        firmware: str = "0.1",
        vendor: str = "DEVMODEL",
        product: str = "DVD-ROM",
        revision: str = "0.1",
    ) -> None:
        self.info = DriveInfo(model, serial, firmware)
        for name, value, limit in (("vendor", vendor, 8), ("product", product, 16), ("revision", revision, 4)):
            if len(value) > limit or not value.isascii() or not value.isprintable():
                raise UsageError(f"INQUIRY {name} must be printable ASCII of at most {limit} characters")
        self._inquiry_strings = (
            vendor.encode().ljust(8) + product.encode().ljust(16) + revision.encode().ljust(4)
        )
        self.backend: BlockBackend | None = None
        self.tray_open = False
        self.locked = False
        self.sense = Sense()
        self.unit_attention: tuple[int, int] | None = None
        self.media_event = _EVENT_NONE
        self.udma_mode: int | None = 5
        self.mwdma_mode: int | None = None
        self.power = d.POWER_ACTIVE
        if medium is not None:
            self._check_medium(medium)
            self.backend = medium

    # -- the host side --------------------------------------------------------------------

    @staticmethod
    def _check_medium(medium: BlockBackend) -> None:
        check_implements("AtapiCdrom", "medium", medium, BlockBackend)
        block = medium.logical_block_size
        if block <= 0 or d.CD_FRAMESIZE % block:
            raise UsageError(f"a CD medium needs a block size dividing 2048, got {block}")

    def insert(self, medium: BlockBackend) -> None:
        """Load ``medium`` and close the tray (the host's "change medium").

        The controller checks that no request is in flight first (``AhciController.change_medium``).
        """
        self._check_medium(medium)
        self.backend = medium
        self.tray_open = False
        self.unit_attention = d.ASC_MEDIUM_MAY_HAVE_CHANGED
        self.media_event = _EVENT_NEW_MEDIA

    def remove(self) -> None:
        """Take the medium out (the host's "eject"); the tray stays closed and empty."""
        if self.backend is not None:
            self.media_event = _EVENT_MEDIA_REMOVAL
            self.unit_attention = d.ASC_MEDIUM_MAY_HAVE_CHANGED
        self.backend = None

    @property
    def blocks(self) -> int:
        """2048-byte blocks on the medium (0 when empty)."""
        return self.backend.capacity // d.CD_FRAMESIZE if self.backend is not None else 0

    @property
    def medium_ready(self) -> bool:
        """A medium is loaded and the tray is closed."""
        return self.backend is not None and not self.tray_open

    @property
    def profile(self) -> int:
        """The current MMC profile: CD-ROM up to 80 minutes of data, DVD-ROM above."""
        if not self.medium_ready:
            return d.MMC_PROFILE_NONE
        return d.MMC_PROFILE_CD_ROM if self.blocks <= d.CD_MAX_SECTORS else d.MMC_PROFILE_DVD_ROM

    # -- the Drive protocol ---------------------------------------------------------------

    def is_queued(self, tf: TaskFile) -> bool:
        """Packet devices have no NCQ."""
        return False

    def reset(self) -> None:
        """COMRESET / SRST / DEVICE RESET: the medium and the lock persist."""
        self.power = d.POWER_ACTIVE

    def ncq_error_pending(self) -> bool:
        """Never: no queued commands."""
        return False

    def ncq_failed(self, tag: int | None, result: Finish) -> None:
        """Not applicable to packet devices."""

    def execute(self, cmd: Command) -> Outcome:
        """Run one ATA command (rule 1)."""
        handler = _ATA_COMMANDS.get(cmd.tf.command)
        if handler is None:
            return Finish(_ATAPI_STATUS_CHK, d.ATA_ABORTED)
        return handler(self, cmd)

    def identify(self) -> bytes:
        """The current IDENTIFY PACKET DEVICE data."""
        return identify_packet_device(self.info, udma_mode=self.udma_mode, mwdma_mode=self.mwdma_mode)

    # -- ATA commands ---------------------------------------------------------------------

    def _signature_finish(self, status: int, error: int) -> Finish:
        count, low, mid, high = self.signature
        return Finish(status, error, lba=high << 16 | mid << 8 | low, count=count)

    def _identify_ata(self, cmd: Command) -> Outcome:
        return self._signature_finish(_ATAPI_STATUS_CHK, d.ATA_ABORTED)

    def _identify_packet(self, cmd: Command) -> Outcome:
        return Finish(_ATAPI_STATUS_OK, phase=DataPhase.PIO_IN, data=self.identify())

    def _device_reset(self, cmd: Command) -> Outcome:
        self.reset()
        return self._signature_finish(self.reset_status, 0x01)

    def _set_features(self, cmd: Command) -> Outcome:
        tf = cmd.tf
        if tf.features & 0xFF != d.SETFEATURES_XFER:
            return Finish(_ATAPI_STATUS_CHK, d.ATA_ABORTED)
        mode = tf.count & 0xFF
        if mode in (d.XFER_PIO_DEFAULT, d.XFER_PIO_DEFAULT_NO_IORDY) or d.XFER_PIO_0 <= mode <= d.XFER_PIO_0 + 4:
            self.udma_mode = self.mwdma_mode = None
        elif d.XFER_MW_DMA_0 <= mode <= d.XFER_MW_DMA_0 + 2:
            self.udma_mode, self.mwdma_mode = None, mode - d.XFER_MW_DMA_0
        elif d.XFER_UDMA_0 <= mode <= d.XFER_UDMA_0 + 5:
            self.udma_mode, self.mwdma_mode = mode - d.XFER_UDMA_0, None
        else:
            return Finish(_ATAPI_STATUS_CHK, d.ATA_ABORTED)
        return Finish(_ATAPI_STATUS_OK)

    def _power(self, cmd: Command) -> Outcome:
        if cmd.tf.command == d.ATA_CMD_CHK_POWER:
            return Finish(_ATAPI_STATUS_OK, count=self.power)
        self.power = d.POWER_STANDBY if cmd.tf.command == d.ATA_CMD_STANDBYNOW1 else d.POWER_IDLE
        return Finish(_ATAPI_STATUS_OK)

    def _packet(self, cmd: Command) -> Outcome:
        cdb = cmd.cdb[:12]
        phase = DataPhase.PACKET_DMA if cmd.tf.features & 0b1 else DataPhase.PACKET_PIO
        opcode = cdb[0]
        if _tp_packet.on:
            _tp_packet.emit(slot=cmd.slot, opcode=opcode, cdb=cdb.hex())
        try:
            if self.unit_attention is not None and opcode not in _NO_UNIT_ATTENTION:
                code, self.unit_attention = self.unit_attention, None
                raise _CheckCondition(d.UNIT_ATTENTION, code)
            handler = _SCSI_COMMANDS.get(opcode)
            if handler is None:
                raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_INVALID_OPCODE)
            result = handler(self, cdb, cmd, phase)
        except _CheckCondition as cc:
            return self._check_condition(cc.sense)
        if isinstance(result, Pending):
            return result
        self.sense = Sense()
        return Finish(_ATAPI_STATUS_OK, count=_IREASON_STATUS, phase=phase, data=result or None)

    def _check_condition(self, sense: Sense) -> Finish:
        self.sense = sense
        error = sense.key << 4 | (d.ATA_ABORTED if sense.key == d.ILLEGAL_REQUEST else 0)
        return Finish(_ATAPI_STATUS_CHK, error, count=_IREASON_STATUS)

    # -- SCSI / MMC commands (each returns data, or a Pending) ----------------------------

    def _require_medium(self) -> None:
        if self.backend is None:
            raise _CheckCondition(d.NOT_READY, d.ASC_MEDIUM_NOT_PRESENT_TRAY_CLOSED)
        if self.tray_open:
            raise _CheckCondition(d.NOT_READY, d.ASC_MEDIUM_NOT_PRESENT_TRAY_OPEN)

    def _test_unit_ready(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        self._require_medium()
        return b""

    def _request_sense(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        sense = self.sense
        if self.unit_attention is not None:
            sense, self.unit_attention = Sense(d.UNIT_ATTENTION, *self.unit_attention), None
        return sense.fixed()[: cdb[4]]

    def _inquiry(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        if cdb[1] & 0b1 or cdb[2]:  # no vital product data pages
            raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_INVALID_FIELD_IN_CDB)
        # SPC-3 §6.4.2: CD/DVD device, removable, SPC-3, response data format 2
        data = bytes([0x05, 0x80, 0x05, 0x02, 31, 0, 0, 0]) + self._inquiry_strings
        return data[: _be16(cdb, 3)]

    def _read_capacity(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        self._require_medium()
        return struct.pack(">II", self.blocks - 1, d.CD_FRAMESIZE)

    def _read(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes | Pending:
        self._require_medium()
        lba = _be32(cdb, 2)
        count = _be16(cdb, 7) if cdb[0] == d.GPCMD_READ_10 else _be32(cdb, 6)
        if not count:
            return b""
        if lba + count > self.blocks:
            raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_LBA_OUT_OF_RANGE)
        nbytes = count * d.CD_FRAMESIZE
        segments = cmd.segments(nbytes, to_host=True)
        request = BlockRequest(BlockOp.READ, lba * d.CD_FRAMESIZE, nbytes, segments)

        def done(results: list[BlockCompletion]) -> Outcome:
            if results[0].status is not BlockStatus.OK:
                return self._check_condition(Sense(d.MEDIUM_ERROR, *d.ASC_UNRECOVERED_READ_ERROR))
            self.sense = Sense()
            return Finish(_ATAPI_STATUS_OK, count=_IREASON_STATUS, phase=phase, transferred=nbytes)

        return Pending([request], done, to_host=True, nbytes=nbytes)

    def _read_toc(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        self._require_medium()
        msf = bool(cdb[1] & 0b10)
        fmt = cdb[2] & 0x0F or (cdb[9] >> 6)  # old-style format field in the control byte
        track = cdb[6]
        alloc = _be16(cdb, 7)

        def address(lba: int) -> bytes:
            return _msf(lba) if msf else struct.pack(">I", lba)

        if fmt == 0:  # TOC (MMC-5 §6.34.2.2): one data track and the lead-out
            descriptors = b""
            if track <= 1:
                descriptors += bytes([0, 0x14, 1, 0]) + address(0)
            elif track != 0xAA:
                raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_INVALID_FIELD_IN_CDB)
            descriptors += bytes([0, 0x14, 0xAA, 0]) + address(self.blocks)
            body = bytes([1, 1]) + descriptors
        elif fmt == 1:  # session information (MMC-5 §6.34.2.3)
            body = bytes([1, 1, 0, 0x14, 1, 0]) + address(0)
        else:
            raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_INVALID_FIELD_IN_CDB)
        return (struct.pack(">H", len(body)) + body)[:alloc]

    def _mode_page(self, page: int, changeable: bool) -> bytes:
        if page == 0x01:  # read error recovery (SPC-3 §7.4.11), 10 parameter bytes
            return bytes([0x01, 0x0A]) + bytes(10)
        # CD/DVD capabilities and mechanical status (MMC-3 §5.5.10)
        body = bytearray(20)
        if not changeable:
            body[0] = 0b0000_1011  # reads CD-R, CD-RW, DVD-ROM
            body[2] = 0b0111_0000  # mode 2 form 1/2, multi-session
            body[4] = 0b0010_1001 | (0b10 if self.locked else 0)  # tray, eject, lock (+state)
            body[6:8] = (4234).to_bytes(2, "big")  # maximum read speed, kB/s (24x)
            body[10:12] = (512).to_bytes(2, "big")  # buffer size, KiB
            body[12:14] = (4234).to_bytes(2, "big")  # current read speed
        return bytes([0x2A, 0x14]) + bytes(body)

    def _mode_sense(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        control, page = cdb[2] >> 6, cdb[2] & 0x3F
        if control == 3:
            raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_SAVING_NOT_SUPPORTED)
        if page == 0x3F:
            pages = [0x01, 0x2A]
        elif page in (0x01, 0x2A):
            pages = [page]
        else:
            raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_INVALID_FIELD_IN_CDB)
        body = b"".join(self._mode_page(p, changeable=control == 1) for p in pages)
        header = struct.pack(">HBBxxH", 6 + len(body), 0, 0, 0)  # no block descriptors
        return (header + body)[: _be16(cdb, 7)]

    def _features(self) -> list[tuple[int, bool, bytes]]:
        """(feature code, current, descriptor) for every feature, in code order."""
        ready = self.medium_ready
        profile = self.profile
        profiles = b"".join(
            struct.pack(">HBx", p, 1 if p == profile else 0) for p in (d.MMC_PROFILE_DVD_ROM, d.MMC_PROFILE_CD_ROM)
        )

        def descriptor(code: int, version: int, current: bool, body: bytes) -> bytes:
            flags = version << 2 | 0b10 * (code in (0x0000, 0x0001, 0x0002, 0x0003)) | int(current)
            return struct.pack(">HBB", code, flags, len(body)) + body

        return [
            (0x0000, True, descriptor(0x0000, 0, True, profiles)),  # profile list
            (0x0001, True, descriptor(0x0001, 1, True, struct.pack(">IBxxx", 2, 0))),  # core, ATAPI
            (0x0002, True, descriptor(0x0002, 1, True, bytes([0b10, 0, 0, 0]))),  # morphing, OCEvent
            (0x0003, True, descriptor(0x0003, 0, True, bytes([0b0010_1001, 0, 0, 0]))),  # removable, tray
            (0x0010, ready, descriptor(0x0010, 0, ready, struct.pack(">IHBx", d.CD_FRAMESIZE, 1, 0))),  # random read
            (0x001E, profile == d.MMC_PROFILE_CD_ROM,
             descriptor(0x001E, 2, profile == d.MMC_PROFILE_CD_ROM, bytes(4))),  # CD read
            (0x001F, profile == d.MMC_PROFILE_DVD_ROM,
             descriptor(0x001F, 0, profile == d.MMC_PROFILE_DVD_ROM, b"")),  # DVD read
        ]

    def _get_configuration(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        rt, start = cdb[1] & 0b11, _be16(cdb, 2)
        if rt == 3:
            raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_INVALID_FIELD_IN_CDB)
        chosen = []
        for code, current, desc in self._features():
            if rt == 0 and code >= start or rt == 1 and code >= start and current or rt == 2 and code == start:
                chosen.append(desc)
        body = struct.pack(">xxH", self.profile) + b"".join(chosen)  # reserved, current profile
        return (struct.pack(">I", len(body)) + body)[: _be16(cdb, 7)]

    def _get_event_status(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        if not cdb[1] & 0b1:  # only polled operation (MMC-5 §6.6.2.1)
            raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_INVALID_FIELD_IN_CDB)
        supported = 0b0001_0000  # media class
        if cdb[4] & supported:
            event, self.media_event = self.media_event, _EVENT_NONE
            status = (0b10 if self.backend is not None else 0) | (0b01 if self.tray_open else 0)
            data = struct.pack(">HBB", 6, 4, supported) + bytes([event, status, 0, 0])
        else:
            data = struct.pack(">HBB", 2, 0x80, supported)  # no event available
        return data[: _be16(cdb, 7)]

    def _start_stop(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        if cdb[4] >> 4:  # a power condition: the load/eject bits are ignored (SBC-3)
            return b""
        load_eject, start = cdb[4] & 0b10, cdb[4] & 0b01
        if load_eject and not start:
            if self.locked:
                raise _CheckCondition(d.ILLEGAL_REQUEST, d.ASC_MEDIUM_REMOVAL_PREVENTED)
            if not self.tray_open and self.backend is not None:
                self.media_event = _EVENT_MEDIA_REMOVAL
            self.tray_open = True
        elif load_eject and start and self.tray_open:
            self.tray_open = False
            if self.backend is not None:
                self.media_event = _EVENT_NEW_MEDIA
                self.unit_attention = d.ASC_MEDIUM_MAY_HAVE_CHANGED
        return b""

    def _prevent_allow(self, cdb: bytes, cmd: Command, phase: DataPhase) -> bytes:
        self.locked = bool(cdb[4] & 0b1)
        return b""


ScsiHandler = Callable[[AtapiCdrom, bytes, Command, DataPhase], "bytes | Pending"]

_SCSI_COMMANDS: dict[int, ScsiHandler] = {
    d.GPCMD_TEST_UNIT_READY: AtapiCdrom._test_unit_ready,
    d.GPCMD_REQUEST_SENSE: AtapiCdrom._request_sense,
    d.GPCMD_INQUIRY: AtapiCdrom._inquiry,
    d.GPCMD_START_STOP_UNIT: AtapiCdrom._start_stop,
    d.GPCMD_PREVENT_ALLOW_MEDIUM_REMOVAL: AtapiCdrom._prevent_allow,
    d.GPCMD_READ_CDVD_CAPACITY: AtapiCdrom._read_capacity,
    d.GPCMD_READ_10: AtapiCdrom._read,
    d.GPCMD_READ_12: AtapiCdrom._read,
    d.GPCMD_READ_TOC_PMA_ATIP: AtapiCdrom._read_toc,
    d.GPCMD_GET_CONFIGURATION: AtapiCdrom._get_configuration,
    d.GPCMD_GET_EVENT_STATUS_NOTIFICATION: AtapiCdrom._get_event_status,
    d.GPCMD_MODE_SENSE_10: AtapiCdrom._mode_sense,
}

_NO_UNIT_ATTENTION = frozenset(
    {d.GPCMD_INQUIRY, d.GPCMD_REQUEST_SENSE, d.GPCMD_GET_CONFIGURATION, d.GPCMD_GET_EVENT_STATUS_NOTIFICATION}
)

AtaHandler = Callable[[AtapiCdrom, Command], Outcome]

_ATA_COMMANDS: dict[int, AtaHandler] = {
    d.ATA_CMD_ID_ATA: AtapiCdrom._identify_ata,
    d.ATA_CMD_ID_ATAPI: AtapiCdrom._identify_packet,
    d.ATA_CMD_PACKET: AtapiCdrom._packet,
    d.ATA_CMD_DEV_RESET: AtapiCdrom._device_reset,
    d.ATA_CMD_EDD: AtapiCdrom._device_reset,
    d.ATA_CMD_SET_FEATURES: AtapiCdrom._set_features,
    d.ATA_CMD_CHK_POWER: AtapiCdrom._power,
    d.ATA_CMD_IDLEIMMEDIATE: AtapiCdrom._power,
    d.ATA_CMD_STANDBYNOW1: AtapiCdrom._power,
}
