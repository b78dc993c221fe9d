"""The 82540EM's internal copper PHY, an 88E1011-compatible part at MDIO address 1 (SDM ch. 8).

Rules:

1. The PHY is a table of 32 sixteen-bit registers reached only through MDIC
   (``mdic_access``). Registers 0–15 follow IEEE 802.3 clause 22; 16–30 are the Marvell
   specific ones Linux's e1000 touches (PSCR, PSSR, EPSCR, page select, general control).
   Unlisted registers read 0 and ignore writes.
2. Link: the PHY has link when the host says the cable is connected, it is not powered
   down, and (with auto-negotiation enabled) negotiation has completed. Negotiation
   completes at once against an ideal 1000BASE-T full-duplex partner; no clock is needed.
3. BMCR.RESET and BMCR.RESTART_AN self-clear. BMSR.LINK_STATUS is latched low (IEEE 802.3
   22.2.4.2.13): a link drop stays visible until BMSR is read.
4. BMCR.LOOPBACK turns the PHY into a loopback: the device feeds transmitted frames back
   to its receiver instead of the backend (used by ``ethtool -t``).
"""

from __future__ import annotations

from .._errors import SnapshotError
from .._state import check_bool, check_int
from .._trace import tracepoint
from . import regs as r

__all__ = [
    "M88Phy",
    "PHY_CTRL",
    "PHY_STATUS",
    "PHY_ID1",
    "PHY_ID2",
    "PHY_AUTONEG_ADV",
    "PHY_LP_ABILITY",
    "PHY_1000T_CTRL",
    "PHY_1000T_STATUS",
    "M88_PHY_SPEC_CTRL",
    "M88_PHY_SPEC_STATUS",
    "M88E1011_I_PHY_ID",
    "MII_CR_RESET",
    "MII_CR_LOOPBACK",
    "MII_CR_AUTO_NEG_EN",
    "MII_CR_POWER_DOWN",
    "MII_CR_RESTART_AUTO_NEG",
    "MII_SR_LINK_STATUS",
    "MII_SR_AUTONEG_COMPLETE",
]

_tp_mdic = tracepoint("e1000.mdic")

# Register numbers
PHY_CTRL = 0
PHY_STATUS = 1
PHY_ID1 = 2
PHY_ID2 = 3
PHY_AUTONEG_ADV = 4
PHY_LP_ABILITY = 5
PHY_AUTONEG_EXP = 6
PHY_NEXT_PAGE_TX = 7
PHY_LP_NEXT_PAGE = 8
PHY_1000T_CTRL = 9
PHY_1000T_STATUS = 10
PHY_EXT_STATUS = 15
M88_PHY_SPEC_CTRL = 16
M88_PHY_SPEC_STATUS = 17
M88_INT_ENABLE = 18
M88_INT_STATUS = 19
M88_EXT_PHY_SPEC_CTRL = 20
M88_RX_ERR_CNTR = 21
M88_LED_CTRL = 24
M88_PHY_PAGE_SELECT = 29
M88_PHY_GEN_CONTROL = 30

M88E1011_I_PHY_ID = 0x0141_0C20  # OUI 0x005043, model 0x02 (Linux e1000_hw.h)
PHY_REVISION = 0

# BMCR (IEEE 802.3 22.2.4.1)
MII_CR_SPEED_1000 = 1 << 6
MII_CR_FULL_DUPLEX = 1 << 8
MII_CR_RESTART_AUTO_NEG = 1 << 9
MII_CR_ISOLATE = 1 << 10
MII_CR_POWER_DOWN = 1 << 11
MII_CR_AUTO_NEG_EN = 1 << 12
MII_CR_SPEED_100 = 1 << 13
MII_CR_LOOPBACK = 1 << 14
MII_CR_RESET = 1 << 15
# BMSR (IEEE 802.3 22.2.4.2)
MII_SR_EXTENDED_CAPS = 1 << 0
MII_SR_LINK_STATUS = 1 << 2
MII_SR_AUTONEG_CAPS = 1 << 3
MII_SR_AUTONEG_COMPLETE = 1 << 5
MII_SR_PREAMBLE_SUPPRESS = 1 << 6
MII_SR_EXTENDED_STATUS = 1 << 8
MII_SR_CAPS = 0b0111_1000_0000_0000  # 10/100 half and full duplex
BMSR_STATIC = MII_SR_CAPS | MII_SR_EXTENDED_STATUS | MII_SR_PREAMBLE_SUPPRESS | MII_SR_AUTONEG_CAPS | MII_SR_EXTENDED_CAPS

