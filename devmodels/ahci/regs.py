"""AHCI 1.3.1 register map: HBA (generic host control) and port registers. Constants only.

Rule: names are the specification's mnemonics (AHCI 1.3.1 §3.1 "Generic Host Control",
§3.3 "Port Registers"); bit masks are written in binary or as shifted single bits and
named ``<REGISTER>_<FIELD>``. The ``Reg`` tables that use these constants are built in
``hba.py`` and ``port.py`` (their hooks need the live objects); nothing here has behaviour.
"""

from __future__ import annotations

# -- PCI identity (Intel ICH9 AHCI, 6 ports) ---------------------------------------------
AHCI_VENDOR_ID = 0x8086
AHCI_DEVICE_ID = 0x2922
AHCI_CLASS = 0x01_06_01  # mass storage / SATA / AHCI 1.0 programming interface
AHCI_REVISION = 0x02
AHCI_ABAR_INDEX = 5  # ICH9 decodes the AHCI registers through BAR5 ("ABAR")
AHCI_ABAR_SIZE = 0x1000

MAX_PORTS = 6  # ICH9 has six SATA ports
NUM_SLOTS = 32  # CAP.NCS = 31 (zero-based)

# -- Generic host control (§3.1) ---------------------------------------------------------
CAP = 0x00
GHC = 0x04
IS = 0x08
PI = 0x0C
VS = 0x10
CCC_CTL = 0x14
CCC_PORTS = 0x18
EM_LOC = 0x1C
EM_CTL = 0x20
CAP2 = 0x24
BOHC = 0x28

PORT_BASE = 0x100
PORT_STRIDE = 0x80

# CAP (§3.1.1)
CAP_S64A = 1 << 31  # 64-bit addressing
CAP_SNCQ = 1 << 30  # native command queuing
CAP_SSNTF = 1 << 29
CAP_SMPS = 1 << 28
CAP_SSS = 1 << 27  # staggered spin-up
CAP_SALP = 1 << 26
CAP_SAL = 1 << 25  # activity LED
CAP_SCLO = 1 << 24  # command list override
CAP_ISS_SHIFT = 20  # interface speed support (4 bits)
CAP_SAM = 1 << 18  # AHCI mode only
CAP_SPM = 1 << 17
CAP_FBSS = 1 << 16
CAP_PMD = 1 << 15
CAP_SSC = 1 << 14
CAP_PSC = 1 << 13
CAP_NCS_SHIFT = 8  # number of command slots, zero-based (5 bits)
CAP_CCCS = 1 << 7
CAP_EMS = 1 << 6
CAP_SXS = 1 << 5
CAP_NP_MASK = 0b1_1111  # number of ports, zero-based

# GHC (§3.1.2)
GHC_AE = 1 << 31
GHC_MRSM = 1 << 2
GHC_IE = 1 << 1
GHC_HR = 1 << 0

# VS (§3.1.5): 1.3 is 0001_0300h
VS_1_3 = 0x0001_0300

# BOHC (§3.1.11); only meaningful when CAP2.BOH is set, which this model does not.
BOHC_BB = 1 << 4
BOHC_OOC = 1 << 3
BOHC_SOOE = 1 << 2
BOHC_OOS = 1 << 1
BOHC_BOS = 1 << 0

# -- Port registers (§3.3), offsets inside one port's 0x80 window -------------------------
PxCLB = 0x00
PxCLBU = 0x04
PxFB = 0x08
PxFBU = 0x0C
PxIS = 0x10
PxIE = 0x14
PxCMD = 0x18
PxTFD = 0x20
PxSIG = 0x24
PxSSTS = 0x28
PxSCTL = 0x2C
PxSERR = 0x30
PxSACT = 0x34
PxCI = 0x38
PxSNTF = 0x3C

# PxCLB is 1 KiB aligned, PxFB 256-byte aligned (§3.3.1, §3.3.3)
PxCLB_MASK = 0xFFFF_FC00
PxFB_MASK = 0xFFFF_FF00

# PxIS / PxIE (§3.3.5, §3.3.6)
PxIS_CPDS = 1 << 31
PxIS_TFES = 1 << 30
PxIS_HBFS = 1 << 29
PxIS_HBDS = 1 << 28
PxIS_IFS = 1 << 27
PxIS_INFS = 1 << 26
PxIS_OFS = 1 << 24
PxIS_IPMS = 1 << 23
PxIS_PRCS = 1 << 22
PxIS_DMPS = 1 << 7
PxIS_PCS = 1 << 6
PxIS_DPS = 1 << 5
PxIS_UFS = 1 << 4
PxIS_SDBS = 1 << 3
PxIS_DSS = 1 << 2
PxIS_PSS = 1 << 1
PxIS_DHRS = 1 << 0
# bits the guest clears by writing 1; PCS/PRCS mirror PxSERR and are read-only here
PxIS_W1C = (
    PxIS_TFES | PxIS_HBFS | PxIS_HBDS | PxIS_IFS | PxIS_INFS | PxIS_OFS | PxIS_IPMS
    | PxIS_DMPS | PxIS_DPS | PxIS_UFS | PxIS_SDBS | PxIS_DSS | PxIS_PSS | PxIS_DHRS
)
PxIE_MASK = PxIS_W1C | PxIS_PCS | PxIS_PRCS  # no cold presence detect
# the fatal errors of §6.1.2 stop the port until software clears PxCMD.ST
PxIS_FATAL = PxIS_HBFS | PxIS_HBDS | PxIS_IFS | PxIS_TFES | PxIS_OFS

