"""The ATA disk command set (ACS-3), issued through a started port like libata does."""

from __future__ import annotations

import struct

import pytest

from devmodels.ahci import AtaDisk, TaskFile
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.backends import BlockOp
from tests.unit.devmodels.ahci.doubles import Rig, ScriptedDisk

SECTORS = (4 << 20) // 512


@pytest.fixture
def rig() -> Rig:
    return Rig()


def words(data: bytes) -> list[int]:
    return list(struct.unpack("<256H", data))


class TestIdentify:
    def test_identify_device_pio_in(self, rig: Rig) -> None:
        result, data = rig.driver.identify(0)
        assert result.ok and result.prdbc == 512
        assert result.pxis & r.PxIS_PSS and not result.pxis & r.PxIS_DHRS  # PIO data-in: no D2H
        w = words(data)
        assert w[100] | w[101] << 16 == SECTORS
        assert w[75] == 31 and w[76] & 1 << 8  # NCQ depth 32
        assert w[169] & 1 and w[83] & 1 << 10  # TRIM, LBA48

    def test_pio_setup_fis_is_posted(self, rig: Rig) -> None:
        rig.driver.identify(0)
        fis = rig.memory.read(rig.driver.fb[0] + r.RX_FIS_PSFIS, 20)
        assert fis[0] == 0x5F and fis[1] & 0x60 == 0x60  # I and D (device to host)
        assert fis[15] == d.STATUS_OK
        assert struct.unpack_from("<H", fis, 16)[0] == 512

    def test_identify_packet_device_aborts_on_a_disk(self, rig: Rig) -> None:
        result, _ = rig.driver.identify(0, packet=True)
        assert result.pxis & r.PxIS_TFES
        assert result.status & d.ATA_ERR and result.error == d.ATA_ABORTED


