"""HBA and port register groups (AHCI 1.3.1 §3.1, §3.3), driven through ABAR accesses."""

from __future__ import annotations

import pytest

from devmodels.ahci import TaskFile
from devmodels.ahci import regs as r
from devmodels.ahci import defs as d
from tests.unit.devmodels.ahci.doubles import Rig


def port_reg(port: int, offset: int) -> int:
    return r.PORT_BASE + port * r.PORT_STRIDE + offset


@pytest.fixture
def rig() -> Rig:
    return Rig(start=False)


class TestGenericHostControl:
    def test_cap_advertises_the_configured_features(self, rig: Rig) -> None:
        cap = rig.hba.read(r.CAP, 4)
        for bit in (r.CAP_S64A, r.CAP_SNCQ, r.CAP_SSS, r.CAP_SAL, r.CAP_SCLO, r.CAP_SAM):
            assert cap & bit
        assert (cap >> r.CAP_NCS_SHIFT) & 0x1F == 31
        assert cap & r.CAP_NP_MASK == 1  # two ports, zero-based
        assert not cap & (r.CAP_CCCS | r.CAP_EMS | r.CAP_SPM | r.CAP_FBSS)

    def test_pi_vs_cap2_bohc(self, rig: Rig) -> None:
        assert rig.hba.read(r.PI, 4) == 0b11
        assert rig.hba.read(r.VS, 4) == 0x0001_0300
        assert rig.hba.read(r.CAP2, 4) == 0
        assert rig.hba.read(r.BOHC, 4) == 0

    def test_read_only_registers_ignore_writes(self, rig: Rig) -> None:
        for offset in (r.CAP, r.PI, r.VS, r.CAP2, r.BOHC, r.CCC_CTL):
            before = rig.hba.read(offset, 4)
            rig.hba.write(offset, 4, 0xFFFF_FFFF ^ before)
            assert rig.hba.read(offset, 4) == before

    def test_ghc_ae_is_read_only_one_with_sam(self, rig: Rig) -> None:
        assert rig.hba.read(r.GHC, 4) & r.GHC_AE
        rig.hba.write(r.GHC, 4, 0)
        assert rig.hba.read(r.GHC, 4) == r.GHC_AE

    def test_ghc_ie_is_writable(self, rig: Rig) -> None:
        rig.hba.write(r.GHC, 4, r.GHC_AE | r.GHC_IE)
        assert rig.hba.read(r.GHC, 4) == r.GHC_AE | r.GHC_IE

    def test_spec_10_4_3_hba_reset_clears_ie_is_and_port_state(self, rig: Rig) -> None:
        drv = rig.driver
        drv.reset_hba()
        drv.start_port(0)
        clb = drv.preg(0, r.PxCLB)
        rig.hba.write(port_reg(0, r.PxIE), 4, 0xFFFF_FFFF)
        rig.hba.write(r.GHC, 4, r.GHC_AE | r.GHC_HR)
        assert rig.hba.read(r.GHC, 4) == r.GHC_AE  # idle: the reset completes at once
        assert drv.preg(0, r.PxIE) == 0
        assert drv.preg(0, r.PxCMD) == r.PxCMD_POD
        assert drv.preg(0, r.PxCLB) == clb  # PxCLB/PxFB survive (§10.4.3)
        assert drv.preg(0, r.PxSSTS) == 0  # staggered spin-up: SUD is clear again
        assert drv.preg(0, r.PxSIG) == 0xFFFF_FFFF

    def test_is_is_write_one_to_clear_and_relatches_pending_ports(self, rig: Rig) -> None:
        drv = rig.driver
        drv.reset_hba()
        drv.start_port(0)
        drv.identify(0)  # leaves PxIS clear (the driver collects)
        drv.prepare(0, 0, TaskFile(command=d.ATA_CMD_CHK_POWER))
        drv.issue(0, 1)
        assert rig.hba.read(r.IS, 4) == 0b01
        rig.hba.write(r.IS, 4, 0b01)
        assert rig.hba.read(r.IS, 4) == 0b01  # PxIS.DHRS still pending and enabled
        rig.hba.write(port_reg(0, r.PxIS), 4, 0xFFFF_FFFF)
        rig.hba.write(r.IS, 4, 0b01)
        assert rig.hba.read(r.IS, 4) == 0

    def test_unimplemented_offsets_read_zero(self, rig: Rig) -> None:
        assert rig.hba.read(0x2C, 4) == 0
        assert rig.hba.read(0xA0, 4) == 0
        assert rig.hba.read(port_reg(0, 0x1C), 4) == 0
        assert rig.hba.read(port_reg(0, 0x70), 4) == 0
        assert rig.hba.read(r.PORT_BASE + 5 * r.PORT_STRIDE, 4) == 0  # port 5 not implemented
        rig.hba.write(r.PORT_BASE + 5 * r.PORT_STRIDE + r.PxCMD, 4, 1)  # dropped

    def test_64bit_access_is_split_into_dwords(self, rig: Rig) -> None:
        rig.hba.write(port_reg(0, r.PxCLB), 8, 0x1234_5678_0000_0400)
        assert rig.hba.read(port_reg(0, r.PxCLB), 4) == 0x400
        assert rig.hba.read(port_reg(0, r.PxCLBU), 4) == 0x1234_5678
        assert rig.hba.read(port_reg(0, r.PxCLB), 8) == 0x1234_5678_0000_0400
        assert rig.hba.read(r.CAP, 8) == rig.hba.read(r.CAP, 4) | rig.hba.read(r.GHC, 4) << 32


