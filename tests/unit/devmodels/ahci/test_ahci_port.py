"""The port's command engine: architected errors for hostile tables, resets with I/O in flight."""

from __future__ import annotations

import struct

import pytest

from devmodels.ahci import TaskFile, build_h2d
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.ahci.layouts import CMD_HEADER, PRD_ENTRY
from devmodels.pci.defs import PCI_COMMAND, PCI_COMMAND_MEMORY
from tests.unit.devmodels.ahci.doubles import RAM_SIZE, Rig, ScriptedDisk


@pytest.fixture
def rig() -> Rig:
    return Rig()


def raw_slot(rig: Rig, slot: int, dw0: int, table: int | None = None, cfis: bytes | None = None) -> int:
    """Write a command header (and optionally a CFIS) by hand; return the table gpa."""
    drv = rig.driver
    table = drv.table(0, slot) if table is None else table
    if cfis is not None:
        rig.memory.write(table, cfis)
    rig.memory.write(drv.clb[0] + slot * 32, CMD_HEADER.pack(dw0, 0, table & 0xFFFF_FFFF, table >> 32))
    return table


def read_tf(lba: int = 0, count: int = 1) -> bytes:
    return build_h2d(TaskFile(command=d.ATA_CMD_READ_EXT, lba=lba, count=count, device=d.ATA_LBA))


def fatal(rig: Rig, port: int = 0) -> int:
    return rig.driver.preg(port, r.PxIS) & r.PxIS_FATAL


class TestHostileTables:
    def test_prdt_entry_outside_ram_is_hbfs(self, rig: Rig) -> None:
        rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_READ_EXT, count=1, device=d.ATA_LBA), [(RAM_SIZE - 256, 512)])
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_HBFS
        assert not rig.disk.log
        assert rig.driver.preg(0, r.PxCI) == 1

    def test_prdt_entry_far_above_4g_is_hbfs(self, rig: Rig) -> None:
        rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_READ_EXT, count=1, device=d.ATA_LBA), [((1 << 64) - 2, 512)])
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_HBFS

    def test_command_table_outside_ram_is_hbfs(self, rig: Rig) -> None:
        raw_slot(rig, 0, 5, table=0x7FFF_FF80_0000)
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_HBFS

    def test_command_list_outside_ram_is_hbfs(self, rig: Rig) -> None:
        rig.driver.stop_engine(0)
        rig.driver.set_preg(0, r.PxCLBU, 0x10)
        rig.driver.start_engine(0)
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_HBFS

    def test_fis_area_outside_ram_is_hbfs(self, rig: Rig) -> None:
        rig.driver.stop_engine(0)
        rig.driver.set_preg(0, r.PxCMD, rig.driver.preg(0, r.PxCMD) & ~r.PxCMD_FRE)
        rig.driver.set_preg(0, r.PxFB, RAM_SIZE)
        rig.driver.set_preg(0, r.PxCMD, rig.driver.preg(0, r.PxCMD) | r.PxCMD_FRE)
        rig.driver.start_engine(0)
        rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_CHK_POWER))
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_HBFS

    def test_zero_length_prdt_for_a_read_is_overflow(self, rig: Rig) -> None:
        raw_slot(rig, 0, 5, cfis=read_tf())
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_OFS
        assert not rig.disk.log

    def test_zero_length_prdt_for_a_write_is_ifs(self, rig: Rig) -> None:
        cfis = build_h2d(TaskFile(command=d.ATA_CMD_WRITE_EXT, count=1, device=d.ATA_LBA))
        raw_slot(rig, 0, 5 | r.CMDH_W, cfis=cfis)
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_IFS
        assert not rig.disk.log

    def test_prdtl_ffff_walks_only_what_the_command_needs(self, rig: Rig) -> None:
        table = raw_slot(rig, 0, 5 | 0xFFFF << 16, cfis=read_tf(count=1))
        buf = rig.driver.alloc(512)
        rig.memory.write(table + 0x80, PRD_ENTRY.pack(buf, 0, 0, 511))
        rig.driver.issue(0, 1)
        assert rig.driver.wait_slot(0, 0).ok

    def test_prdtl_ffff_of_garbage_far_past_ram_is_hbfs_not_a_hang(self, rig: Rig) -> None:
        # the PRDT itself runs off the end of RAM after eight entries
        table = RAM_SIZE - 0x100
        raw_slot(rig, 0, 5 | 0xFFFF << 16, table=table, cfis=read_tf(count=8192))
        for i in range(8):
            rig.memory.write(table + 0x80 + i * 16, PRD_ENTRY.pack(0x1000, 0, 0, 1))
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_HBFS
        assert not rig.disk.log

    def test_odd_byte_count_is_rounded_to_even(self, rig: Rig) -> None:
        table = raw_slot(rig, 0, 5 | 2 << 16, cfis=read_tf(count=1))
        buf = rig.driver.alloc(512)
        rig.memory.write(table + 0x80, PRD_ENTRY.pack(buf, 0, 0, 254))  # DBC bit 0 clear
        rig.memory.write(table + 0x90, PRD_ENTRY.pack(buf + 256, 0, 0, 255))
        rig.driver.issue(0, 1)
        assert rig.driver.wait_slot(0, 0).prdbc == 512

    @pytest.mark.parametrize("cfl", [0, 1, 4, 17, 31])
    def test_bad_cfl_is_ifs(self, rig: Rig, cfl: int) -> None:
        raw_slot(rig, 0, cfl, cfis=read_tf())
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_IFS

    @pytest.mark.parametrize("fis_type", [0x00, 0x34, 0x46, 0xFF])
    def test_a_cfis_that_is_not_a_register_h2d_fis_is_ifs(self, rig: Rig, fis_type: int) -> None:
        raw_slot(rig, 0, 5, cfis=bytes([fis_type]) + read_tf()[1:])
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_IFS

    def test_bus_master_disabled_is_hbfs(self, rig: Rig) -> None:
        rig.hba.config_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY)
        rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_CHK_POWER))
        rig.driver.issue(0, 1)
        assert fatal(rig) == r.PxIS_HBFS

    def test_a_halted_port_processes_nothing_until_st_is_cleared(self, rig: Rig) -> None:
        raw_slot(rig, 0, 5, cfis=read_tf())
        rig.driver.prepare(0, 1, TaskFile(command=d.ATA_CMD_CHK_POWER))
        rig.driver.issue(0, 0b11)
        assert fatal(rig) and rig.driver.preg(0, r.PxCI) == 0b11
        rig.driver.set_preg(0, r.PxCI, 0b100)
        assert rig.driver.preg(0, r.PxCI) == 0b111
        rig.driver.recover(0)
        assert rig.driver.preg(0, r.PxCI) == 0
        assert rig.driver.command(0, TaskFile(command=d.ATA_CMD_CHK_POWER)).ok