# Link partner as an ideal 1000BASE-T full-duplex switch port
LP_ABILITY_UP = 0b0100_0001_1110_0001  # ACK, 10/100 HD/FD, selector 802.3
AUTONEG_EXP_UP = 0b0000_0000_0000_0001  # link partner is auto-negotiation able
STATUS_1000T_UP = 0b0011_1100_0000_0000  # local/remote receiver OK, LP 1000 FD/HD
# PSSR (88E1011 register 17): 1000 Mb/s, full duplex, speed/duplex resolved, link
PSSR_UP = (0b10 << 14) | (1 << 13) | (1 << 11) | (1 << 10)

_RESET_VALUES = {
    PHY_CTRL: MII_CR_AUTO_NEG_EN | MII_CR_FULL_DUPLEX | MII_CR_SPEED_1000,
    PHY_ID1: M88E1011_I_PHY_ID >> 16,
    PHY_ID2: (M88E1011_I_PHY_ID & 0xFFF0) | PHY_REVISION,
    PHY_AUTONEG_ADV: 0b0000_0001_1110_0001,
    PHY_NEXT_PAGE_TX: 0x2001,
    PHY_1000T_CTRL: 0b0000_0011_0000_0000,
    PHY_EXT_STATUS: 0b0011_0000_0000_0000,
    M88_PHY_SPEC_CTRL: 0x0068,
    M88_EXT_PHY_SPEC_CTRL: 0x0C60,
    M88_LED_CTRL: 0x4100,
}
# Registers the driver may write, with their writable masks.
_WRITABLE = {
    PHY_CTRL: 0xFFFF,
    PHY_AUTONEG_ADV: 0b1011_1111_1111_1111,
    PHY_NEXT_PAGE_TX: 0b1010_1111_1111_1111,
    PHY_1000T_CTRL: 0xFF00,
    M88_PHY_SPEC_CTRL: 0xFFFF,
    M88_INT_ENABLE: 0xFFFF,
    M88_EXT_PHY_SPEC_CTRL: 0xFFFF,
    M88_LED_CTRL: 0xFFFF,
    M88_PHY_PAGE_SELECT: 0x003F,
    M88_PHY_GEN_CONTROL: 0xFFFF,
}
_SELF_CLEARING = MII_CR_RESET | MII_CR_RESTART_AUTO_NEG


