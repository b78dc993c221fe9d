"""The 88E1011-compatible PHY behind MDIC (SDM ch. 8, §13.4.7; IEEE 802.3 clause 22)."""

from __future__ import annotations

from devmodels.e1000 import M88Phy
from devmodels.e1000 import regs as r
from devmodels.e1000.phy import (
    M88_PHY_SPEC_STATUS,
    M88E1011_I_PHY_ID,
    MII_CR_LOOPBACK,
    MII_CR_POWER_DOWN,
    MII_CR_RESET,
    MII_CR_RESTART_AUTO_NEG,
    MII_SR_AUTONEG_COMPLETE,
    MII_SR_LINK_STATUS,
    PHY_1000T_STATUS,
    PHY_CTRL,
    PHY_ID1,
    PHY_ID2,
    PHY_LP_ABILITY,
    PHY_STATUS,
)

from .conftest import Rig


def test_identity_matches_linux_m88e1011() -> None:
    phy = M88Phy()
    assert (phy.read(PHY_ID1) << 16 | phy.read(PHY_ID2)) & 0xFFFF_FFF0 == M88E1011_I_PHY_ID


def test_link_and_autoneg_complete() -> None:
    phy = M88Phy()
    status = phy.read(PHY_STATUS)
    assert status & MII_SR_LINK_STATUS and status & MII_SR_AUTONEG_COMPLETE
    assert phy.read(PHY_LP_ABILITY) and phy.read(PHY_1000T_STATUS)
    assert phy.read(M88_PHY_SPEC_STATUS) >> 14 == 0b10  # 1000 Mb/s


def test_link_status_latches_low_ieee_22_2_4_2_13() -> None:
    phy = M88Phy()
    phy.set_cable(False)
    phy.set_cable(True)
    assert not phy.read(PHY_STATUS) & MII_SR_LINK_STATUS  # the drop is still visible
    assert phy.read(PHY_STATUS) & MII_SR_LINK_STATUS


def test_reset_and_restart_self_clear() -> None:
    phy = M88Phy()
    phy.write(PHY_CTRL, phy.read(PHY_CTRL) | MII_CR_RESET)
    assert not phy.read(PHY_CTRL) & MII_CR_RESET
    phy.write(PHY_CTRL, phy.read(PHY_CTRL) | MII_CR_RESTART_AUTO_NEG)
    assert not phy.read(PHY_CTRL) & MII_CR_RESTART_AUTO_NEG
    assert phy.link_up


def test_read_only_registers_ignore_writes() -> None:
    phy = M88Phy()
    phy.write(PHY_ID1, 0x1234)
    phy.write(PHY_STATUS, 0)
    assert phy.read(PHY_ID1) == M88E1011_I_PHY_ID >> 16
    assert phy.read(PHY_STATUS) & MII_SR_LINK_STATUS


def test_loopback_bit() -> None:
    phy = M88Phy()
    phy.write(PHY_CTRL, phy.read(PHY_CTRL) | MII_CR_LOOPBACK)
    assert phy.loopback


def _mdic(rig: Rig, value: int) -> int:
    rig.device.bar_write(0, r.MDIC, 4, value)
    return rig.device.bar_read(0, r.MDIC, 4)


def test_mdic_read_write(rig: Rig) -> None:
    mdic = _mdic(rig, PHY_ID1 << 16 | 1 << 21 | r.MDIC_OP_READ)
    assert mdic & r.MDIC_READY and not mdic & r.MDIC_ERROR
    assert mdic & 0xFFFF == 0x0141
    _mdic(rig, 0x0DE1 | 4 << 16 | 1 << 21 | r.MDIC_OP_WRITE)
    assert _mdic(rig, 4 << 16 | 1 << 21 | r.MDIC_OP_READ) & 0xFFFF == 0x0DE1


def test_mdic_wrong_phy_address_sets_error_spec_13_4_7(rig: Rig) -> None:
    mdic = _mdic(rig, PHY_ID1 << 16 | 2 << 21 | r.MDIC_OP_READ)
    assert mdic & r.MDIC_READY and mdic & r.MDIC_ERROR
    mdic = _mdic(rig, PHY_ID1 << 16 | 1 << 21 | 0b11 << 26)  # reserved opcode
    assert mdic & r.MDIC_ERROR


def test_mdic_interrupt_enable_raises_mdac(rig: Rig) -> None:
    rig.device.bar_read(0, r.ICR, 4)
    _mdic(rig, PHY_ID1 << 16 | 1 << 21 | r.MDIC_OP_READ | r.MDIC_INT_EN)
    assert rig.device.bar_read(0, r.ICR, 4) & r.ICR_MDAC


def test_power_down_drops_link_and_raises_lsc(up: Rig) -> None:
    dev, drv = up.device, up.driver
    drv.er32(r.ICR)
    drv.write_phy(PHY_CTRL, drv.read_phy(PHY_CTRL) | MII_CR_POWER_DOWN)
    assert not drv.er32(r.STATUS) & r.STATUS_LU
    assert drv.er32(r.ICR) & r.ICR_LSC
    drv.write_phy(PHY_CTRL, drv.read_phy(PHY_CTRL) & ~MII_CR_POWER_DOWN)
    assert dev.link_up
    assert drv.er32(r.ICR) & r.ICR_LSC