class TestSlots:
    def test_all_32_non_queued_slots_at_once(self, rig: Rig) -> None:
        bufs = []
        for slot in range(32):
            buf = rig.driver.alloc(512)
            bufs.append(buf)
            rig.disk.data[slot * 512 : slot * 512 + 2] = bytes([slot, 0xAA])
            rig.driver.prepare(0, slot, TaskFile(command=d.ATA_CMD_READ_EXT, lba=slot, count=1, device=d.ATA_LBA),
                               [(buf, 512)])
        rig.driver.issue(0, 0xFFFF_FFFF)
        assert rig.driver.preg(0, r.PxCI) == 0
        assert [rig.memory.read(b, 2) for b in bufs] == [bytes([s, 0xAA]) for s in range(32)]

    def test_slots_run_one_at_a_time_in_round_robin_order(self) -> None:
        disk = ScriptedDisk(1 << 20, auto=False)
        rig = Rig(disk=disk)
        buf = rig.driver.alloc(512)
        for slot in (3, 9, 20):
            rig.driver.prepare(0, slot, TaskFile(command=d.ATA_CMD_READ_EXT, lba=slot, count=1, device=d.ATA_LBA),
                               [(buf, 512)])
        rig.driver.issue(0, 1 << 3 | 1 << 9 | 1 << 20)
        order = []
        for _ in range(3):
            assert len(disk.pending) == 1  # non-queued commands never overlap
            order.append(disk.pending[0][0].offset // 512)
            ccs = (rig.driver.preg(0, r.PxCMD) & r.PxCMD_CCS_MASK) >> r.PxCMD_CCS_SHIFT
            assert ccs == order[-1]
            disk.release()
            rig.hba.poll()
        assert order == [3, 9, 20] and rig.driver.preg(0, r.PxCI) == 0

    def test_prd_interrupt_bit_sets_dps(self, rig: Rig) -> None:
        buf = rig.driver.alloc(1024)
        tf = TaskFile(command=d.ATA_CMD_READ_EXT, count=2, device=d.ATA_LBA)
        rig.driver.prepare(0, 0, tf, [(buf, 512), (buf + 512, 512)], interrupt_on=[1])
        rig.driver.issue(0, 1)
        assert rig.driver.wait_slot(0, 0).pxis & r.PxIS_DPS
        rig.driver.prepare(0, 0, tf, [(buf, 512), (buf + 512, 512)])
        rig.driver.issue(0, 1)
        assert not rig.driver.wait_slot(0, 0).pxis & r.PxIS_DPS

    def test_larger_prdt_than_needed_reports_actual_bytes(self, rig: Rig) -> None:
        buf = rig.driver.alloc(8192)
        tf = TaskFile(command=d.ATA_CMD_READ_EXT, count=1, device=d.ATA_LBA)
        assert rig.driver.command(0, tf, [(buf, 8192)]).prdbc == 512

    def test_fre_clear_posts_no_fis_but_updates_pxtfd(self, rig: Rig) -> None:
        rig.driver.stop_engine(0)
        rig.driver.set_preg(0, r.PxCMD, rig.driver.preg(0, r.PxCMD) & ~r.PxCMD_FRE)
        rig.driver.start_engine(0)
        rig.memory.fill(rig.driver.fb[0], 256, 0xEE)
        result = rig.driver.command(0, TaskFile(command=d.ATA_CMD_CHK_POWER))
        assert result.status == d.STATUS_OK and result.pxis & r.PxIS_DHRS
        assert rig.memory.read(rig.driver.fb[0], 256) == b"\xee" * 256


class TestResetsWithIoInFlight:
    def make(self) -> tuple[Rig, ScriptedDisk, int]:
        disk = ScriptedDisk(1 << 20, auto=False, data=b"Z" * 512)
        rig = Rig(disk=disk)
        buf = rig.driver.alloc(512)
        rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_READ_EXT, count=1, device=d.ATA_LBA), [(buf, 512)])
        rig.driver.issue(0, 1)
        assert len(disk.pending) == 1
        return rig, disk, buf

    def test_clearing_st_keeps_cr_until_the_backend_returns(self) -> None:
        rig, disk, buf = self.make()
        rig.driver.set_preg(0, r.PxCMD, rig.driver.preg(0, r.PxCMD) & ~r.PxCMD_ST)
        assert rig.driver.preg(0, r.PxCI) == 0
        assert rig.driver.preg(0, r.PxCMD) & r.PxCMD_CR
        assert rig.hba.busy
        disk.release()
        rig.hba.poll()
        assert not rig.driver.preg(0, r.PxCMD) & r.PxCMD_CR
        assert not rig.driver.preg(0, r.PxIS) & (r.PxIS_DHRS | r.PxIS_FATAL)  # cancelled: no completion

    def test_spec_10_4_2_comreset_waits_for_the_device_to_drain(self) -> None:
        rig, disk, buf = self.make()
        rig.driver.set_preg(0, r.PxCMD, rig.driver.preg(0, r.PxCMD) & ~r.PxCMD_ST)
        rig.driver.set_preg(0, r.PxSCTL, 0x301)
        rig.driver.set_preg(0, r.PxSCTL, 0x300)
        assert rig.driver.preg(0, r.PxSSTS) & 0xF == r.SSTS_DET_PRESENT
        disk.release()
        rig.hba.poll()
        assert rig.driver.preg(0, r.PxSSTS) == 0x123
        assert rig.driver.preg(0, r.PxTFD) == 0x0150

    def test_spec_10_4_3_hba_reset_reads_busy_until_drained(self) -> None:
        rig, disk, buf = self.make()
        rig.driver.set_reg(r.GHC, r.GHC_AE | r.GHC_HR)
        assert rig.driver.reg(r.GHC) & r.GHC_HR
        assert rig.driver.preg(0, r.PxCI) == 0 and rig.driver.preg(0, r.PxCMD) == r.PxCMD_POD | r.PxCMD_CR
        disk.release()
        rig.hba.poll()
        assert rig.driver.reg(r.GHC) == r.GHC_AE
        assert not rig.driver.preg(0, r.PxCMD) & r.PxCMD_CR
        rig.driver.set_reg(r.GHC, r.GHC_AE | r.GHC_IE)
        rig.driver.start_port(0)
        assert rig.driver.identify(0)[0].ok

    def test_stray_completions_are_ignored(self, rig: Rig) -> None:
        from devmodels.backends import BlockCompletion, BlockStatus

        assert not rig.hba.ports[0].complete(BlockCompletion("not ours", BlockStatus.OK))
        assert not rig.hba.ports[0].complete(BlockCompletion(999_999, BlockStatus.OK))


