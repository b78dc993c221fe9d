"""The ATAPI CD/DVD-ROM: PACKET with the MMC subset Linux sr/cdrom uses (port 1 of the rig)."""

from __future__ import annotations

import struct

import pytest

from devmodels import UsageError
from devmodels.ahci import AtapiCdrom, TaskFile
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from tests.unit.devmodels.ahci.doubles import Rig, ScriptedDisk

CD = 1
BLOCKS = (2 << 20) // 2048


@pytest.fixture
def rig() -> Rig:
    return Rig()


def cdb(*values: int) -> bytes:
    return bytes(values).ljust(12, b"\0")


def sense(rig: Rig) -> tuple[int, int, int]:
    result, data = rig.driver.packet(CD, cdb(d.GPCMD_REQUEST_SENSE, 0, 0, 0, 18), 18)
    assert result.ok and data[0] == 0x70
    return data[2] & 0xF, data[12], data[13]


def check_condition(rig: Rig, command: bytes, nbytes: int = 0) -> tuple[int, int, int]:
    result, _ = rig.driver.packet(CD, command, nbytes)
    assert result.pxis & r.PxIS_TFES and result.status & d.ATA_ERR
    rig.driver.recover(CD)
    key, asc, ascq = sense(rig)
    assert result.error >> 4 == key
    return key, asc, ascq


class TestAtaSide:
    def test_identify_packet_device(self, rig: Rig) -> None:
        result, data = rig.driver.identify(CD, packet=True)
        assert result.ok
        w = struct.unpack("<256H", data)
        assert w[0] == 0x85C0 and w[82] & 1 << 4
        assert sum(data) & 0xFF == 0

    def test_identify_device_aborts_with_the_packet_signature(self, rig: Rig) -> None:
        result, _ = rig.driver.identify(CD)
        assert result.error == d.ATA_ABORTED
        fis = rig.memory.read(rig.driver.fb[CD] + r.RX_FIS_RFIS, 20)
        assert (fis[5], fis[6]) == (0x14, 0xEB)

    def test_device_reset_and_set_features(self, rig: Rig) -> None:
        assert rig.driver.command(CD, TaskFile(command=d.ATA_CMD_DEV_RESET)).error == 0x01
        assert rig.driver.set_features(CD, d.SETFEATURES_XFER, d.XFER_UDMA_0 + 2).ok
        assert struct.unpack("<256H", rig.driver.identify(CD, packet=True)[1])[88] == 0x3F | 1 << 10
        assert rig.driver.set_features(CD, d.SETFEATURES_WC_ON).error == d.ATA_ABORTED

    def test_unsupported_ata_command_aborts(self, rig: Rig) -> None:
        assert rig.driver.command(CD, TaskFile(command=d.ATA_CMD_READ_EXT, device=d.ATA_LBA)).error == d.ATA_ABORTED