# PxCMD (§3.3.7)
PxCMD_ICC_SHIFT = 28
PxCMD_ICC_MASK = 0b1111 << 28
PxCMD_ASP = 1 << 27
PxCMD_ALPE = 1 << 26
PxCMD_DLAE = 1 << 25
PxCMD_ATAPI = 1 << 24
PxCMD_APSTE = 1 << 23
PxCMD_FBSCP = 1 << 22
PxCMD_ESP = 1 << 21
PxCMD_CPD = 1 << 20
PxCMD_MPSP = 1 << 19
PxCMD_HPCP = 1 << 18
PxCMD_PMA = 1 << 17
PxCMD_CPS = 1 << 16
PxCMD_CR = 1 << 15
PxCMD_FR = 1 << 14
PxCMD_MPSS = 1 << 13
PxCMD_CCS_SHIFT = 8
PxCMD_CCS_MASK = 0b1_1111 << 8
PxCMD_FRE = 1 << 4
PxCMD_CLO = 1 << 3
PxCMD_POD = 1 << 2
PxCMD_SUD = 1 << 1
PxCMD_ST = 1 << 0
# what the guest may write; CLO and ICC are actions that read back as 0
PxCMD_WRITABLE = PxCMD_ICC_MASK | PxCMD_ATAPI | PxCMD_DLAE | PxCMD_FRE | PxCMD_CLO | PxCMD_SUD | PxCMD_ST

# PxTFD (§3.3.8): ERR in bits 15:8, STS in bits 7:0
PxTFD_RESET = 0x7F

# PxSSTS (§3.3.10)
SSTS_DET_NONE = 0x0
SSTS_DET_PRESENT = 0x1  # device detected, Phy communication not established
SSTS_DET_PHY = 0x3  # device detected and Phy communication established
SSTS_SPD_SHIFT = 4
SSTS_IPM_ACTIVE = 0x1 << 8

# PxSCTL (§3.3.11)
SCTL_DET_MASK = 0b1111
SCTL_DET_COMRESET = 0x1
SCTL_DET_OFFLINE = 0x4
SCTL_SPD_SHIFT = 4
SCTL_WRITABLE = 0x000F_FFFF  # PMP, SPM, IPM, SPD, DET

# PxSERR (§3.3.12): DIAG in 31:16, ERR in 15:0
SERR_DIAG_X = 1 << 26  # exchanged: COMINIT received (mirrored by PxIS.PCS)
SERR_DIAG_N = 1 << 16  # PhyRdy change (mirrored by PxIS.PRCS)
SERR_ERR_E = 1 << 11  # internal error
SERR_ERR_P = 1 << 10  # protocol error

# speeds: ICH9 is a 3.0 Gb/s (Gen2) controller
SPEED_GEN2 = 2

# -- System memory structures (§4.2) ------------------------------------------------------
CMD_HEADER_SIZE = 32
CMD_LIST_SIZE = NUM_SLOTS * CMD_HEADER_SIZE  # 1 KiB
CMD_TABLE_CFIS = 0x00
CMD_TABLE_ACMD = 0x40
CMD_TABLE_PRDT = 0x80
PRDT_ENTRY_SIZE = 16
PRD_DBC_MAX = 1 << 22  # 4 MiB per entry (§4.2.3.3)
RX_FIS_SIZE = 256
RX_FIS_DSFIS = 0x00
RX_FIS_PSFIS = 0x20
RX_FIS_RFIS = 0x40
RX_FIS_SDBFIS = 0x58
RX_FIS_UFIS = 0x60

# command header DW0 (§4.2.2)
CMDH_PRDTL_SHIFT = 16
CMDH_PMP_SHIFT = 12
CMDH_C = 1 << 10  # clear busy upon R_OK
CMDH_B = 1 << 9  # BIST
CMDH_R = 1 << 8  # reset
CMDH_P = 1 << 7  # prefetchable
CMDH_W = 1 << 6  # write (host to device)
CMDH_A = 1 << 5  # ATAPI
CMDH_CFL_MASK = 0b1_1111

__all__ = [name for name in dir() if name[:1].isupper() and not name.startswith("_")]