class TestPortRegisters:
    def test_reset_values(self, rig: Rig) -> None:
        read = lambda off: rig.hba.read(port_reg(0, off), 4)  # noqa: E731
        assert read(r.PxCMD) == r.PxCMD_POD
        assert read(r.PxTFD) == 0x7F
        assert read(r.PxSIG) == 0xFFFF_FFFF
        assert read(r.PxSSTS) == 0
        assert read(r.PxCI) == read(r.PxSACT) == read(r.PxIS) == read(r.PxIE) == 0

    def test_clb_and_fb_alignment_masks(self, rig: Rig) -> None:
        rig.hba.write(port_reg(0, r.PxCLB), 4, 0xFFFF_FFFF)
        rig.hba.write(port_reg(0, r.PxFB), 4, 0xFFFF_FFFF)
        assert rig.hba.read(port_reg(0, r.PxCLB), 4) == 0xFFFF_FC00
        assert rig.hba.read(port_reg(0, r.PxFB), 4) == 0xFFFF_FF00

    def test_pxie_implements_only_defined_bits(self, rig: Rig) -> None:
        rig.hba.write(port_reg(0, r.PxIE), 4, 0xFFFF_FFFF)
        assert rig.hba.read(port_reg(0, r.PxIE), 4) == r.PxIE_MASK

    def test_fre_sets_fr_and_st_sets_cr(self, rig: Rig) -> None:
        cmd = port_reg(0, r.PxCMD)
        rig.hba.write(cmd, 4, r.PxCMD_FRE)
        assert rig.hba.read(cmd, 4) & (r.PxCMD_FRE | r.PxCMD_FR) == r.PxCMD_FRE | r.PxCMD_FR
        rig.hba.write(cmd, 4, r.PxCMD_FRE | r.PxCMD_ST)
        assert rig.hba.read(cmd, 4) & r.PxCMD_CR
        rig.hba.write(cmd, 4, 0)
        assert not rig.hba.read(cmd, 4) & (r.PxCMD_CR | r.PxCMD_FR)

    def test_icc_and_clo_read_back_zero(self, rig: Rig) -> None:
        cmd = port_reg(0, r.PxCMD)
        rig.hba.write(cmd, 4, 1 << r.PxCMD_ICC_SHIFT | r.PxCMD_CLO)
        assert not rig.hba.read(cmd, 4) & (r.PxCMD_ICC_MASK | r.PxCMD_CLO)

    def test_clo_clears_bsy_and_drq(self, rig: Rig) -> None:
        rig.driver.reset_hba()
        rig.driver.start_port(0)
        rig.driver.stop_engine(0)
        port = rig.hba.ports[0]
        port.regs["PxTFD"] = 0x01_D8
        rig.hba.write(port_reg(0, r.PxCMD), 4, rig.hba.read(port_reg(0, r.PxCMD), 4) | r.PxCMD_CLO)
        assert rig.hba.read(port_reg(0, r.PxTFD), 4) == 0x01_50

    def test_pxci_and_pxsact_ignore_writes_while_stopped(self, rig: Rig) -> None:
        rig.hba.write(port_reg(0, r.PxCI), 4, 0xFFFF_FFFF)
        rig.hba.write(port_reg(0, r.PxSACT), 4, 0xFFFF_FFFF)
        assert rig.hba.read(port_reg(0, r.PxCI), 4) == 0
        assert rig.hba.read(port_reg(0, r.PxSACT), 4) == 0

    def test_spec_3_3_7_link_waits_for_spin_up(self, rig: Rig) -> None:
        assert rig.hba.read(port_reg(0, r.PxSSTS), 4) == 0
        rig.hba.write(port_reg(0, r.PxCMD), 4, r.PxCMD_SUD)
        assert rig.hba.read(port_reg(0, r.PxSSTS), 4) == 0x123  # active, Gen2, Phy up
        assert rig.hba.read(port_reg(0, r.PxSIG), 4) == 0x0000_0101
        assert rig.hba.read(port_reg(0, r.PxTFD), 4) == 0x01_50

    def test_spec_3_3_11_comreset_through_det(self, rig: Rig) -> None:
        sctl = port_reg(1, r.PxSCTL)
        rig.hba.write(port_reg(1, r.PxCMD), 4, r.PxCMD_SUD)
        rig.hba.write(sctl, 4, 0x301)
        assert rig.hba.read(port_reg(1, r.PxSSTS), 4) & 0xF == r.SSTS_DET_PRESENT
        assert rig.hba.read(port_reg(1, r.PxTFD), 4) & d.ATA_BUSY
        rig.hba.write(sctl, 4, 0x300)
        assert rig.hba.read(port_reg(1, r.PxSSTS), 4) == 0x123
        assert rig.hba.read(port_reg(1, r.PxSIG), 4) == 0xEB14_0101  # ATAPI signature
        assert rig.hba.read(port_reg(1, r.PxTFD), 4) & d.ATA_BUSY == 0

    def test_sctl_spd_limits_the_negotiated_speed(self, rig: Rig) -> None:
        rig.hba.write(port_reg(0, r.PxCMD), 4, r.PxCMD_SUD)
        rig.hba.write(port_reg(0, r.PxSCTL), 4, 0x311)
        rig.hba.write(port_reg(0, r.PxSCTL), 4, 0x310)
        assert rig.hba.read(port_reg(0, r.PxSSTS), 4) == 0x113

    def test_det_offline_takes_the_link_down(self, rig: Rig) -> None:
        rig.hba.write(port_reg(0, r.PxCMD), 4, r.PxCMD_SUD)
        rig.hba.write(port_reg(0, r.PxSCTL), 4, 0x304)
        assert rig.hba.read(port_reg(0, r.PxSSTS), 4) == r.SCTL_DET_OFFLINE
        rig.hba.write(port_reg(0, r.PxSCTL), 4, 0x300)
        assert rig.hba.read(port_reg(0, r.PxSSTS), 4) == 0x123

    def test_comreset_sets_serr_x_and_n_mirrored_in_pxis(self, rig: Rig) -> None:
        rig.hba.write(port_reg(0, r.PxCMD), 4, r.PxCMD_SUD)
        serr = rig.hba.read(port_reg(0, r.PxSERR), 4)
        assert serr & (r.SERR_DIAG_X | r.SERR_DIAG_N) == r.SERR_DIAG_X | r.SERR_DIAG_N
        pxis = rig.hba.read(port_reg(0, r.PxIS), 4)
        assert pxis & (r.PxIS_PCS | r.PxIS_PRCS) == r.PxIS_PCS | r.PxIS_PRCS
        rig.hba.write(port_reg(0, r.PxIS), 4, 0xFFFF_FFFF)  # PCS/PRCS are not W1C in PxIS
        assert rig.hba.read(port_reg(0, r.PxIS), 4) & r.PxIS_PCS
        rig.hba.write(port_reg(0, r.PxSERR), 4, serr)  # clearing PxSERR clears them
        assert rig.hba.read(port_reg(0, r.PxIS), 4) == 0

    def test_no_drive_means_no_link(self) -> None:
        rig = Rig(ports=3, start=False)
        rig.hba.write(port_reg(2, r.PxCMD), 4, r.PxCMD_SUD)
        rig.hba.write(port_reg(2, r.PxSCTL), 4, 0x301)
        rig.hba.write(port_reg(2, r.PxSCTL), 4, 0x300)
        assert rig.hba.read(port_reg(2, r.PxSSTS), 4) == 0
        assert rig.hba.read(port_reg(2, r.PxSIG), 4) == 0xFFFF_FFFF

    def test_byte_access_to_a_port_register(self, rig: Rig) -> None:
        rig.hba.write(port_reg(0, r.PxIE) + 1, 1, 0xFF)
        assert rig.hba.read(port_reg(0, r.PxIE), 4) == 0xFF00 & r.PxIE_MASK
        assert rig.hba.read(port_reg(0, r.PxIE) + 1, 1) == (0xFF00 & r.PxIE_MASK) >> 8
