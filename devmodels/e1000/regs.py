"""Register map and bit definitions of the Intel 82540EM (8254x SDM ch. 13). Constants only.

Rules:

1. Names are the datasheet mnemonics (``RCTL``, ``TDBAL``, ``ICR_RXT0``); bit masks are
   written in binary with separators where they are short.
2. ``REGISTERS`` is the register table as data: one ``RegSpec`` row per register (offset,
   access kind, implemented mask, reset value). ``device.py`` turns the rows into
   ``devmodels.Reg`` objects and attaches the side-effect hooks; no behaviour lives here.
3. Masks come from the SDM register descriptions; where the SDM is silent they are the
   bits Linux's ``e1000_reg_test`` (``ethtool -t``) expects to read back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._regs import Access

# -- PCI identity (SDM §4.1, Table 4-2; 82540EM desktop) --------------------------------
E1000_VENDOR_ID = 0x8086
E1000_DEV_ID_82540EM = 0x100E
E1000_SUBSYS_VENDOR_ID = 0x8086
E1000_SUBSYS_ID = 0x001E
E1000_CLASS_ETHERNET = 0x020000
BAR0_SIZE = 0x20000  # 128 KiB register window
BAR1_SIZE = 0x40  # 64-byte I/O window: IOADDR / IODATA (SDM §13.2)
PM_CAP_OFFSET = 0xDC  # SDM §4.1.2: the Power Management capability
MSI_CAP_OFFSET = 0xE4  # only offered when asked (82540EM itself has no MSI)

# I/O BAR registers (SDM §13.2.1)
IOADDR = 0x00
IODATA = 0x04

# -- General registers (SDM Table 13-2) -------------------------------------------------
CTRL = 0x0000
STATUS = 0x0008
EECD = 0x0010
EERD = 0x0014
CTRL_EXT = 0x0018
FLA = 0x001C
MDIC = 0x0020
FCAL = 0x0028
FCAH = 0x002C
FCT = 0x0030
VET = 0x0038
ICR = 0x00C0
ITR = 0x00C4
ICS = 0x00C8
IMS = 0x00D0
IMC = 0x00D8
RCTL = 0x0100
FCTTV = 0x0170
TXCW = 0x0178
RXCW = 0x0180
TCTL = 0x0400
TIPG = 0x0410
LEDCTL = 0x0E00
PBA = 0x1000
FCRTL = 0x2160
FCRTH = 0x2168
RDFH = 0x2410
RDFT = 0x2418
RDFHS = 0x2420
RDFTS = 0x2428
RDFPC = 0x2430
RDBAL = 0x2800
RDBAH = 0x2804
RDLEN = 0x2808
RDH = 0x2810
RDT = 0x2818
RDTR = 0x2820
RXDCTL = 0x2828
RADV = 0x282C
RSRPD = 0x2C00
TDFH = 0x3410
TDFT = 0x3418
TDFHS = 0x3420
TDFTS = 0x3428
TDFPC = 0x3430
TDBAL = 0x3800
TDBAH = 0x3804
TDLEN = 0x3808
TDH = 0x3810
TDT = 0x3818
TIDV = 0x3820
TXDCTL = 0x3828
TADV = 0x382C
TSPMT = 0x3830
RXCSUM = 0x5000
MTA = 0x5200  # 128 dwords
RAL0 = 0x5400  # RAL[n] = 0x5400 + 8n, RAH[n] = 0x5404 + 8n, n < 16
VFTA = 0x5600  # 128 dwords
WUC = 0x5800
WUFC = 0x5808
WUS = 0x5810
MANC = 0x5820
IPAV = 0x5838
IP4AT = 0x5840
IP6AT = 0x5880
WUPL = 0x5900
WUPM = 0x5A00
FFLT = 0x5F00
FFMT = 0x9000
FFVT = 0x9800

NUM_RAR = 16
NUM_MTA = 128
NUM_VFTA = 128

# -- Statistics (SDM §13.7; all read-to-clear) ----------------------------------------
STATS_32 = {
    "CRCERRS": 0x4000, "ALGNERRC": 0x4004, "SYMERRS": 0x4008, "RXERRC": 0x400C,
    "MPC": 0x4010, "SCC": 0x4014, "ECOL": 0x4018, "MCC": 0x401C, "LATECOL": 0x4020,
    "COLC": 0x4028, "DC": 0x4030, "TNCRS": 0x4034, "SEC": 0x4038, "CEXTERR": 0x403C,
    "RLEC": 0x4040, "XONRXC": 0x4048, "XONTXC": 0x404C, "XOFFRXC": 0x4050,
    "XOFFTXC": 0x4054, "FCRUC": 0x4058, "PRC64": 0x405C, "PRC127": 0x4060,
    "PRC255": 0x4064, "PRC511": 0x4068, "PRC1023": 0x406C, "PRC1522": 0x4070,
    "GPRC": 0x4074, "BPRC": 0x4078, "MPRC": 0x407C, "GPTC": 0x4080, "RNBC": 0x40A0,
    "RUC": 0x40A4, "RFC": 0x40A8, "ROC": 0x40AC, "RJC": 0x40B0, "MGTPRC": 0x40B4,
    "MGTPDC": 0x40B8, "MGTPTC": 0x40BC, "TPR": 0x40D0, "TPT": 0x40D4,
    "PTC64": 0x40D8, "PTC127": 0x40DC, "PTC255": 0x40E0, "PTC511": 0x40E4,
    "PTC1023": 0x40E8, "PTC1522": 0x40EC, "MPTC": 0x40F0, "BPTC": 0x40F4,
    "TSCTC": 0x40F8, "TSCTFC": 0x40FC,
}  # fmt: skip
# 64-bit counters as (low, high) halves; reading the high half clears both (SDM §13.7).
STATS_64 = {
    "GORC": (0x4088, 0x408C),
    "GOTC": (0x4090, 0x4094),
    "TOR": (0x40C0, 0x40C4),
    "TOT": (0x40C8, 0x40CC),
}

# -- CTRL (SDM §13.4.1) -----------------------------------------------------------------
CTRL_FD = 1 << 0
CTRL_LRST = 1 << 3
CTRL_ASDE = 1 << 5
CTRL_SLU = 1 << 6
CTRL_ILOS = 1 << 7
CTRL_SPD_1000 = 0b10 << 8
CTRL_FRCSPD = 1 << 11
CTRL_FRCDPX = 1 << 12
CTRL_RST = 1 << 26
CTRL_RFCE = 1 << 27
CTRL_TFCE = 1 << 28
CTRL_VME = 1 << 30
CTRL_PHY_RST = 1 << 31
CTRL_MASK = 0xDCFC_1BE9  # implemented bits of Table 13-3

# -- STATUS (SDM §13.4.2) ---------------------------------------------------------------
STATUS_FD = 1 << 0
STATUS_LU = 1 << 1
STATUS_TXOFF = 1 << 4
STATUS_SPEED_1000 = 0b10 << 6
STATUS_ASDV_1000 = 0b10 << 8

# -- EECD / EERD (SDM §13.4.3-4, §5.3) --------------------------------------------------
EECD_SK = 1 << 0
EECD_CS = 1 << 1
EECD_DI = 1 << 2
EECD_DO = 1 << 3
EECD_FWE_MASK = 0b11 << 4
EECD_REQ = 1 << 6
EECD_GNT = 1 << 7
EECD_PRES = 1 << 8
EECD_SIZE = 1 << 9  # 0: 64-word (1 Kbit) Microwire part, as on the 82540EM
EERD_START = 1 << 0
EERD_DONE = 1 << 4
EERD_ADDR_SHIFT = 8
EERD_DATA_SHIFT = 16

# -- MDIC (SDM §13.4.7) -----------------------------------------------------------------
MDIC_DATA_MASK = 0xFFFF
MDIC_REG_SHIFT = 16
MDIC_PHY_SHIFT = 21
MDIC_OP_WRITE = 0b01 << 26
MDIC_OP_READ = 0b10 << 26
MDIC_READY = 1 << 28
MDIC_INT_EN = 1 << 29
MDIC_ERROR = 1 << 30
PHY_ADDRESS = 1  # the internal PHY answers at MDIO address 1

# -- Interrupt cause bits (SDM §13.4.17, Table 13-67) ----------------------------------
ICR_TXDW = 1 << 0
ICR_TXQE = 1 << 1
ICR_LSC = 1 << 2
ICR_RXSEQ = 1 << 3
ICR_RXDMT0 = 1 << 4
ICR_RXO = 1 << 6
ICR_RXT0 = 1 << 7
ICR_MDAC = 1 << 9
ICR_RXCFG = 1 << 10
ICR_GPI_SDP6 = 1 << 13
ICR_GPI_SDP7 = 1 << 14
ICR_TXD_LOW = 1 << 15
ICR_SRPD = 1 << 16
ICR_MASK = 0x0001_FFFF

# -- RCTL (SDM §13.4.22) ----------------------------------------------------------------
RCTL_EN = 1 << 1
RCTL_SBP = 1 << 2
RCTL_UPE = 1 << 3
RCTL_MPE = 1 << 4
RCTL_LPE = 1 << 5
RCTL_LBM_MASK = 0b11 << 6
RCTL_LBM_MAC = 0b01 << 6
RCTL_RDMTS_SHIFT = 8
RCTL_MO_SHIFT = 12
RCTL_BAM = 1 << 15
RCTL_BSIZE_SHIFT = 16
RCTL_VFE = 1 << 18
RCTL_CFIEN = 1 << 19
RCTL_CFI = 1 << 20
RCTL_DPF = 1 << 22
RCTL_PMCF = 1 << 23
RCTL_BSEX = 1 << 25
RCTL_SECRC = 1 << 26
RCTL_MASK = 0x06DF_B3FE

# -- TCTL (SDM §13.4.33) ----------------------------------------------------------------
TCTL_EN = 1 << 1
TCTL_PSP = 1 << 3
TCTL_MASK = 0x037F_FFFA  # EN, PSP, CT, COLD, SWXOFF, RTLC, NRTU

RDTR_FPD = 1 << 31  # flush partial descriptor block (write-only)
RAH_AV = 1 << 31
RAH_MASK = 0x8003_FFFF
RXCSUM_PCSS_MASK = 0xFF
RXCSUM_IPOFL = 1 << 8
RXCSUM_TUOFL = 1 << 9
RXDCTL_RESET = 0x0001_0000  # GRAN = 1 (SDM §13.4.29)
TXDCTL_RESET = 0x0000_0000
MANC_ARP_EN = 1 << 13

# -- Descriptors (SDM ch. 3) ------------------------------------------------------------
DESC_SIZE = 16
# Receive status / errors (SDM §3.2.3.1-2)
RXD_STAT_DD = 1 << 0
RXD_STAT_EOP = 1 << 1
RXD_STAT_IXSM = 1 << 2
RXD_STAT_VP = 1 << 3
RXD_STAT_TCPCS = 1 << 5
RXD_STAT_IPCS = 1 << 6
RXD_STAT_PIF = 1 << 7
RXD_ERR_CE = 1 << 0
RXD_ERR_SE = 1 << 1
RXD_ERR_SEQ = 1 << 2
RXD_ERR_CXE = 1 << 4
RXD_ERR_TCPE = 1 << 5
RXD_ERR_IPE = 1 << 6
RXD_ERR_RXE = 1 << 7
# Transmit command (legacy CMD / extended DCMD, SDM §3.3.3.1, §3.3.7.1)
TXD_CMD_EOP = 1 << 0
TXD_CMD_IFCS = 1 << 1
TXD_CMD_IC = 1 << 2  # legacy: insert checksum
TXD_CMD_TSE = 1 << 2  # extended data: TCP segmentation
TXD_CMD_RS = 1 << 3
TXD_CMD_RPS = 1 << 4
TXD_CMD_DEXT = 1 << 5
TXD_CMD_VLE = 1 << 6
TXD_CMD_IDE = 1 << 7
TXD_STAT_DD = 1 << 0
TXD_DTYP_CONTEXT = 0b0000
TXD_DTYP_DATA = 0b0001
# Context TUCMD (SDM §3.3.6.1)
TUCMD_TCP = 1 << 0
TUCMD_IP = 1 << 1
TUCMD_TSE = 1 << 2
# Data POPTS (SDM §3.3.7.3)
POPTS_IXSM = 1 << 0
POPTS_TXSM = 1 << 1

# -- Frame limits -----------------------------------------------------------------------
ETH_ZLEN = 60  # minimum frame without FCS
ETH_FCS_LEN = 4
MAX_STD_FRAME = 1518  # with FCS, untagged; +4 when VLAN tagged (SDM §3.2.2 LPE)
MAX_LPE_FRAME = 16384
MAX_TX_PACKET = 0x10000 + 256  # bounded assembly: 64 KiB payload + headers (TSO)


@dataclass(frozen=True)
class RegSpec:
    """One register row before hooks are attached."""

    name: str
    offset: int
    access: Access = Access.RW
    mask: int = 0xFFFF_FFFF
    reset: int = 0


def _rw(name: str, offset: int, mask: int = 0xFFFF_FFFF, reset: int = 0) -> RegSpec:
    return RegSpec(name, offset, Access.RW, mask, reset)


REGISTERS: tuple[RegSpec, ...] = (
    _rw("CTRL", CTRL, CTRL_MASK, CTRL_SLU | CTRL_SPD_1000 | CTRL_FD),
    RegSpec("STATUS", STATUS, Access.RO, 0xFFFF_FFFF, 0),
    _rw("EECD", EECD, EECD_SK | EECD_CS | EECD_DI | EECD_FWE_MASK | EECD_REQ, EECD_PRES),
    _rw("EERD", EERD, 0x0000_FF01),
    _rw("CTRL_EXT", CTRL_EXT, 0x00FF_FFFF),
    _rw("FLA", FLA, 0),
    _rw("MDIC", MDIC, 0x3FFF_FFFF),
    _rw("FCAL", FCAL),
    _rw("FCAH", FCAH, 0xFFFF),
    _rw("FCT", FCT, 0xFFFF),
    _rw("VET", VET, 0xFFFF, 0x8100),
    RegSpec("ICR", ICR, Access.RC_W1C, ICR_MASK, 0),  # SDM §13.4.17: read clears, writing 1 clears
    _rw("ITR", ITR, 0xFFFF),
    RegSpec("ICS", ICS, Access.WO, ICR_MASK, 0),
    RegSpec("IMS", IMS, Access.W1S, ICR_MASK, 0),  # SDM §13.4.20: writing 1 sets; IMC clears
    RegSpec("IMC", IMC, Access.WO, ICR_MASK, 0),
    _rw("RCTL", RCTL, RCTL_MASK),
    _rw("FCTTV", FCTTV, 0xFFFF),
    _rw("TXCW", TXCW, 0xC000_FFFF),
    RegSpec("RXCW", RXCW, Access.RO, 0xFFFF_FFFF, 0),
    _rw("TCTL", TCTL, TCTL_MASK, TCTL_PSP | (0x0F << 4) | (0x40 << 12)),
    _rw("TIPG", TIPG, 0x3FFF_FFFF),
    _rw("LEDCTL", LEDCTL),
    _rw("PBA", PBA, 0xFFFF, 0x0030),
    _rw("FCRTL", FCRTL, 0x8000_FFF8),
    _rw("FCRTH", FCRTH, 0xFFF8),
    _rw("RDFH", RDFH, 0x1FFF),
    _rw("RDFT", RDFT, 0x1FFF),
    _rw("RDFHS", RDFHS, 0x1FFF),
    _rw("RDFTS", RDFTS, 0x1FFF),
    _rw("RDFPC", RDFPC, 0x1FFF),
    _rw("RDBAL", RDBAL, 0xFFFF_FFF0),
    _rw("RDBAH", RDBAH),
    _rw("RDLEN", RDLEN, 0x000F_FF80),
    _rw("RDH", RDH, 0xFFFF),
    _rw("RDT", RDT, 0xFFFF),
    _rw("RDTR", RDTR, 0xFFFF | RDTR_FPD),
    _rw("RXDCTL", RXDCTL, 0x01FF_3F3F, RXDCTL_RESET),
    _rw("RADV", RADV, 0xFFFF),
    _rw("RSRPD", RSRPD, 0xFFF),
    _rw("TDFH", TDFH, 0x1FFF),
    _rw("TDFT", TDFT, 0x1FFF),
    _rw("TDFHS", TDFHS, 0x1FFF),
    _rw("TDFTS", TDFTS, 0x1FFF),
    _rw("TDFPC", TDFPC, 0x1FFF),
    _rw("TDBAL", TDBAL, 0xFFFF_FFF0),
    _rw("TDBAH", TDBAH),
    _rw("TDLEN", TDLEN, 0x000F_FF80),
    _rw("TDH", TDH, 0xFFFF),
    _rw("TDT", TDT, 0xFFFF),
    _rw("TIDV", TIDV, 0xFFFF),
    _rw("TXDCTL", TXDCTL, 0x01FF_3F3F, TXDCTL_RESET),
    _rw("TADV", TADV, 0xFFFF),
    _rw("TSPMT", TSPMT, 0xFFFF_FFFF, 0x0100_0400),
    _rw("RXCSUM", RXCSUM, RXCSUM_PCSS_MASK | RXCSUM_IPOFL | RXCSUM_TUOFL),
    _rw("WUC", WUC, 0x0000_000F),
    _rw("WUFC", WUFC, 0x000F_00FF),
    RegSpec("WUS", WUS, Access.W1C, 0x000F_00FF, 0),
    _rw("MANC", MANC, 0x00FF_FFFF),
    _rw("IPAV", IPAV, 0x0001_0001),
    _rw("WUPL", WUPL, 0xFFF),
    *(_rw(f"RAL[{i}]", RAL0 + 8 * i) for i in range(NUM_RAR)),
    *(_rw(f"RAH[{i}]", RAL0 + 8 * i + 4, RAH_MASK) for i in range(NUM_RAR)),
    *(_rw(f"MTA[{i}]", MTA + 4 * i) for i in range(NUM_MTA)),
    *(_rw(f"VFTA[{i}]", VFTA + 4 * i) for i in range(NUM_VFTA)),
    *(_rw(f"IP4AT[{i}]", IP4AT + 8 * i) for i in range(4)),
    *(_rw(f"IP6AT[{i}]", IP6AT + 4 * i) for i in range(4)),
    *(RegSpec(name, offset, Access.RC) for name, offset in STATS_32.items()),
    *(RegSpec(f"{name}L", pair[0], Access.RO) for name, pair in STATS_64.items()),
    *(RegSpec(f"{name}H", pair[1], Access.RC) for name, pair in STATS_64.items()),
)
"""The register table (rule 2)."""

__all__ = [name for name in dir() if name.isupper() or name in ("RegSpec",)]