class TestReadWrite:
    @pytest.mark.parametrize("command", [d.ATA_CMD_WRITE, d.ATA_CMD_WRITE_EXT, d.ATA_CMD_WRITE_FUA_EXT])
    def test_dma_write_then_read_back(self, rig: Rig, command: int) -> None:
        drv = rig.driver
        src = drv.alloc(8192)
        rig.memory.write(src, bytes(range(256)) * 32)
        tf = TaskFile(command=command, lba=100, count=16, device=d.ATA_LBA)
        assert drv.command(0, tf, [(src, 4096), (src + 4096, 4096)], write=True).ok
        assert rig.disk.data[100 * 512 : 116 * 512] == bytes(range(256)) * 32
        dst = drv.alloc(8192)
        result = drv.rw_dma(0, 100, 16, dst, write=False)
        assert result.ok and result.prdbc == 8192 and result.pxis & r.PxIS_DHRS
        assert rig.memory.read(dst, 8192) == bytes(range(256)) * 32

    def test_lba28_count_zero_means_256_sectors(self, rig: Rig) -> None:
        buf = rig.driver.alloc(256 * 512)
        tf = TaskFile(command=d.ATA_CMD_READ, lba=0, count=0, device=d.ATA_LBA)
        result = rig.driver.command(0, tf, [(buf + i * 65536, 65536) for i in range(2)])
        assert result.ok and result.prdbc == 256 * 512

    def test_lba28_high_bits_come_from_the_device_register(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512)
        rig.disk.data[5 * 512 : 5 * 512 + 4] = b"LOW5"
        tf = TaskFile(command=d.ATA_CMD_READ, lba=5, count=1, device=d.ATA_LBA)
        assert rig.driver.command(0, tf, [(buf, 512)]).ok
        assert rig.memory.read(buf, 4) == b"LOW5"
        # device bits 3:0 are LBA 27:24: 0x1000005 is far past this 4 MiB disk
        tf = TaskFile(command=d.ATA_CMD_READ, lba=5, count=1, device=d.ATA_LBA | 0x1)
        result = rig.driver.command(0, tf, [(buf, 512)])
        assert result.error == d.ATA_IDNF
        fis = rig.memory.read(rig.driver.fb[0] + r.RX_FIS_RFIS, 20)
        assert int.from_bytes(fis[4:7] + fis[8:11], "little") == 0x100_0005

    def test_lba28_without_lba_bit_is_aborted(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512)
        result = rig.driver.command(0, TaskFile(command=d.ATA_CMD_READ, lba=0, count=1), [(buf, 512)])
        assert result.error == d.ATA_ABORTED

    def test_spec_acs3_6_3_5_past_the_end_is_idnf(self, rig: Rig) -> None:
        buf = rig.driver.alloc(4096)
        result = rig.driver.rw_dma(0, SECTORS - 4, 8, buf, write=False)
        assert result.pxis & r.PxIS_TFES and result.error == d.ATA_IDNF
        assert rig.driver.preg(0, r.PxCI) == 1  # the failing slot stays issued (§6.1.2)
        assert rig.disk.log == []  # no backend request for an invalid range
        rig.driver.recover(0)
        assert rig.driver.preg(0, r.PxCI) == 0
        assert rig.driver.rw_dma(0, SECTORS - 8, 8, buf, write=False).ok

    def test_pio_read_and_write_sectors(self, rig: Rig) -> None:
        drv = rig.driver
        buf = drv.alloc(1024)
        rig.memory.write(buf, b"P" * 1024)
        tf = TaskFile(command=d.ATA_CMD_PIO_WRITE_EXT, lba=7, count=2, device=d.ATA_LBA)
        result = drv.command(0, tf, [(buf, 1024)], write=True)
        assert result.ok and result.pxis & r.PxIS_DHRS
        assert rig.disk.data[7 * 512 : 9 * 512] == b"P" * 1024
        out = drv.alloc(1024)
        tf = TaskFile(command=d.ATA_CMD_PIO_READ, lba=7, count=2, device=d.ATA_LBA)
        result = drv.command(0, tf, [(out, 1024)])
        assert result.ok and result.pxis & r.PxIS_PSS and rig.memory.read(out, 1024) == b"P" * 1024

    def test_read_multiple_needs_multiple_mode(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512)
        tf = TaskFile(command=d.ATA_CMD_READ_MULTI_EXT, lba=0, count=1, device=d.ATA_LBA)
        assert rig.driver.command(0, tf, [(buf, 512)]).ok
        assert rig.driver.command(0, TaskFile(command=d.ATA_CMD_SET_MULTI, count=0)).ok
        assert rig.driver.command(0, tf, [(buf, 512)]).error == d.ATA_ABORTED
        rig.driver.recover(0)
        assert rig.driver.command(0, TaskFile(command=d.ATA_CMD_SET_MULTI, count=3)).error == d.ATA_ABORTED

    def test_backend_read_error_is_unc(self, rig: Rig) -> None:
        rig.disk.fail.add(BlockOp.READ)
        buf = rig.driver.alloc(512)
        result = rig.driver.rw_dma(0, 0, 1, buf, write=False)
        assert result.status & d.ATA_ERR and result.error == d.ATA_UNC

    def test_backend_write_error_is_a_device_fault(self, rig: Rig) -> None:
        rig.disk.fail.add(BlockOp.WRITE)
        buf = rig.driver.alloc(512)
        result = rig.driver.rw_dma(0, 0, 1, buf, write=True)
        assert result.status & d.ATA_DF and result.error == d.ATA_ABORTED

    def test_write_to_a_read_only_backend_is_aborted(self) -> None:
        rig = Rig(disk=ScriptedDisk(1 << 20, readonly=True))
        buf = rig.driver.alloc(512)
        assert rig.driver.rw_dma(0, 0, 1, buf, write=True).error == d.ATA_ABORTED


