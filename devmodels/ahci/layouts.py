"""AHCI 1.3.1 system-memory structures and SATA 3.x FIS layouts, declaratively.

Rules:

1. One ``construct`` struct per specification structure, named as in the specification
   (AHCI 1.3.1 §4.2.2 command header, §4.2.3 command table and PRDT entry, §4.2.1 received
   FIS area; SATA 3.x §10.5 FIS types). They are the reference definitions: tests check the
   hot-path codecs below (and ``fis.py``) against them.
2. The per-command paths use the precompiled ``struct.Struct`` objects at the bottom
   (CONVENTIONS: layouts); nothing guest-controlled is ever passed to ``.compile()``.
3. Multi-bit flag dwords are little-endian dwords whose fields are listed most significant
   bit first, hence ``cs.ByteSwapped(cs.BitStruct(...))``.
"""

from __future__ import annotations

import struct

import construct as cs

__all__ = [
    "FIS_TYPE_REG_H2D",
    "FIS_TYPE_REG_D2H",
    "FIS_TYPE_DMA_ACT",
    "FIS_TYPE_DMA_SETUP",
    "FIS_TYPE_DATA",
    "FIS_TYPE_BIST",
    "FIS_TYPE_PIO_SETUP",
    "FIS_TYPE_DEV_BITS",
    "CommandHeader",
    "PrdtEntry",
    "CommandTableHeader",
    "RegH2DFis",
    "RegD2HFis",
    "PioSetupFis",
    "DmaSetupFis",
    "SetDeviceBitsFis",
    "ReceivedFis",
    "CMD_HEADER",
    "PRD_ENTRY",
    "H2D_FIS",
    "D2H_FIS",
    "PIO_SETUP_FIS",
    "DMA_SETUP_FIS",
    "SDB_FIS",
]

# SATA 3.x §10.5.1 FIS type values
FIS_TYPE_REG_H2D = 0x27
FIS_TYPE_REG_D2H = 0x34
FIS_TYPE_DMA_ACT = 0x39
FIS_TYPE_DMA_SETUP = 0x41
FIS_TYPE_DATA = 0x46
FIS_TYPE_BIST = 0x58
FIS_TYPE_PIO_SETUP = 0x5F
FIS_TYPE_DEV_BITS = 0xA1

# AHCI 1.3.1 §4.2.2: command header (32 bytes, one per slot in the command list)
CommandHeader = cs.Struct(
    "dw0"
    / cs.ByteSwapped(
        cs.BitStruct(
            "prdtl" / cs.BitsInteger(16),
            "pmp" / cs.BitsInteger(4),
            "reserved" / cs.BitsInteger(1),
            "c" / cs.Flag,
            "b" / cs.Flag,
            "r" / cs.Flag,
            "p" / cs.Flag,
            "w" / cs.Flag,
            "a" / cs.Flag,
            "cfl" / cs.BitsInteger(5),
        )
    ),
    "prdbc" / cs.Int32ul,
    "ctba" / cs.Int32ul,
    "ctbau" / cs.Int32ul,
    "reserved" / cs.Bytes(16),
)

# AHCI 1.3.1 §4.2.3.3: physical region descriptor table entry (16 bytes)
PrdtEntry = cs.Struct(
    "dba" / cs.Int32ul,
    "dbau" / cs.Int32ul,
    "reserved" / cs.Int32ul,
    "dw3"
    / cs.ByteSwapped(
        cs.BitStruct(
            "i" / cs.Flag,
            "reserved" / cs.BitsInteger(9),
            "dbc" / cs.BitsInteger(22),
        )
    ),
)

# AHCI 1.3.1 §4.2.3: command table up to the PRDT (CFIS 64 bytes, ACMD 16, reserved 48)
CommandTableHeader = cs.Struct(
    "cfis" / cs.Bytes(64),
    "acmd" / cs.Bytes(16),
    "reserved" / cs.Bytes(48),
)

# SATA 3.x §10.5.5: Register Host to Device FIS (20 bytes)
RegH2DFis = cs.Struct(
    "fis_type" / cs.Const(FIS_TYPE_REG_H2D, cs.Int8ul),
    "flags" / cs.BitStruct("c" / cs.Flag, "reserved" / cs.BitsInteger(3), "pm_port" / cs.BitsInteger(4)),
    "command" / cs.Int8ul,
    "features" / cs.Int8ul,
    "lba_low" / cs.Int8ul,
    "lba_mid" / cs.Int8ul,
    "lba_high" / cs.Int8ul,
    "device" / cs.Int8ul,
    "lba_low_exp" / cs.Int8ul,
    "lba_mid_exp" / cs.Int8ul,
    "lba_high_exp" / cs.Int8ul,
    "features_exp" / cs.Int8ul,
    "count" / cs.Int8ul,
    "count_exp" / cs.Int8ul,
    "icc" / cs.Int8ul,
    "control" / cs.Int8ul,
    "auxiliary" / cs.Int32ul,
)

