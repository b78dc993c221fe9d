"""IDENTIFY (PACKET) DEVICE data (ACS-3 §7.12, §7.13) and what Linux derives from it."""

from __future__ import annotations

import struct

import pytest

from devmodels import UsageError
from devmodels.ahci import DriveInfo, ata_string, identify_device, identify_packet_device

INFO = DriveInfo("DEVMODELS HARDDISK", "SERIAL42", "1.0")


def words(data: bytes) -> list[int]:
    return list(struct.unpack("<256H", data))


def text(w: list[int], first: int, count: int) -> str:
    return b"".join(struct.pack(">H", x) for x in w[first : first + count]).decode().rstrip()


def disk(sectors: int = 1 << 21, **kw: object) -> list[int]:
    args: dict = dict(write_cache=True, read_ahead=True, udma_mode=6, mwdma_mode=None, multiple=16)
    args.update(kw)
    return words(identify_device(INFO, sectors, **args))


def test_strings_are_byte_swapped_per_word() -> None:
    assert ata_string("AB", 4) == [0x4142, 0x2020]
    w = disk()
    assert text(w, 27, 20) == "DEVMODELS HARDDISK"
    assert text(w, 10, 10) == "SERIAL42"
    assert text(w, 23, 4) == "1.0"


@pytest.mark.parametrize("sectors", [1, 0x0FFF_FFFF, 0x1000_0000, (1 << 48) - 1])
def test_capacity_words(sectors: int) -> None:
    w = disk(sectors)
    assert w[60] | w[61] << 16 == min(sectors, 0x0FFF_FFFF)
    assert sum(w[100 + i] << (16 * i) for i in range(4)) == sectors


def test_linux_feature_predicates() -> None:
    w = disk()
    assert w[83] & 1 << 10 and w[86] & 1 << 10  # ata_id_has_lba48
    assert w[76] & 1 << 8 and (w[75] & 0x1F) + 1 == 32  # NCQ, depth 32
    assert w[169] & 1 and max(b for b in range(15) if w[80] >> b & 1) >= 7  # ata_id_has_trim
    assert w[93] == 0 and w[80] >= 0x20  # ata_id_is_sata
    assert w[47] >> 8 == 0x80 and w[59] & 0x100 and w[59] & 0xFF == 16  # "multi 16"
    assert w[84] & 1 << 5 and w[87] & 1 << 5  # general purpose logging
    assert w[83] & (1 << 12 | 1 << 13)  # FLUSH CACHE (EXT)
    assert w[217] == 1  # non-rotating


def test_write_cache_and_modes_are_reported_live() -> None:
    assert not disk(write_cache=False)[85] & 1 << 5
    assert disk()[85] & 1 << 5
    assert disk(udma_mode=2)[88] == 0x7F | 1 << 10
    w = disk(udma_mode=None, mwdma_mode=1)
    assert w[88] == 0x7F and w[63] == 0x07 | 1 << 9
    assert disk(multiple=0)[59] == 0


def test_checksum_word() -> None:
    data = identify_device(INFO, 12345, write_cache=True, read_ahead=False, udma_mode=None, mwdma_mode=None, multiple=0)
    assert data[510] == 0xA5 and sum(data) & 0xFF == 0
    packet = identify_packet_device(INFO, udma_mode=5, mwdma_mode=None)
    assert packet[510] == 0xA5 and sum(packet) & 0xFF == 0


def test_packet_device_words() -> None:
    w = words(identify_packet_device(INFO, udma_mode=5, mwdma_mode=None))
    assert w[0] >> 14 == 0b10 and (w[0] >> 8) & 0x1F == 5 and w[0] & 0x80  # ATAPI CD-ROM, removable
    assert w[0] & 0b11 == 0  # 12-byte packets
    assert w[82] & 1 << 4 and w[49] & 1 << 8
    assert not w[76] & 1 << 8  # no NCQ


@pytest.mark.parametrize("bad", [dict(model="x" * 41), dict(serial="é"), dict(firmware="\n")])
def test_drive_info_validation(bad: dict) -> None:
    args = dict(model="m", serial="s", firmware="f")
    args.update(bad)
    with pytest.raises(UsageError):
        DriveInfo(**args)