class TestDurability:
    def test_flush_reaches_the_backend_after_acknowledged_writes(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512)
        rig.memory.write(buf, b"D" * 512)
        assert rig.driver.rw_dma(0, 3, 1, buf, write=True).ok
        assert rig.disk.durable[3 * 512 : 4 * 512] == bytes(512)  # cached, not yet durable
        assert rig.driver.flush(0).ok
        assert rig.disk.durable[3 * 512 : 4 * 512] == b"D" * 512

    def test_write_cache_disabled_makes_every_write_durable(self, rig: Rig) -> None:
        assert rig.driver.set_features(0, d.SETFEATURES_WC_OFF).ok
        _, data = rig.driver.identify(0)
        assert not words(data)[85] & 1 << 5
        buf = rig.driver.alloc(512)
        rig.memory.write(buf, b"W" * 512)
        assert rig.driver.rw_dma(0, 9, 1, buf, write=True).ok
        assert rig.disk.durable[9 * 512 : 10 * 512] == b"W" * 512
        assert [op for op, _, _ in rig.disk.log][-2:] == [BlockOp.WRITE, BlockOp.FLUSH]

    def test_fua_write_is_followed_by_a_flush(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512)
        tf = TaskFile(command=d.ATA_CMD_WRITE_FUA_EXT, lba=1, count=1, device=d.ATA_LBA)
        assert rig.driver.command(0, tf, [(buf, 512)], write=True).ok
        assert [op for op, _, _ in rig.disk.log] == [BlockOp.WRITE, BlockOp.FLUSH]

    def test_flush_failure_is_reported(self, rig: Rig) -> None:
        rig.disk.fail.add(BlockOp.FLUSH)
        assert rig.driver.flush(0).status & d.ATA_ERR


class TestTrim:
    def test_dsm_trim_discards_each_range(self, rig: Rig) -> None:
        rig.disk.data[:] = b"\xff" * len(rig.disk.data)
        result = rig.driver.trim(0, [(8, 8), (100, 16), (0, 0)])
        assert result.ok
        discards = [(off, n) for op, off, n in rig.disk.log if op is BlockOp.DISCARD]
        assert discards == [(8 * 512, 8 * 512), (100 * 512, 16 * 512)]
        assert rig.disk.data[8 * 512 : 16 * 512] == bytes(8 * 512)

    def test_trim_past_the_end_is_aborted(self, rig: Rig) -> None:
        result = rig.driver.trim(0, [(SECTORS - 1, 2)])
        assert result.error == d.ATA_ABORTED
        assert not rig.disk.log

    def test_trim_without_discard_support_succeeds_without_io(self) -> None:
        rig = Rig(disk=ScriptedDisk(1 << 20, discard=False))
        assert rig.driver.trim(0, [(0, 8)]).ok
        assert not rig.disk.log

    def test_dsm_without_trim_bit_or_with_too_many_blocks_is_aborted(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512 * 9)
        tf = TaskFile(command=d.ATA_CMD_DSM, features=0, count=1, device=d.ATA_LBA)
        assert rig.driver.command(0, tf, [(buf, 512)], write=True).error == d.ATA_ABORTED
        rig.driver.recover(0)
        tf = TaskFile(command=d.ATA_CMD_DSM, features=1, count=9, device=d.ATA_LBA)
        assert rig.driver.command(0, tf, [(buf, 512 * 9)], write=True).error == d.ATA_ABORTED


