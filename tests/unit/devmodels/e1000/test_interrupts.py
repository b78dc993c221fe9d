"""ICR/ICS/IMS/IMC, INTx and MSI output, ITR and the delay timers (SDM §3.4, §13.4.17-21)."""

from __future__ import annotations

import pytest

from devmodels.e1000 import regs as r

from .conftest import Rig


@pytest.fixture
def quiet(rig: Rig) -> Rig:
    rig.up()
    rig.driver.er32(r.ICR)
    rig.driver.ew32(r.IMC, 0xFFFF_FFFF)
    rig.driver.ew32(r.ITR, 0)
    return rig


def test_ics_sets_icr_and_icr_read_clears_spec_13_4_17(quiet: Rig) -> None:
    drv = quiet.driver
    drv.ew32(r.ICS, r.ICR_RXT0 | r.ICR_LSC)
    assert not drv.irq_asserted()  # masked
    assert drv.er32(r.ICR) == r.ICR_RXT0 | r.ICR_LSC
    assert drv.er32(r.ICR) == 0


def test_level_follows_icr_and_ims(quiet: Rig) -> None:
    drv = quiet.driver
    drv.ew32(r.ICS, r.ICR_TXDW)
    drv.ew32(r.IMS, r.ICR_TXDW)
    assert drv.irq_asserted()
    drv.ew32(r.IMC, r.ICR_TXDW)
    assert not drv.irq_asserted()
    drv.ew32(r.IMS, r.ICR_TXDW)
    assert drv.irq_asserted()
    drv.er32(r.ICR)
    assert not drv.irq_asserted()


def test_ims_is_write_one_to_set(quiet: Rig) -> None:
    drv = quiet.driver
    drv.ew32(r.IMS, r.ICR_TXDW)
    drv.ew32(r.IMS, r.ICR_LSC)
    assert drv.er32(r.IMS) == r.ICR_TXDW | r.ICR_LSC
    drv.ew32(r.IMC, r.ICR_TXDW)
    assert drv.er32(r.IMS) == r.ICR_LSC


def test_icr_write_one_clears(quiet: Rig) -> None:
    drv = quiet.driver
    drv.ew32(r.ICS, r.ICR_TXDW | r.ICR_RXT0)
    drv.ew32(r.ICR, r.ICR_TXDW)
    assert drv.er32(r.ICR) == r.ICR_RXT0


@pytest.mark.parametrize("bit", range(10))
def test_ethtool_interrupt_test_bits(quiet: Rig, bit: int) -> None:
    drv = quiet.driver
    drv.ew32(r.IMC, 1 << bit)
    drv.ew32(r.ICS, 1 << bit)
    assert not drv.irq_asserted()
    drv.er32(r.ICR)
    drv.ew32(r.IMS, 1 << bit)
    drv.ew32(r.ICS, 1 << bit)
    assert drv.irq_asserted()
    drv.er32(r.ICR)


def test_itr_spaces_assertions_spec_13_4_18(quiet: Rig) -> None:
    drv, dev = quiet.driver, quiet.device
    drv.ew32(r.ITR, 1000)  # 256 µs
    drv.advance(1_000_000)  # well past the window of the assertions made while opening
    drv.ew32(r.IMS, r.ICR_TXDW)
    drv.ew32(r.ICS, r.ICR_TXDW)
    assert drv.irq_asserted()
    first = dev.irq.last_assert
    assert first is not None
    drv.er32(r.ICR)
    drv.ew32(r.ICS, r.ICR_TXDW)
    assert not drv.irq_asserted()
    assert dev.next_deadline() == first + 1000 * 256
    drv.advance(1000 * 256 - 1 - (drv.now - first))
    assert not drv.irq_asserted()
    drv.advance(1)
    assert drv.irq_asserted()