# SATA 3.x §10.5.6: Register Device to Host FIS (20 bytes)
RegD2HFis = cs.Struct(
    "fis_type" / cs.Const(FIS_TYPE_REG_D2H, cs.Int8ul),
    "flags"
    / cs.BitStruct(
        "reserved" / cs.BitsInteger(1),
        "i" / cs.Flag,
        "reserved2" / cs.BitsInteger(2),
        "pm_port" / cs.BitsInteger(4),
    ),
    "status" / cs.Int8ul,
    "error" / cs.Int8ul,
    "lba_low" / cs.Int8ul,
    "lba_mid" / cs.Int8ul,
    "lba_high" / cs.Int8ul,
    "device" / cs.Int8ul,
    "lba_low_exp" / cs.Int8ul,
    "lba_mid_exp" / cs.Int8ul,
    "lba_high_exp" / cs.Int8ul,
    "reserved" / cs.Int8ul,
    "count" / cs.Int8ul,
    "count_exp" / cs.Int8ul,
    "reserved2" / cs.Bytes(6),
)

# SATA 3.x §10.5.11: PIO Setup FIS, device to host (20 bytes)
PioSetupFis = cs.Struct(
    "fis_type" / cs.Const(FIS_TYPE_PIO_SETUP, cs.Int8ul),
    "flags"
    / cs.BitStruct(
        "reserved" / cs.BitsInteger(1),
        "i" / cs.Flag,
        "d" / cs.Flag,
        "reserved2" / cs.BitsInteger(1),
        "pm_port" / cs.BitsInteger(4),
    ),
    "status" / cs.Int8ul,
    "error" / cs.Int8ul,
    "lba_low" / cs.Int8ul,
    "lba_mid" / cs.Int8ul,
    "lba_high" / cs.Int8ul,
    "device" / cs.Int8ul,
    "lba_low_exp" / cs.Int8ul,
    "lba_mid_exp" / cs.Int8ul,
    "lba_high_exp" / cs.Int8ul,
    "reserved" / cs.Int8ul,
    "count" / cs.Int8ul,
    "count_exp" / cs.Int8ul,
    "reserved2" / cs.Int8ul,
    "e_status" / cs.Int8ul,
    "transfer_count" / cs.Int16ul,
    "reserved3" / cs.Bytes(2),
)

# SATA 3.x §10.5.9: DMA Setup FIS, bidirectional (28 bytes)
DmaSetupFis = cs.Struct(
    "fis_type" / cs.Const(FIS_TYPE_DMA_SETUP, cs.Int8ul),
    "flags"
    / cs.BitStruct(
        "a" / cs.Flag,
        "i" / cs.Flag,
        "d" / cs.Flag,
        "reserved" / cs.BitsInteger(1),
        "pm_port" / cs.BitsInteger(4),
    ),
    "reserved" / cs.Bytes(2),
    "dma_buffer_id" / cs.Int64ul,
    "reserved2" / cs.Int32ul,
    "dma_buffer_offset" / cs.Int32ul,
    "transfer_count" / cs.Int32ul,
    "reserved3" / cs.Int32ul,
)

# SATA 3.x §10.5.7: Set Device Bits FIS, device to host (8 bytes)
SetDeviceBitsFis = cs.Struct(
    "fis_type" / cs.Const(FIS_TYPE_DEV_BITS, cs.Int8ul),
    "flags"
    / cs.BitStruct(
        "n" / cs.Flag,
        "i" / cs.Flag,
        "reserved" / cs.BitsInteger(2),
        "pm_port" / cs.BitsInteger(4),
    ),
    "status"
    / cs.BitStruct(
        "reserved" / cs.BitsInteger(1),
        "status_hi" / cs.BitsInteger(3),
        "reserved2" / cs.BitsInteger(1),
        "status_lo" / cs.BitsInteger(3),
    ),
    "error" / cs.Int8ul,
    "sactive" / cs.Int32ul,
)

# AHCI 1.3.1 §4.2.1: received FIS structure (256 bytes, PxFB)
ReceivedFis = cs.Struct(
    "dsfis" / cs.Bytes(28),
    "reserved" / cs.Bytes(4),
    "psfis" / cs.Bytes(20),
    "reserved2" / cs.Bytes(12),
    "rfis" / cs.Bytes(20),
    "reserved3" / cs.Bytes(4),
    "sdbfis" / cs.Bytes(8),
    "ufis" / cs.Bytes(64),
    "reserved4" / cs.Bytes(96),
)

# -- hot-path codecs (same layouts, precompiled) -----------------------------------------
CMD_HEADER = struct.Struct("<IIII16x")  # dw0, prdbc, ctba, ctbau
PRD_ENTRY = struct.Struct("<IIII")  # dba, dbau, reserved, dw3
H2D_FIS = struct.Struct("<BBBBBBBBBBBBBBBBI")  # type, flags, command, features, ... auxiliary
D2H_FIS = struct.Struct("<BBBBBBBBBBBBBB6x")  # type, flags, status, error, lba*3, dev, lba*3, rsvd, count*2
PIO_SETUP_FIS = struct.Struct("<BBBBBBBBBBBBBBBBH2x")  # ..., count*2, rsvd, e_status, transfer_count
DMA_SETUP_FIS = struct.Struct("<BB2xQ4xII4x")  # type, flags, buffer id, offset, count
SDB_FIS = struct.Struct("<BBBBI")  # type, flags, status, error, sactive