class M88Phy:
    """The PHY register file and link state (rules 1–4).

    Args:
        link: whether the cable is connected at power-on.
    """

    def __init__(self, link: bool = True) -> None:
        self.cable = link
        self.regs = [0] * 32
        self.link_latched_low = False
        self.reset()

    def reset(self) -> None:
        """Registers to their power-on values (BMCR.RESET, CTRL.PHY_RST, power-on)."""
        self.regs = [0] * 32
        for reg, value in _RESET_VALUES.items():
            self.regs[reg] = value
        self.an_complete = True  # negotiation against the ideal partner is instant

    # -- status --------------------------------------------------------------------------

    @property
    def link_up(self) -> bool:
        """Rule 2."""
        bmcr = self.regs[PHY_CTRL]
        if not self.cable or bmcr & (MII_CR_POWER_DOWN | MII_CR_ISOLATE):
            return False
        return self.an_complete or not bmcr & MII_CR_AUTO_NEG_EN

    @property
    def loopback(self) -> bool:
        """BMCR.LOOPBACK (rule 4)."""
        return bool(self.regs[PHY_CTRL] & MII_CR_LOOPBACK)

    def set_cable(self, connected: bool) -> None:
        """The host plugs or unplugs the cable."""
        if self.cable and not connected:
            self.link_latched_low = True
        self.cable = connected

    def _status(self) -> int:
        value = BMSR_STATIC
        up = self.link_up
        autoneg = bool(self.regs[PHY_CTRL] & MII_CR_AUTO_NEG_EN)
        if up and not self.link_latched_low:
            value |= MII_SR_LINK_STATUS
        if up and autoneg and self.an_complete:
            value |= MII_SR_AUTONEG_COMPLETE
        return value

    # -- register access -----------------------------------------------------------------

    def read(self, reg: int) -> int:
        """Read PHY register ``reg`` (0–31)."""
        reg &= 0x1F
        up = self.link_up
        if reg == PHY_STATUS:
            value = self._status()
            self.link_latched_low = False
            return value
        if reg == PHY_LP_ABILITY:
            return LP_ABILITY_UP if up else 0
        if reg == PHY_AUTONEG_EXP:
            return AUTONEG_EXP_UP if up else 0
        if reg == PHY_1000T_STATUS:
            return STATUS_1000T_UP if up else 0
        if reg == M88_PHY_SPEC_STATUS:
            return PSSR_UP if up else 0
        if reg == M88_INT_STATUS:
            value = self.regs[reg]
            self.regs[reg] = 0
            return value
        return self.regs[reg]

    def write(self, reg: int, value: int) -> None:
        """Write PHY register ``reg``; read-only registers ignore writes."""
        reg &= 0x1F
        mask = _WRITABLE.get(reg)
        if mask is None:
            return
        value = (self.regs[reg] & ~mask) | (value & mask)
        was_up = self.link_up
        if reg == PHY_CTRL:
            if value & MII_CR_RESET:
                self.reset()
                # A software reset keeps the written speed/duplex/AN settings.
                value &= ~_SELF_CLEARING
                self.regs[PHY_CTRL] = value
                self.an_complete = True
                return
            if value & MII_CR_RESTART_AUTO_NEG:
                self.an_complete = True
            value &= ~_SELF_CLEARING
        self.regs[reg] = value & 0xFFFF
        if was_up and not self.link_up:
            self.link_latched_low = True

    # -- MDIC ----------------------------------------------------------------------------

    def mdic_access(self, mdic: int) -> int:
        """Perform the MDI cycle a write of ``mdic`` requests; return the new MDIC value.

        SDM §13.4.7: READY is set when the cycle ends; a cycle to another PHY address or
        with a reserved opcode ends with ERROR set (there is nobody to answer).
        """
        phy = (mdic >> r.MDIC_PHY_SHIFT) & 0x1F
        reg = (mdic >> r.MDIC_REG_SHIFT) & 0x1F
        op = mdic & (0b11 << 26)
        result = mdic & ~(r.MDIC_READY | r.MDIC_ERROR)
        if phy != r.PHY_ADDRESS or op not in (r.MDIC_OP_READ, r.MDIC_OP_WRITE):
            if _tp_mdic.on:
                _tp_mdic.emit(phy=phy, reg=reg, op=op >> 26, error=True)
            return result | r.MDIC_READY | r.MDIC_ERROR
        if op == r.MDIC_OP_READ:
            result = (result & ~r.MDIC_DATA_MASK) | self.read(reg)
        else:
            self.write(reg, mdic & r.MDIC_DATA_MASK)
        if _tp_mdic.on:
            _tp_mdic.emit(phy=phy, reg=reg, op=op >> 26, data=result & r.MDIC_DATA_MASK)
        return result | r.MDIC_READY

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self) -> tuple[tuple[int, ...], bool, bool, bool]:
        """(registers, cable, link_latched_low, an_complete)."""
        return tuple(self.regs), self.cable, self.link_latched_low, self.an_complete

    @staticmethod
    def check_snapshot(regs: tuple[int, ...], cable: object, latched: object, an: object) -> None:
        """Validate a PHY snapshot.

        Raises:
            SnapshotError: a field is out of range or an identity register differs.
        """
        if not isinstance(regs, tuple) or len(regs) != 32:
            raise SnapshotError("phy.regs", "expected 32 registers")
        for i, value in enumerate(regs):
            check_int(f"phy.regs[{i}]", value, 0, 0xFFFF)
        for reg in (PHY_ID1, PHY_ID2):
            if regs[reg] != _RESET_VALUES[reg]:
                raise SnapshotError(f"phy.regs[{reg}]", "PHY identifier differs from this model")
        check_bool("phy.cable", cable)
        check_bool("phy.link_latched_low", latched)
        check_bool("phy.an_complete", an)

    def load(self, regs: tuple[int, ...], cable: bool, latched: bool, an: bool) -> None:
        """Apply a snapshot checked by ``check_snapshot``."""
        self.regs = list(regs)
        self.cable, self.link_latched_low, self.an_complete = cable, latched, an
