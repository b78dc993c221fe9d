"""The PCI function (ICH9 identity, ABAR, MSI on request) and interrupt delivery (AHCI 1.3.1 §10.6)."""

from __future__ import annotations

import pytest

from devmodels import GuestMemory, MemoryRegion, RecordingLevelSink, RecordingMsiSink, UsageError
from devmodels.ahci import AhciController, AtaDisk, TaskFile
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.pci.defs import PCI_CAP_ID_MSI, PCI_CAPABILITY_LIST, PCI_STATUS, PCI_STATUS_CAP_LIST
from tests.unit.devmodels.ahci.doubles import Rig, ScriptedDisk


def test_pci_identity_and_abar() -> None:
    hba = AhciController(GuestMemory([MemoryRegion.from_bytearray(0, 4096)]))
    assert hba.config_read(0x00, 4) == 0x2922_8086
    assert hba.config_read(0x08, 4) >> 8 == 0x01_06_01
    assert hba.config_read(0x3D, 1) == 1  # INTA#
    hba.config_write(0x24, 4, 0xFFFF_FFFF)  # BAR5 sizing
    assert hba.config_read(0x24, 4) == 0xFFFF_F000
    for bar in range(5):
        assert hba.config_read(0x10 + 4 * bar, 4) == 0
    assert not hba.config_read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST  # no MSI unless asked


def test_msi_capability_only_on_request() -> None:
    hba = AhciController(GuestMemory([MemoryRegion.from_bytearray(0, 4096)]), msi=True)
    cap = hba.config_read(PCI_CAPABILITY_LIST, 1)
    assert hba.config_read(cap, 1) == PCI_CAP_ID_MSI


@pytest.mark.parametrize("ports", [0, 7, "2"])
def test_port_count_is_validated(ports: object) -> None:
    with pytest.raises(UsageError):
        AhciController(GuestMemory([MemoryRegion.from_bytearray(0, 4096)]), ports=ports)  # type: ignore[arg-type]


def test_ports_implemented_follows_configuration() -> None:
    hba = AhciController(GuestMemory([MemoryRegion.from_bytearray(0, 4096)]), ports=6)
    assert hba.read(r.PI, 4) == 0x3F and hba.read(r.CAP, 4) & r.CAP_NP_MASK == 5


def test_intx_follows_is_and_ghc_ie() -> None:
    rig = Rig()
    sink = RecordingLevelSink()
    rig.hba.intx = sink
    drv = rig.driver
    drv.prepare(0, 0, TaskFile(command=d.ATA_CMD_CHK_POWER))
    drv.issue(0, 1)
    assert sink.level and rig.hba.read(r.IS, 4) == 1
    drv.set_reg(r.GHC, r.GHC_AE)  # IE off: the line drops, IS stays
    assert not sink.level and rig.hba.read(r.IS, 4) == 1
    drv.set_reg(r.GHC, r.GHC_AE | r.GHC_IE)
    assert sink.level
    drv.set_preg(0, r.PxIS, 0xFFFF_FFFF)
    drv.set_reg(r.IS, 1)
    assert not sink.level


def test_masked_port_interrupts_do_not_raise_the_line() -> None:
    rig = Rig()
    sink = RecordingLevelSink()
    rig.hba.intx = sink
    rig.driver.set_preg(0, r.PxIE, r.PxIS_TFES)
    rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_CHK_POWER))
    rig.driver.issue(0, 1)
    assert rig.driver.preg(0, r.PxIS) & r.PxIS_DHRS and not sink.level


def test_msi_one_message_per_newly_set_is_bit() -> None:
    rig = Rig(msi=True)
    msi = RecordingMsiSink()
    rig.hba.msi_sink = msi
    cap = rig.hba.msi.offset
    rig.hba.config_write(cap + 4, 4, 0xFEE0_0000)
    rig.hba.config_write(cap + 12, 2, 0x4041)
    rig.hba.config_write(cap + 2, 2, 1)  # MSI enable
    sink = RecordingLevelSink()
    rig.hba.intx = sink
    drv = rig.driver
    drv.prepare(0, 0, TaskFile(command=d.ATA_CMD_CHK_POWER))
    drv.issue(0, 1)
    assert [m.data for m in msi.messages] == [0x4041]
    drv.prepare(1, 0, TaskFile(command=d.ATA_CMD_CHK_POWER))
    drv.issue(1, 1)
    assert len(msi.messages) == 2  # port 1's IS bit is new
    drv.set_reg(r.IS, 0b01)  # port 0 still pending: IS relatches, a new message
    assert len(msi.messages) == 3
    drv.set_preg(0, r.PxIS, 0xFFFF_FFFF)
    drv.set_preg(1, r.PxIS, 0xFFFF_FFFF)
    drv.set_reg(r.IS, 0b11)
    assert len(msi.messages) == 3 and not sink.level


def test_poll_counts_completions_and_attach_checks() -> None:
    disk = ScriptedDisk(1 << 20, auto=False)
    rig = Rig(disk=disk)
    buf = rig.driver.alloc(512)
    rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_READ_EXT, count=1, device=d.ATA_LBA), [(buf, 512)])
    rig.driver.issue(0, 1)
    assert rig.hba.busy and rig.hba.poll() == 0
    with pytest.raises(UsageError):
        rig.hba.attach(0, None)
    with pytest.raises(UsageError):
        rig.hba.attach(9, None)
    disk.release()
    assert rig.hba.poll() == 1 and not rig.hba.busy


def test_reset_with_io_in_flight_reads_busy_until_drained() -> None:
    disk = ScriptedDisk(1 << 20, auto=False)
    rig = Rig(disk=disk)
    buf = rig.driver.alloc(512)
    rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_READ_EXT, count=1, device=d.ATA_LBA), [(buf, 512)])
    rig.driver.issue(0, 1)
    rig.hba.reset()
    assert rig.hba.read(r.GHC, 4) & r.GHC_HR
    disk.release()
    rig.hba.poll()
    assert rig.hba.read(r.GHC, 4) == r.GHC_AE and not rig.hba.busy


def test_reset_returns_to_power_on() -> None:
    rig = Rig()
    rig.hba.reset()
    assert rig.hba.read(r.GHC, 4) == r.GHC_AE
    assert rig.hba.read(r.PORT_BASE + r.PxCMD, 4) == r.PxCMD_POD
    assert rig.hba.config_read(0x04, 2) == 0  # PCI command register too
    rig.driver = type(rig.driver).for_controller(rig.hba, rig.memory, 8 << 20, 8 << 20)
    rig.driver.reset_hba()
    assert rig.driver.start_port(0) == 0x101


def test_detach_and_reattach_a_drive() -> None:
    rig = Rig()
    rig.hba.attach(0, None)
    assert rig.driver.preg(0, r.PxSSTS) == 0
    rig.hba.attach(0, AtaDisk(ScriptedDisk(1 << 20)))
    assert rig.driver.preg(0, r.PxSSTS) == 0x123  # SUD is still set: the link comes up


def test_machine_enumeration_finds_bar5() -> None:
    from devmodels import Machine

    with Machine(ram_size=16 << 20, ram_backing="bytearray") as m:
        hba = AhciController(m.memory, ports=1)
        hba.attach(0, AtaDisk(ScriptedDisk(1 << 20)))
        m.add_pci(hba)
        infos = m.enumerate()
        (info,) = [i for i in infos if i.vendor_id == 0x8086 and i.device_id == 0x2922]
        (bar,) = [b for b in info.bars if b.index == 5]
        assert bar.size == 0x1000
        assert m.mmio.read(bar.address + r.VS, 4) == 0x0001_0300