class TestNonData:
    def test_set_features_transfer_modes(self, rig: Rig) -> None:
        assert rig.driver.set_features(0, d.SETFEATURES_XFER, d.XFER_UDMA_0 + 5).ok
        assert words(rig.driver.identify(0)[1])[88] == 0x7F | 1 << 13
        assert rig.driver.set_features(0, d.SETFEATURES_XFER, d.XFER_MW_DMA_0 + 2).ok
        w = words(rig.driver.identify(0)[1])
        assert w[88] == 0x7F and w[63] == 0x07 | 1 << 10
        assert rig.driver.set_features(0, d.SETFEATURES_XFER, 0x47).error == d.ATA_ABORTED

    @pytest.mark.parametrize("sub", [d.SETFEATURES_SATA_ENABLE, 0x42, 0x99])
    def test_unsupported_set_features_are_aborted(self, rig: Rig, sub: int) -> None:
        assert rig.driver.set_features(0, sub).error == d.ATA_ABORTED

    def test_read_ahead_toggle(self, rig: Rig) -> None:
        assert rig.driver.set_features(0, d.SETFEATURES_RA_OFF).ok
        assert not words(rig.driver.identify(0)[1])[85] & 1 << 6
        assert rig.driver.set_features(0, d.SETFEATURES_RA_ON).ok
        assert words(rig.driver.identify(0)[1])[85] & 1 << 6

    def test_power_modes(self, rig: Rig) -> None:
        def mode() -> int:
            rig.driver.command(0, TaskFile(command=d.ATA_CMD_CHK_POWER))
            return rig.memory.read(rig.driver.fb[0] + r.RX_FIS_RFIS + 12, 1)[0]

        assert mode() == d.POWER_ACTIVE
        assert rig.driver.command(0, TaskFile(command=d.ATA_CMD_STANDBYNOW1)).ok
        assert mode() == d.POWER_STANDBY
        assert rig.driver.command(0, TaskFile(command=d.ATA_CMD_IDLEIMMEDIATE)).ok
        assert mode() == d.POWER_IDLE
        buf = rig.driver.alloc(512)
        rig.driver.rw_dma(0, 0, 1, buf, write=False)
        assert mode() == d.POWER_ACTIVE

    def test_read_verify_checks_the_range_only(self, rig: Rig) -> None:
        tf = TaskFile(command=d.ATA_CMD_VERIFY_EXT, lba=SECTORS - 1, count=1, device=d.ATA_LBA)
        assert rig.driver.command(0, tf).ok
        tf = TaskFile(command=d.ATA_CMD_VERIFY, lba=SECTORS - 1, count=2, device=d.ATA_LBA)
        assert rig.driver.command(0, tf).error == d.ATA_IDNF

    def test_smart_return_status(self, rig: Rig) -> None:
        key = d.SMART_LBA_HIGH << 16 | d.SMART_LBA_MID << 8
        tf = TaskFile(command=d.ATA_CMD_SMART, features=d.SMART_STATUS, lba=key)
        assert rig.driver.command(0, tf).ok
        fis = rig.memory.read(rig.driver.fb[0] + r.RX_FIS_RFIS, 20)
        assert (fis[5], fis[6]) == (0x4F, 0xC2)
        assert rig.driver.command(0, TaskFile(command=d.ATA_CMD_SMART, features=d.SMART_STATUS)).error == d.ATA_ABORTED
        rig.driver.recover(0)
        assert rig.driver.command(0, TaskFile(command=d.ATA_CMD_SMART, features=0xD0, lba=key)).error == d.ATA_ABORTED

    def test_execute_device_diagnostic_reports_the_signature(self, rig: Rig) -> None:
        result = rig.driver.command(0, TaskFile(command=d.ATA_CMD_EDD))
        assert result.ok and result.error == 0x01
        fis = rig.memory.read(rig.driver.fb[0] + r.RX_FIS_RFIS, 20)
        assert (fis[12], fis[4], fis[5], fis[6]) == d.SIG_ATA

    @pytest.mark.parametrize("opcode", [d.ATA_CMD_NOP, 0x47, 0x63, 0xFF, d.ATA_CMD_PACKET, d.ATA_CMD_DEV_RESET])
    def test_spec_acs3_6_3_2_unsupported_commands_abort(self, rig: Rig, opcode: int) -> None:
        result = rig.driver.command(0, TaskFile(command=opcode))
        assert result.pxis & r.PxIS_TFES
        assert result.status == d.STATUS_ERR and result.error == d.ATA_ABORTED


class TestLogs:
    def test_log_directory(self, rig: Rig) -> None:
        result, page = rig.driver.read_log(0, d.ATA_LOG_DIRECTORY)
        assert result.ok and result.pxis & r.PxIS_PSS
        directory = struct.unpack("<256H", page)
        assert directory[0] == 1 and directory[0x10] == 1 and directory[0x30] == 2

    def test_identify_device_data_log(self, rig: Rig) -> None:
        _, page0 = rig.driver.read_log(0, d.ATA_LOG_IDENTIFY_DEVICE, 0)
        assert list(page0[9 : 9 + page0[8]]) == [0, 1]  # what ata_identify_page_supported reads
        _, page1 = rig.driver.read_log(0, d.ATA_LOG_IDENTIFY_DEVICE, 1)
        assert page1 == rig.driver.identify(0)[1]
        _, both = rig.driver.read_log(0, d.ATA_LOG_IDENTIFY_DEVICE, 0, count=2)
        assert both == page0 + page1

    @pytest.mark.parametrize(("log", "page", "count"), [(0x11, 0, 1), (0x30, 2, 1), (0x00, 0, 2), (0x10, 0, 0)])
    def test_unsupported_logs_and_pages_abort(self, rig: Rig, log: int, page: int, count: int) -> None:
        buf = rig.driver.alloc(1024)
        tf = TaskFile(command=d.ATA_CMD_READ_LOG_EXT, lba=log | page << 8, count=count, device=d.ATA_LBA)
        assert rig.driver.command(0, tf, [(buf, 1024)]).error == d.ATA_ABORTED

    def test_ncq_log_without_an_error_has_nq_set(self, rig: Rig) -> None:
        assert rig.driver.ncq_error_tag(0) is None