class TestScsi:
    def test_inquiry(self, rig: Rig) -> None:
        result, data = rig.driver.packet(CD, cdb(d.GPCMD_INQUIRY, 0, 0, 0, 36), 36)
        assert result.ok and result.prdbc == 36
        assert data[0] == 0x05 and data[1] & 0x80
        assert data[8:16] == b"DEVMODEL" and data[16:32].rstrip() == b"DVD-ROM"

    def test_inquiry_allocation_length_cuts_data(self, rig: Rig) -> None:
        result, data = rig.driver.packet(CD, cdb(d.GPCMD_INQUIRY, 0, 0, 0, 5), 36)
        assert result.prdbc == 5

    def test_inquiry_vpd_is_invalid_field(self, rig: Rig) -> None:
        assert check_condition(rig, cdb(d.GPCMD_INQUIRY, 1, 0x80, 0, 36), 36) == (d.ILLEGAL_REQUEST, 0x24, 0)

    def test_test_unit_ready_and_read_capacity(self, rig: Rig) -> None:
        assert rig.driver.packet(CD, cdb(d.GPCMD_TEST_UNIT_READY), 0)[0].ok
        result, data = rig.driver.packet(CD, cdb(d.GPCMD_READ_CDVD_CAPACITY), 8)
        assert struct.unpack(">II", data) == (BLOCKS - 1, 2048)

    @pytest.mark.parametrize("dma", [False, True])
    def test_read_10(self, rig: Rig, dma: bool) -> None:
        result, data = rig.driver.packet(CD, cdb(d.GPCMD_READ_10, 0, 0, 0, 0, 7, 0, 0, 3), 3 * 2048, dma=dma)
        assert result.ok and result.prdbc == 3 * 2048 and result.pxis & r.PxIS_DHRS
        assert [int.from_bytes(data[i * 2048 : i * 2048 + 8], "little") for i in range(3)] == [7, 8, 9]
        if not dma:
            assert result.pxis & r.PxIS_PSS

    def test_read_12_and_range_check(self, rig: Rig) -> None:
        last = (BLOCKS - 1).to_bytes(4, "big")
        result, data = rig.driver.packet(CD, cdb(d.GPCMD_READ_12, 0, *last, 0, 0, 0, 1), 2048)
        assert result.ok and data[8:16] == b"ISOBLOCK"
        assert int.from_bytes(data[:8], "little") == BLOCKS - 1
        assert check_condition(rig, cdb(d.GPCMD_READ_10, 0, *last, 0, 0, 2), 4096) == (d.ILLEGAL_REQUEST, 0x21, 0)

    def test_read_zero_blocks_moves_nothing(self, rig: Rig) -> None:
        result, _ = rig.driver.packet(CD, cdb(d.GPCMD_READ_10), 0)
        assert result.ok and result.prdbc == 0 and not rig.cd.log

    def test_read_with_a_short_prdt_is_overflow(self, rig: Rig) -> None:
        result, _ = rig.driver.packet(CD, cdb(d.GPCMD_READ_10, 0, 0, 0, 0, 0, 0, 0, 2), 2048)
        assert result.pxis & r.PxIS_OFS

    def test_mode_sense_capabilities_page(self, rig: Rig) -> None:
        result, data = rig.driver.packet(CD, cdb(d.GPCMD_MODE_SENSE_10, 0, 0x2A, 0, 0, 0, 0, 0, 128), 128)
        assert result.ok
        assert struct.unpack_from(">H", data)[0] == len(data) - 2
        assert struct.unpack_from(">H", data, 6)[0] == 0  # no block descriptors
        page = data[8:]
        assert page[0] == 0x2A and page[1] == 0x14 and page[6] & 0b1000  # eject supported

    def test_mode_sense_all_pages_and_errors(self, rig: Rig) -> None:
        _, data = rig.driver.packet(CD, cdb(d.GPCMD_MODE_SENSE_10, 0, 0x3F, 0, 0, 0, 0, 0, 255), 255)
        assert data[8] == 0x01 and data[8 + 12] == 0x2A
        assert check_condition(rig, cdb(d.GPCMD_MODE_SENSE_10, 0, 0xEA, 0, 0, 0, 0, 0, 64), 64)[1] == 0x39
        assert check_condition(rig, cdb(d.GPCMD_MODE_SENSE_10, 0, 0x1A, 0, 0, 0, 0, 0, 64), 64)[1] == 0x24

    def test_read_toc_lba_and_msf(self, rig: Rig) -> None:
        _, data = rig.driver.packet(CD, cdb(d.GPCMD_READ_TOC_PMA_ATIP, 0, 0, 0, 0, 0, 0, 0, 100), 100)
        assert struct.unpack_from(">H", data)[0] == 18 and data[2:4] == b"\x01\x01"
        assert data[4 + 2] == 1 and data[12 + 2] == 0xAA
        assert struct.unpack_from(">I", data, 12 + 4)[0] == BLOCKS
        _, msf = rig.driver.packet(CD, cdb(d.GPCMD_READ_TOC_PMA_ATIP, 0b10, 0, 0, 0, 0, 0, 0, 100), 100)
        assert msf[4 + 4 : 4 + 8] == bytes([0, 0, 2, 0])  # track 1 at 00:02:00
        lead_out = BLOCKS + 150
        assert msf[12 + 5 : 12 + 8] == bytes([lead_out // 4500, lead_out // 75 % 60, lead_out % 75])

    def test_read_toc_session_info_and_bad_format(self, rig: Rig) -> None:
        _, data = rig.driver.packet(CD, cdb(d.GPCMD_READ_TOC_PMA_ATIP, 0, 1, 0, 0, 0, 0, 0, 12), 12)
        assert data == bytes([0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0])
        assert check_condition(rig, cdb(d.GPCMD_READ_TOC_PMA_ATIP, 0, 5, 0, 0, 0, 0, 0, 12), 12)[1] == 0x24

    def test_get_configuration(self, rig: Rig) -> None:
        _, data = rig.driver.packet(CD, cdb(d.GPCMD_GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 2, 0), 512)
        assert struct.unpack_from(">I", data)[0] == len(data) - 4
        assert struct.unpack_from(">H", data, 6)[0] == d.MMC_PROFILE_CD_ROM  # 2 MiB: a CD
        codes = []
        pos = 8
        while pos < len(data):
            codes.append(struct.unpack_from(">H", data, pos)[0])
            pos += 4 + data[pos + 3]
        assert codes == [0x0000, 0x0001, 0x0002, 0x0003, 0x0010, 0x001E, 0x001F]
        _, one = rig.driver.packet(CD, cdb(d.GPCMD_GET_CONFIGURATION, 2, 0, 0x10, 0, 0, 0, 0, 64), 64)
        assert struct.unpack_from(">H", one, 8)[0] == 0x0010 and len(one) == 8 + 12
        _, current = rig.driver.packet(CD, cdb(d.GPCMD_GET_CONFIGURATION, 1, 0, 0x1E, 0, 0, 0, 0, 64), 64)
        assert [struct.unpack_from(">H", current, 8)[0], len(current)] == [0x001E, 8 + 8]

    def test_get_event_status_notification(self, rig: Rig) -> None:
        gesn = cdb(d.GPCMD_GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8)
        _, data = rig.driver.packet(CD, gesn, 8)
        assert data[:4] == bytes([0, 6, 4, 0x10]) and data[5] & 0b10
        _, other = rig.driver.packet(CD, cdb(d.GPCMD_GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x02, 0, 0, 0, 8), 8)
        assert other[2] & 0x80  # no event available for that class
        not_polled = cdb(d.GPCMD_GET_EVENT_STATUS_NOTIFICATION, 0, 0, 0, 0x10, 0, 0, 0, 8)
        assert check_condition(rig, not_polled, 8)[1] == 0x24

    def test_invalid_opcode(self, rig: Rig) -> None:
        assert check_condition(rig, cdb(0xBD)) == (d.ILLEGAL_REQUEST, 0x20, 0)
        assert sense(rig) == (0, 0, 0)  # a good command clears the sense


class TestMedium:
    def test_eject_lock_and_load(self, rig: Rig) -> None:
        assert rig.driver.packet(CD, cdb(d.GPCMD_PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1), 0)[0].ok
        eject = cdb(d.GPCMD_START_STOP_UNIT, 0, 0, 0, 0b10)
        assert check_condition(rig, eject) == (d.ILLEGAL_REQUEST, 0x53, 0x02)
        assert rig.driver.packet(CD, cdb(d.GPCMD_PREVENT_ALLOW_MEDIUM_REMOVAL), 0)[0].ok
        assert rig.driver.packet(CD, eject, 0)[0].ok
        assert check_condition(rig, cdb(d.GPCMD_TEST_UNIT_READY)) == (d.NOT_READY, 0x3A, 0x02)
        gesn = cdb(d.GPCMD_GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8)
        _, data = rig.driver.packet(CD, gesn, 8)
        assert data[4] == 3 and data[5] == 0b11  # media removal; medium in the open tray
        assert rig.driver.packet(CD, cdb(d.GPCMD_START_STOP_UNIT, 0, 0, 0, 0b11), 0)[0].ok
        assert check_condition(rig, cdb(d.GPCMD_TEST_UNIT_READY)) == (d.UNIT_ATTENTION, 0x28, 0)
        assert rig.driver.packet(CD, cdb(d.GPCMD_TEST_UNIT_READY), 0)[0].ok

    def test_host_medium_change(self, rig: Rig) -> None:
        rig.hba.change_medium(CD, None)
        assert rig.driver.packet(CD, cdb(d.GPCMD_INQUIRY, 0, 0, 0, 36), 36)[0].ok  # no unit attention
        assert check_condition(rig, cdb(d.GPCMD_TEST_UNIT_READY)) == (d.UNIT_ATTENTION, 0x28, 0)
        assert check_condition(rig, cdb(d.GPCMD_READ_CDVD_CAPACITY), 8) == (d.NOT_READY, 0x3A, 0x01)
        _, config = rig.driver.packet(CD, cdb(d.GPCMD_GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 8), 8)
        assert config[6:8] == b"\0\0"
        big = ScriptedDisk(4096, readonly=True, claimed=800 << 20)  # more than a CD holds: a DVD
        rig.hba.change_medium(CD, big)
        gesn = cdb(d.GPCMD_GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8)
        assert rig.driver.packet(CD, gesn, 8)[1][4] == 2  # new media
        _, config = rig.driver.packet(CD, cdb(d.GPCMD_GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 8), 8)
        assert struct.unpack_from(">H", config, 6)[0] == d.MMC_PROFILE_DVD_ROM

    def test_request_sense_reports_a_pending_unit_attention(self, rig: Rig) -> None:
        rig.hba.change_medium(CD, rig.cd)
        assert sense(rig) == (d.UNIT_ATTENTION, 0x28, 0)
        assert rig.driver.packet(CD, cdb(d.GPCMD_TEST_UNIT_READY), 0)[0].ok

    def test_medium_read_error(self, rig: Rig) -> None:
        from devmodels.backends import BlockOp

        rig.cd.fail.add(BlockOp.READ)
        assert check_condition(rig, cdb(d.GPCMD_READ_10, 0, 0, 0, 0, 0, 0, 0, 1), 2048) == (d.MEDIUM_ERROR, 0x11, 0)

    def test_change_medium_needs_a_cd_drive(self, rig: Rig) -> None:
        with pytest.raises(UsageError):
            rig.hba.change_medium(0, None)
        with pytest.raises(UsageError):
            AtapiCdrom(ScriptedDisk(8192, block=4096))
        with pytest.raises(UsageError):
            AtapiCdrom(vendor="123456789")