def test_rdtr_and_radv_spec_3_2_7(quiet: Rig) -> None:
    drv, dev = quiet.driver, quiet.device
    drv.ew32(r.RDTR, 10)
    drv.ew32(r.RADV, 25)
    drv.ew32(r.IMS, r.ICR_RXT0)
    frame = drv.mac + b"\x02" * 6 + b"\x08\x00" + bytes(46)
    start = drv.now
    dev.receive_frame(frame)
    assert not drv.er32(r.ICR) & r.ICR_RXT0
    assert dev.next_deadline() == start + 10 * 1024
    for step in range(3):  # packets every 8 µs keep restarting RDTR ...
        drv.advance(8 * 1024)
        dev.receive_frame(frame)
        assert not drv.irq_asserted(), step
    drv.advance(1 * 1024)  # ... until RADV (25 µs after the first) fires
    assert drv.irq_asserted()
    assert drv.er32(r.ICR) & r.ICR_RXT0
    assert dev.next_deadline() is None


def test_rdtr_zero_is_immediate_and_fpd_flushes(quiet: Rig) -> None:
    drv, dev = quiet.driver, quiet.device
    frame = drv.mac + b"\x02" * 6 + b"\x08\x00" + bytes(46)
    drv.ew32(r.RDTR, 0)
    dev.receive_frame(frame)
    assert drv.er32(r.ICR) & r.ICR_RXT0
    drv.ew32(r.RDTR, 100)
    dev.receive_frame(frame)
    assert not drv.er32(r.ICR) & r.ICR_RXT0
    drv.ew32(r.RDTR, 100 | r.RDTR_FPD)
    assert drv.er32(r.ICR) & r.ICR_RXT0
    assert drv.er32(r.RDTR) == 100  # FPD is write-only


def test_tidv_tadv_and_ide_spec_3_3_3_1(quiet: Rig) -> None:
    drv = quiet.driver
    drv.ew32(r.TIDV, 8)
    drv.ew32(r.TADV, 20)
    frame = b"\xff" * 6 + drv.mac + b"\x08\x06" + bytes(46)
    drv.xmit(frame)  # the simulator sets RS|IDE like Linux
    assert not drv.er32(r.ICR) & r.ICR_TXDW
    for _ in range(2):
        drv.advance(7 * 1024)
        drv.xmit(frame)
    assert not drv.er32(r.ICR) & r.ICR_TXDW
    drv.advance(6 * 1024)  # TADV: 20 µs after the first write-back
    assert drv.er32(r.ICR) & r.ICR_TXDW


def test_mitigation_off_is_immediate(machine) -> None:  # type: ignore[no-untyped-def]
    from .conftest import Rig as R

    rig = R(mitigation=False)
    try:
        drv = rig.up(itr=4000)
        drv.er32(r.ICR)
        drv.xmit(b"\xff" * 6 + drv.mac + b"\x08\x06" + bytes(46))
        assert drv.irq_asserted()
        assert rig.device.next_deadline() is None
    finally:
        rig.close()


def test_msi_when_enabled() -> None:
    rig = Rig(msi=True)
    try:
        dev = rig.device
        assert dev.msi is not None
        drv = rig.driver
        drv.probe()
        cap = dev.msi.offset
        rig.machine.config_write(0, drv.devfn, cap + 4, 4, 0xFEE0_0000)
        rig.machine.config_write(0, drv.devfn, cap + 12, 2, 0x4041)
        rig.machine.config_write(0, drv.devfn, cap + 2, 2, 1)
        drv.ew32(r.ITR, 0)
        drv.ew32(r.IMS, r.ICR_TXDW)
        drv.ew32(r.ICS, r.ICR_TXDW)
        assert rig.machine.irq.msi[-1] == (0xFEE0_0000, 0x4041)
        assert not drv.irq_asserted()
        drv.ew32(r.ICS, r.ICR_TXDW)  # still pending: no second message
        assert len(rig.machine.irq.msi) == 1
        drv.er32(r.ICR)
        drv.ew32(r.ICS, r.ICR_TXDW)
        assert len(rig.machine.irq.msi) == 2
    finally:
        rig.close()


def test_no_msi_capability_by_default(rig: Rig) -> None:
    assert rig.device.msi is None
    assert rig.device.caps.find(0x05) is None
    assert rig.device.caps.find(0x01) == r.PM_CAP_OFFSET


def test_tick_never_goes_backwards(quiet: Rig) -> None:
    dev = quiet.device
    dev.tick(10_000)
    dev.tick(5)
    assert dev.irq.now == 10_000
