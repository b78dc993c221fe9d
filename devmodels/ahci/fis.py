"""FIS codecs: the command FIS the host builds and the FISes the device sends back.

Rules:

1. ``parse_h2d`` is the only place a guest-built command FIS (CFIS) is decoded; anything
   that is not a Register Host-to-Device FIS raises ``BadCommandFis`` (the port turns that
   into PxIS.IFS, AHCI 1.3.1 §6.1.4 "unknown FIS").
2. ``TaskFile`` is the shadow register block (ACS-3 §6) both ways: the fields a command
   brings and the ending values a drive reports. LBA and count are whole 48-bit / 16-bit
   numbers here; splitting into FIS bytes happens only in the builders.
3. Builders return plain ``bytes`` laid out as ``layouts.py`` declares (tests check them
   against the ``construct`` definitions).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadCommandFis
from .layouts import (
    D2H_FIS,
    DMA_SETUP_FIS,
    FIS_TYPE_DEV_BITS,
    FIS_TYPE_DMA_SETUP,
    FIS_TYPE_PIO_SETUP,
    FIS_TYPE_REG_D2H,
    FIS_TYPE_REG_H2D,
    H2D_FIS,
    PIO_SETUP_FIS,
    SDB_FIS,
)

__all__ = [
    "TaskFile",
    "parse_h2d",
    "build_h2d",
    "build_d2h",
    "build_pio_setup",
    "build_dma_setup",
    "build_sdb",
]

_FIS_I = 1 << 6
_FIS_D = 1 << 5
_FIS_C = 1 << 7


@dataclass(frozen=True)
class TaskFile:
    """Shadow registers of one command or one response (ACS-3 §6).

    Attributes:
        command: command code (H2D) or status (responses use ``status``).
        features: 16-bit features (exp byte in the high half).
        lba: 48-bit LBA (bytes low/mid/high then their exp bytes).
        count: 16-bit count.
        device: device register.
        control: device control register.
        icc: isochronous command completion byte.
        is_command: the H2D FIS had its C bit set (a command, not a control update).
        pm_port: port multiplier port field.
    """

    command: int = 0
    features: int = 0
    lba: int = 0
    count: int = 0
    device: int = 0
    control: int = 0
    icc: int = 0
    is_command: bool = True
    pm_port: int = 0

    @property
    def lba28(self) -> int:
        """The 28-bit LBA of a non-48-bit command (device bits 3:0 are LBA 27:24)."""
        return (self.lba & 0xFF_FFFF) | ((self.device & 0x0F) << 24)

    @property
    def lba_mid(self) -> int:
        """LBA bits 15:8 (the ATAPI byte count limit low byte, the SMART signature)."""
        return (self.lba >> 8) & 0xFF

    @property
    def lba_high(self) -> int:
        """LBA bits 23:16."""
        return (self.lba >> 16) & 0xFF


def parse_h2d(cfis: bytes) -> TaskFile:
    """Decode a Register Host-to-Device FIS (SATA 3.x §10.5.5) from a command table's CFIS.

    Raises:
        BadCommandFis: the bytes are not a Register H2D FIS.
    """
    if len(cfis) < H2D_FIS.size:
        raise BadCommandFis(f"CFIS is {len(cfis)} bytes, shorter than a register FIS")
    (
        fis_type,
        flags,
        command,
        features,
        lba0,
        lba1,
        lba2,
        device,
        lba3,
        lba4,
        lba5,
        features_exp,
        count,
        count_exp,
        icc,
        control,
        _aux,
    ) = H2D_FIS.unpack_from(cfis)
    if fis_type != FIS_TYPE_REG_H2D:
        raise BadCommandFis(f"CFIS type {fis_type:#04x} is not a Register H2D FIS")
    return TaskFile(
        command=command,
        features=features | features_exp << 8,
        lba=lba0 | lba1 << 8 | lba2 << 16 | lba3 << 24 | lba4 << 32 | lba5 << 40,
        count=count | count_exp << 8,
        device=device,
        control=control,
        icc=icc,
        is_command=bool(flags & _FIS_C),
        pm_port=flags & 0x0F,
    )


def build_h2d(tf: TaskFile) -> bytes:
    """Encode a Register Host-to-Device FIS (what a driver writes into the CFIS)."""
    lba = tf.lba
    return H2D_FIS.pack(
        FIS_TYPE_REG_H2D,
        (_FIS_C if tf.is_command else 0) | (tf.pm_port & 0x0F),
        tf.command & 0xFF,
        tf.features & 0xFF,
        lba & 0xFF,
        (lba >> 8) & 0xFF,
        (lba >> 16) & 0xFF,
        tf.device & 0xFF,
        (lba >> 24) & 0xFF,
        (lba >> 32) & 0xFF,
        (lba >> 40) & 0xFF,
        (tf.features >> 8) & 0xFF,
        tf.count & 0xFF,
        (tf.count >> 8) & 0xFF,
        tf.icc & 0xFF,
        tf.control & 0xFF,
        0,
    )


def build_d2h(status: int, error: int, lba: int = 0, count: int = 0, device: int = 0, interrupt: bool = True) -> bytes:
    """A Register Device-to-Host FIS (SATA 3.x §10.5.6)."""
    return D2H_FIS.pack(
        FIS_TYPE_REG_D2H,
        _FIS_I if interrupt else 0,
        status & 0xFF,
        error & 0xFF,
        lba & 0xFF,
        (lba >> 8) & 0xFF,
        (lba >> 16) & 0xFF,
        device & 0xFF,
        (lba >> 24) & 0xFF,
        (lba >> 32) & 0xFF,
        (lba >> 40) & 0xFF,
        0,
        count & 0xFF,
        (count >> 8) & 0xFF,
    )


def build_pio_setup(
    status: int,
    e_status: int,
    transfer_count: int,
    *,
    to_host: bool,
    interrupt: bool = True,
    lba: int = 0,
    count: int = 0,
    device: int = 0,
) -> bytes:
    """A PIO Setup FIS (SATA 3.x §10.5.11); ``transfer_count`` is clipped to 16 bits.

    ``status`` is the value at the start of the data phase, ``e_status`` the ending status
    the HBA copies into PxTFD once the data FIS has moved (AHCI 1.3.1 §5.3.9).
    """
    return PIO_SETUP_FIS.pack(
        FIS_TYPE_PIO_SETUP,
        (_FIS_I if interrupt else 0) | (_FIS_D if to_host else 0),
        status & 0xFF,
        0,
        lba & 0xFF,
        (lba >> 8) & 0xFF,
        (lba >> 16) & 0xFF,
        device & 0xFF,
        (lba >> 24) & 0xFF,
        (lba >> 32) & 0xFF,
        (lba >> 40) & 0xFF,
        0,
        count & 0xFF,
        (count >> 8) & 0xFF,
        0,
        e_status & 0xFF,
        min(transfer_count, 0xFFFF),
    )


def build_dma_setup(tag: int, transfer_count: int, *, to_host: bool, interrupt: bool = False) -> bytes:
    """A DMA Setup FIS (SATA 3.x §10.5.9) selecting command slot ``tag`` (first-party DMA)."""
    return DMA_SETUP_FIS.pack(
        FIS_TYPE_DMA_SETUP,
        (_FIS_I if interrupt else 0) | (_FIS_D if to_host else 0),
        tag & 0x1F,
        0,
        transfer_count & 0xFFFF_FFFF,
    )


def build_sdb(status: int, error: int, sactive: int, interrupt: bool = True) -> bytes:
    """A Set Device Bits FIS (SATA 3.x §10.5.7): status bits 6:4 and 2:0, completed tags."""
    return SDB_FIS.pack(
        FIS_TYPE_DEV_BITS,
        _FIS_I if interrupt else 0,
        status & 0b0111_0111,
        error & 0xFF,
        sactive & 0xFFFF_FFFF,
    )
