"""IDENTIFY DEVICE and IDENTIFY PACKET DEVICE data (ACS-3 §7.12, §7.13), and log 30h.

Rules:

1. Data is built from the drive's live settings each time (capacity, write cache, transfer
   mode, multiple count), so IDENTIFY always reports the current state.
2. ATA strings are space-padded ASCII with the two bytes of each word swapped
   (ACS-3 §3.4.9); ``ata_string`` is the one place that does it.
3. Word 255 is the integrity word: signature A5h in bits 7:0, and bits 15:8 chosen so the
   512 bytes sum to 0 mod 256 (ACS-3 §7.12.7.89).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .._errors import UsageError
from .defs import ATA_LOG_ID_COPY, ATA_LOG_ID_PAGE_LIST

__all__ = [
    "DriveInfo",
    "ata_string",
    "identify_device",
    "identify_packet_device",
    "identify_log_page",
    "with_checksum",
    "NCQ_DEPTH",
    "MAX_MULTIPLE",
    "DSM_MAX_BLOCKS",
    "SUPPORTED_ID_PAGES",
]

NCQ_DEPTH = 32
MAX_MULTIPLE = 16  # sectors per DRQ block for READ/WRITE MULTIPLE
DSM_MAX_BLOCKS = 8  # 512-byte blocks of LBA range entries per DSM command (word 105)
_LBA28_MAX = 0x0FFF_FFFF


@dataclass(frozen=True)
class DriveInfo:
    """Strings a drive reports.

    Attributes:
        model: up to 40 ASCII characters.
        serial: up to 20.
        firmware: up to 8.
    """

    model: str
    serial: str
    firmware: str

    def __post_init__(self) -> None:
        for name, value, limit in (("model", self.model, 40), ("serial", self.serial, 20), ("firmware", self.firmware, 8)):
            if not isinstance(value, str) or len(value) > limit or not value.isascii() or not value.isprintable():
                raise UsageError(f"drive {name} must be printable ASCII of at most {limit} characters, got {value!r}")


def ata_string(text: str, length: int) -> list[int]:
    """``text`` padded to ``length`` bytes as ATA string words (rule 2)."""
    raw = text.encode("ascii").ljust(length, b" ")[:length]
    return [raw[i] << 8 | raw[i + 1] for i in range(0, length, 2)]


def with_checksum(words: list[int]) -> bytes:
    """Pack 256 words little-endian with the integrity word 255 filled in (rule 3)."""
    words = list(words)
    words[255] = 0x00A5
    raw = bytearray(struct.pack("<256H", *words))
    raw[511] = (-sum(raw[:511])) & 0xFF
    return bytes(raw)


def _put_string(words: list[int], first: int, text: str, length: int) -> None:
    words[first : first + length // 2] = ata_string(text, length)


def _put_u32(words: list[int], first: int, value: int) -> None:
    words[first] = value & 0xFFFF
    words[first + 1] = (value >> 16) & 0xFFFF


def identify_device(
    info: DriveInfo,
    sectors: int,
    *,
    write_cache: bool,
    read_ahead: bool,
    udma_mode: int | None,
    mwdma_mode: int | None,
    multiple: int,
    rotational: bool = False,
) -> bytes:
    """IDENTIFY DEVICE data for an LBA48 SATA disk with NCQ (depth 32), TRIM and FUA.

    Args:
        info: the strings.
        sectors: capacity in 512-byte sectors.
        write_cache, read_ahead: the enabled state of those features (words 85).
        udma_mode, mwdma_mode: the selected DMA mode (words 88, 63), or None.
        multiple: the current READ/WRITE MULTIPLE setting (word 59), 0 for none.
        rotational: report a spinning disk in word 217 (else a non-rotating SSD).
    """
    w = [0] * 256
    w[0] = 0x0040  # ATA device, fixed
    cylinders = min(sectors // (16 * 63), 16383)
    w[1], w[3], w[6] = cylinders, 16, 63  # obsolete CHS geometry, for old BIOSes
    _put_string(w, 10, info.serial, 20)
    _put_string(w, 23, info.firmware, 8)
    _put_string(w, 27, info.model, 40)
    w[47] = 0x8000 | MAX_MULTIPLE
    w[49] = 0b0000_1111_0000_0000  # IORDY supported/disableable, LBA, DMA
    w[50] = 0x4000
    w[53] = 0b0000_0000_0000_0111  # words 54-58, 64-70 and 88 are valid
    w[54], w[55], w[56] = cylinders, 16, 63
    _put_u32(w, 57, cylinders * 16 * 63)
    w[59] = (0x0100 | multiple) if multiple else 0
    _put_u32(w, 60, min(sectors, _LBA28_MAX))
    w[63] = 0b0000_0000_0000_0111 | ((1 << (8 + mwdma_mode)) if mwdma_mode is not None else 0)
    w[64] = 0b0000_0000_0000_0011  # PIO 3 and 4
    w[65] = w[66] = w[67] = w[68] = 120
    w[75] = NCQ_DEPTH - 1
    w[76] = 0b0000_0001_0000_0110  # NCQ, SATA Gen2 and Gen1 signalling speeds
    w[77] = 0b0000_0000_0000_0100  # current negotiated speed: Gen2
    w[80] = 0b0000_0111_1111_0000  # ATA/ATAPI-4 .. ACS-3
    w[82] = 0b0100_0000_0110_1001  # NOP, look-ahead, write cache, power management, SMART
    w[83] = 0b0111_0100_0000_0000  # FLUSH CACHE EXT, FLUSH CACHE, 48-bit addresses
    w[84] = 0b0100_0000_0110_0000  # WRITE DMA FUA EXT, general purpose logging
    w[85] = 0b0100_0000_0000_1001 | (0b0100_0000 if read_ahead else 0) | (0b0010_0000 if write_cache else 0)
    w[86] = 0b0011_0100_0000_0000
    w[87] = 0b0100_0000_0110_0000
    w[88] = 0b0000_0000_0111_1111 | ((1 << (8 + udma_mode)) if udma_mode is not None else 0)
    w[93] = 0  # SATA devices report 0 (ACS-3 §7.12.7.45)
    w[100], w[101], w[102], w[103] = (sectors >> s & 0xFFFF for s in (0, 16, 32, 48))
    w[105] = DSM_MAX_BLOCKS
    w[106] = 0x4000  # one 512-byte logical sector per physical sector
    w[169] = 0x0001  # DATA SET MANAGEMENT / TRIM supported
    w[217] = 0 if rotational else 1  # 1: non-rotating medium
    w[222] = 0x101F  # Serial ATA, SATA 1.0a .. 3.0
    return with_checksum(w)


def identify_packet_device(info: DriveInfo, *, udma_mode: int | None, mwdma_mode: int | None) -> bytes:
    """IDENTIFY PACKET DEVICE data for a removable CD/DVD-ROM with 12-byte packets."""
    w = [0] * 256
    w[0] = 0x85C0  # ATAPI, CD-ROM device type, removable, 50 us DRQ, 12-byte packets
    _put_string(w, 10, info.serial, 20)
    _put_string(w, 23, info.firmware, 8)
    _put_string(w, 27, info.model, 40)
    w[49] = 0b0000_1011_0000_0000  # IORDY, LBA, DMA
    w[53] = 0b0000_0000_0000_0110  # words 64-70 and 88 are valid
    w[63] = 0b0000_0000_0000_0111 | ((1 << (8 + mwdma_mode)) if mwdma_mode is not None else 0)
    w[64] = 0b0000_0000_0000_0011
    w[65] = w[66] = w[67] = w[68] = 120
    w[76] = 0b0000_0000_0000_0110  # SATA Gen2 and Gen1, no NCQ
    w[80] = 0b0000_0001_1111_0000  # ATA/ATAPI-4 .. ATA8-ACS
    w[82] = 0b0100_0010_0001_1000  # NOP, DEVICE RESET, PACKET, power management
    w[83] = 0x4000
    w[84] = 0x4000
    w[85] = 0b0100_0010_0001_1000
    w[86] = 0
    w[87] = 0x4000
    w[88] = 0b0000_0000_0011_1111 | ((1 << (8 + udma_mode)) if udma_mode is not None else 0)
    w[222] = 0x101F
    return with_checksum(w)


def identify_log_page(page: int, identify: bytes) -> bytes | None:
    """Page ``page`` of the IDENTIFY DEVICE data log (30h, ACS-3 §9.10), or None.

    Supported pages: 00h (list of supported pages, after a header qword with bit 63 set,
    the page number in bits 23:16 and revision 0001h) and 01h (a copy of IDENTIFY DEVICE
    data). Linux reads page 00h to learn which pages exist before reading any of them.
    """
    if page == ATA_LOG_ID_PAGE_LIST:
        header = (1 << 63) | (page << 16) | 0x0001
        body = struct.pack("<Q", header) + bytes([len(SUPPORTED_ID_PAGES)]) + bytes(SUPPORTED_ID_PAGES)
        return body.ljust(512, b"\0")
    if page == ATA_LOG_ID_COPY:
        return identify
    return None


SUPPORTED_ID_PAGES = (ATA_LOG_ID_PAGE_LIST, ATA_LOG_ID_COPY)