class TestNcq:
    def test_queued_reads_complete_out_of_order(self) -> None:
        disk = ScriptedDisk(4 << 20, auto=False)
        for i in range(4):
            disk.data[i * 4096 : i * 4096 + 4] = bytes([i]) * 4
        rig = Rig(disk=disk)
        drv = rig.driver
        bufs = [drv.alloc(4096) for _ in range(4)]
        for tag in range(4):
            drv.fpdma(0, tag, tag * 8, 8, bufs[tag], write=False)
        drv.issue(0, 0b1111, queued=True)
        assert drv.preg(0, r.PxCI) == 0  # accepted: D2H with BSY clear
        assert drv.preg(0, r.PxSACT) == 0b1111
        dsfis = rig.memory.read(drv.fb[0] + r.RX_FIS_DSFIS, 28)
        assert dsfis[0] == 0x41 and dsfis[4] == 3 and struct.unpack_from("<I", dsfis, 20)[0] == 4096
        disk.release([2])
        rig.hba.poll()
        assert drv.preg(0, r.PxSACT) == 0b1011
        sdb = rig.memory.read(drv.fb[0] + r.RX_FIS_SDBFIS, 8)
        assert sdb[0] == 0xA1 and struct.unpack_from("<I", sdb, 4)[0] == 0b0100
        assert drv.preg(0, r.PxIS) & r.PxIS_SDBS
        disk.release([2, 0, 1])
        rig.hba.poll()
        assert drv.preg(0, r.PxSACT) == 0
        for i in range(4):
            assert rig.memory.read(bufs[i], 4) == bytes([i]) * 4

    def test_queued_write_with_fua_flushes(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512)
        tf = TaskFile(command=d.ATA_CMD_FPDMA_WRITE, lba=5, features=1, count=2 << 3, device=d.ATA_LBA | d.ATA_FUA)
        rig.driver.prepare(0, 2, tf, [(buf, 512)], write=True)
        rig.driver.issue(0, 0b100, queued=True)
        assert rig.driver.wait_slot(0, 2, queued=True).ok
        assert [op for op, _, _ in rig.disk.log] == [BlockOp.WRITE, BlockOp.FLUSH]

    def test_all_32_tags_at_once(self, rig: Rig) -> None:
        buf = rig.driver.alloc(32 * 512)
        for tag in range(32):
            rig.driver.fpdma(0, tag, tag, 1, buf + tag * 512, write=False)
        rig.driver.issue(0, 0xFFFF_FFFF, queued=True)
        rig.driver.wait(lambda: rig.driver.preg(0, r.PxSACT) == 0, "32 tags")
        assert not rig.driver.preg(0, r.PxIS) & r.PxIS_FATAL

    def test_ncq_error_and_log_10h_recovery(self) -> None:
        disk = ScriptedDisk(4 << 20, auto=False)
        rig = Rig(disk=disk)
        drv = rig.driver
        buf = drv.alloc(8192)
        drv.fpdma(0, 0, 0, 8, buf, write=False)
        drv.fpdma(0, 5, SECTORS - 1, 8, buf + 4096, write=False)  # past the end
        drv.issue(0, 0b1, queued=True)
        drv.issue(0, 0b10_0000, queued=True)
        pxis = drv.preg(0, r.PxIS)
        assert pxis & r.PxIS_TFES and pxis & r.PxIS_SDBS
        assert drv.preg(0, r.PxTFD) == d.ATA_IDNF << 8 | d.STATUS_ERR
        assert drv.preg(0, r.PxSACT) == 0b10_0001  # nothing completed
        drv.set_preg(0, r.PxCMD, drv.preg(0, r.PxCMD) & ~r.PxCMD_ST)
        assert drv.preg(0, r.PxSACT) == 0 and drv.preg(0, r.PxCMD) & r.PxCMD_CR  # tag 0 still in flight
        disk.release()
        rig.hba.poll()
        assert not drv.preg(0, r.PxCMD) & r.PxCMD_CR
        assert rig.memory.read(buf, 8) == bytes(8)  # ... and its data still arrived
        drv.recover(0)
        # SATA 3.x §13.6.3.2: only READ LOG EXT 10h is accepted in the error state
        assert drv.identify(0)[0].error == d.ATA_ABORTED
        drv.recover(0)
        assert drv.ncq_error_tag(0) == 5
        assert drv.ncq_error_tag(0) is None  # reading the log left the error state
        result, _ = drv.identify(0)
        assert result.ok
        _, log = drv.read_log(0, d.ATA_LOG_SATA_NCQ)
        assert log[0] & 0x80

    def test_ncq_log_page_fields(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512)
        rig.driver.fpdma(0, 7, SECTORS + 3, 1, buf, write=True)
        rig.driver.issue(0, 1 << 7, queued=True)
        rig.driver.recover(0)
        _, log = rig.driver.read_log(0, d.ATA_LOG_SATA_NCQ)
        assert log[0] == 7 and log[2] == d.STATUS_ERR and log[3] == d.ATA_IDNF
        assert int.from_bytes(log[4:7] + log[8:11], "little") == SECTORS + 3
        assert sum(log) & 0xFF == 0

    def test_tag_must_match_slot(self, rig: Rig) -> None:
        buf = rig.driver.alloc(512)
        tf = TaskFile(command=d.ATA_CMD_FPDMA_READ, lba=0, features=1, count=4 << 3, device=d.ATA_LBA)
        rig.driver.prepare(0, 3, tf, [(buf, 512)])
        rig.driver.issue(0, 1 << 3, queued=True)
        assert rig.driver.preg(0, r.PxIS) & r.PxIS_TFES
        assert rig.driver.preg(0, r.PxTFD) >> 8 == d.ATA_ABORTED

    def test_spec_sata_13_6_tag_reuse_aborts_everything(self) -> None:
        disk = ScriptedDisk(4 << 20, auto=False)
        rig = Rig(disk=disk)
        drv = rig.driver
        buf = drv.alloc(1024)
        drv.fpdma(0, 1, 0, 1, buf, write=False)
        drv.fpdma(0, 2, 1, 1, buf + 512, write=False)
        drv.issue(0, 0b110, queued=True)
        drv.issue(0, 0b010, queued=True)  # tag 1 is still outstanding in the device
        assert drv.preg(0, r.PxIS) & r.PxIS_TFES
        assert drv.preg(0, r.PxCI) == 0b010
        disk.release()
        drv.recover(0)
        assert drv.preg(0, r.PxSACT) == 0  # the aborted commands never completed
        assert drv.ncq_error_tag(0) is None  # not a specific tag: NQ

    def test_non_queued_command_while_queued_outstanding(self) -> None:
        disk = ScriptedDisk(4 << 20, auto=False)
        rig = Rig(disk=disk)
        buf = rig.driver.alloc(512)
        rig.driver.fpdma(0, 1, 0, 1, buf, write=False)
        rig.driver.issue(0, 0b10, queued=True)
        rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_FLUSH_EXT))
        rig.driver.issue(0, 0b1)
        assert rig.driver.preg(0, r.PxIS) & r.PxIS_TFES
        assert rig.driver.preg(0, r.PxTFD) >> 8 == d.ATA_ABORTED
        assert BlockOp.FLUSH not in [op for op, _, _ in disk.log]


def test_disk_rejects_unusable_backends() -> None:
    from devmodels import UsageError

    with pytest.raises(UsageError):
        AtaDisk(ScriptedDisk(4096, block=4096))
    with pytest.raises(UsageError):
        AtaDisk(ScriptedDisk(100))
    with pytest.raises(UsageError):
        AtaDisk(ScriptedDisk(4096), model="x" * 41)
