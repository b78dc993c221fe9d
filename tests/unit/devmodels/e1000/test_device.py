"""The PCI function: identity, BARs, the I/O window, reset, link (SDM §4.1, §13.2)."""

from __future__ import annotations

import pytest

from devmodels import UsageError
from devmodels.e1000 import E1000
from devmodels.e1000 import regs as r

from .conftest import Rig


def test_pci_identity(rig: Rig) -> None:
    dev = rig.device
    assert dev.config_read(0x00, 4) == 0x100E_8086
    assert dev.config_read(0x08, 4) >> 8 == 0x020000
    assert dev.config_read(0x08, 1) == 0
    assert dev.config_read(0x2C, 4) == 0x001E_8086
    assert dev.config_read(0x3D, 1) == 1  # INTA#


def test_bars(rig: Rig) -> None:
    (info,) = [f for f in rig.machine.enumerate() if f.device_id == 0x100E]
    bars = {b.index: b for b in info.bars}
    assert (bars[0].kind, bars[0].size) == ("mem32", 128 << 10)
    assert (bars[1].kind, bars[1].size) == ("io", 64)


def test_revision_3_and_bad_revision(machine) -> None:  # type: ignore[no-untyped-def]
    assert E1000(machine.memory, revision=3).config_read(0x08, 1) == 3
    with pytest.raises(UsageError):
        E1000(machine.memory, revision=2)


def test_power_management_capability(rig: Rig) -> None:
    dev = rig.device
    assert dev.config_read(0x34, 1) == r.PM_CAP_OFFSET
    assert dev.config_read(r.PM_CAP_OFFSET, 1) == 0x01
    dev.config_write(r.PM_CAP_OFFSET + 4, 2, 0x3)
    assert dev.config_read(r.PM_CAP_OFFSET + 4, 2) & 0x3 == 0x3


def test_io_window_reaches_registers_spec_13_2_1(rig: Rig) -> None:
    drv = rig.driver
    drv.probe()
    pio = rig.machine.pio
    pio.write(drv.io + r.IOADDR, 4, r.FCAL)
    pio.write(drv.io + r.IODATA, 4, 0xCAFE_F00D)
    assert drv.er32(r.FCAL) == 0xCAFE_F00D
    assert pio.read(drv.io + r.IOADDR, 4) == r.FCAL
    pio.write(drv.io + r.IOADDR, 4, r.STATUS)
    assert pio.read(drv.io + r.IODATA, 4) == drv.er32(r.STATUS)
    assert pio.read(drv.io + 0x10, 4) == 0  # reserved
    assert pio.read(drv.io + r.IODATA, 2) == 0  # only dword accesses are defined


def test_ctrl_rst_resets_mac_but_not_pci_spec_13_4_1(up: Rig) -> None:
    drv = up.driver
    drv.ew32(r.FCAL, 0x1234)
    drv.ew32(r.RAL0, 0)
    command = up.machine.config_read(0, drv.devfn, 4, 2)
    drv.write_reg_io(r.CTRL, drv.er32(r.CTRL) | r.CTRL_RST)
    assert not drv.er32(r.CTRL) & r.CTRL_RST
    assert drv.er32(r.FCAL) == 0
    assert drv.er32(r.RAL0) == int.from_bytes(drv.mac[:4], "little")  # reloaded from the EEPROM
    assert drv.er32(r.RAL0 + 4) & r.RAH_AV
    assert up.machine.config_read(0, drv.devfn, 4, 2) == command
    assert not drv.irq_asserted()


def test_status_reports_link_speed_duplex(up: Rig) -> None:
    status = up.driver.er32(r.STATUS)
    assert status & r.STATUS_LU and status & r.STATUS_FD
    assert (status >> 6) & 0b11 == 0b10  # 1000 Mb/s
    up.device.set_link(False)
    assert not up.driver.er32(r.STATUS) & r.STATUS_LU


def test_link_change_raises_lsc_and_driver_sees_carrier(up: Rig) -> None:
    drv, dev = up.driver, up.device
    drv.er32(r.ICR)
    dev.set_link(False)
    drv.run_timers()
    icr, _, _ = drv.handle_irq()
    assert icr & r.ICR_LSC and not drv.link
    dev.set_link(False)  # no change, no interrupt
    assert drv.er32(r.ICR) == 0
    dev.set_link(True)
    drv.run_timers()
    icr, _, _ = drv.handle_irq()
    assert icr & r.ICR_LSC and drv.link


def test_frames_not_sent_without_link(up: Rig) -> None:
    up.sent()
    up.device.set_link(False)
    up.driver.xmit(b"\xff" * 6 + up.driver.mac + b"\x08\x06" + bytes(46))
    assert up.sent() == []


def test_function_reset(up: Rig) -> None:
    dev = up.device
    dev.reset()
    assert dev.config_read(0x04, 2) == 0
    assert dev.registers["RCTL"] == 0
    assert dev.io_addr == 0
    assert dev.phy.link_up


def test_no_backend_drops_silently(machine) -> None:  # type: ignore[no-untyped-def]
    from devmodels.e1000.testing import E1000Driver

    dev = E1000(machine.memory)
    machine.add_pci(dev)
    drv = E1000Driver(machine, dev)
    drv.probe()
    drv.open()
    drv.poll()
    assert drv.xmit(b"\xff" * 6 + drv.mac + b"\x08\x06" + bytes(46))
    assert dev.receive_pending() == 0