class TestSoftReset:
    def srst(self, rig: Rig, port: int) -> None:
        """ahci_do_softreset: two control FISes, SRST set (R|C) then clear."""
        drv = rig.driver
        drv.stop_engine(port)
        drv.start_engine(port)
        for slot_flags, control in ((r.CMDH_R | r.CMDH_C, d.ATA_SRST), (0, 0)):
            tf = TaskFile(is_command=False, control=control)
            drv.prepare(port, 0, tf, flags=slot_flags)
            drv.issue(port, 1)
            assert drv.preg(port, r.PxCI) == 0

    def test_softreset_reports_the_signature(self, rig: Rig) -> None:
        rig.driver.command(0, TaskFile(command=d.ATA_CMD_STANDBYNOW1))
        rig.hba.ports[0].regs["PxSIG"] = 0
        self.srst(rig, 0)
        assert rig.driver.preg(0, r.PxSIG) == 0x101
        assert rig.driver.preg(0, r.PxTFD) & 0xFF == d.STATUS_OK
        self.srst(rig, 1)
        assert rig.driver.preg(1, r.PxSIG) == 0xEB14_0101
        fis = rig.memory.read(rig.driver.fb[1] + r.RX_FIS_RFIS, 20)
        assert fis[0] == 0x34 and (fis[5], fis[6]) == (0x14, 0xEB)

    def test_srst_without_clear_busy_leaves_bsy_until_released(self, rig: Rig) -> None:
        drv = rig.driver
        drv.prepare(0, 0, TaskFile(is_command=False, control=d.ATA_SRST), flags=r.CMDH_R)
        drv.issue(0, 1)
        assert drv.preg(0, r.PxTFD) & d.ATA_BUSY
        drv.prepare(0, 0, TaskFile(is_command=False, control=0))
        drv.issue(0, 1)
        assert not drv.preg(0, r.PxTFD) & d.ATA_BUSY


def test_identify_through_a_64bit_command_list(rig: Rig) -> None:
    """CLB/FB/CTBA above 4 GiB (CAP.S64A) on a RAM region placed there."""
    from devmodels import MemoryRegion

    high = 1 << 33
    rig.memory.add_region(MemoryRegion.from_bytearray(high, 1 << 16))
    drv = rig.driver
    drv.stop_engine(0)
    drv.set_preg(0, r.PxCMD, drv.preg(0, r.PxCMD) & ~r.PxCMD_FRE)
    drv.clb[0], drv.fb[0], drv.tables[0] = high, high + 0x400, high + 0x800
    for off, value in ((r.PxCLB, high), (r.PxFB, high + 0x400)):
        drv.set_preg(0, off, value & 0xFFFF_FFFF)
        drv.set_preg(0, off + 4, value >> 32)
    drv.set_preg(0, r.PxCMD, drv.preg(0, r.PxCMD) | r.PxCMD_FRE)
    drv.start_engine(0)
    result, data = drv.identify(0)
    assert result.ok and struct.unpack_from("<H", data, 255 * 2)[0] & 0xFF == 0xA5
    assert rig.memory.read(high + 0x400 + r.RX_FIS_PSFIS, 1) == b"\x5f"
