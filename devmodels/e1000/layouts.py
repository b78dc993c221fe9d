"""Descriptor layouts of the 8254x (SDM ch. 3), declarative and precompiled.

Rules:

1. Each spec structure is a ``construct`` struct named as in the SDM (``RDESC``,
   ``TDESC_LEGACY``, ``TDESC_CONTEXT``, ``TDESC_DATA``). They document the layout, back the
   driver simulator and tests, and are never ``.compile()``d.
2. The device's hot paths (one descriptor per packet) use the ``struct.Struct`` twins here
   (``RX_DESC``, ``TX_DESC``), whose field order matches the construct structs; a unit
   test checks that both decode the same bytes identically.
3. All descriptors are 16 bytes, little-endian.
"""

from __future__ import annotations

import struct

import construct as cs

__all__ = [
    "RDESC",
    "TDESC_LEGACY",
    "TDESC_CONTEXT",
    "TDESC_DATA",
    "RX_DESC",
    "RX_WRITEBACK",
    "TX_DESC",
    "TX_LEGACY",
    "TX_CONTEXT",
    "TX_DATA",
]

# SDM §3.2.3 Table 3-1: receive descriptor
RDESC = cs.Struct(
    "buffer_addr" / cs.Int64ul,
    "length" / cs.Int16ul,
    "csum" / cs.Int16ul,
    "status" / cs.Int8ul,
    "errors" / cs.Int8ul,
    "special" / cs.Int16ul,
)

# SDM §3.3.3 Table 3-8: legacy transmit descriptor
TDESC_LEGACY = cs.Struct(
    "buffer_addr" / cs.Int64ul,
    "length" / cs.Int16ul,
    "cso" / cs.Int8ul,
    "cmd" / cs.Int8ul,
    "sta" / cs.Int8ul,  # STA in bits 3:0, RSV in 7:4
    "css" / cs.Int8ul,
    "special" / cs.Int16ul,
)

# SDM §3.3.6 Table 3-11: TCP/IP context descriptor
TDESC_CONTEXT = cs.Struct(
    "ipcss" / cs.Int8ul,
    "ipcso" / cs.Int8ul,
    "ipcse" / cs.Int16ul,
    "tucss" / cs.Int8ul,
    "tucso" / cs.Int8ul,
    "tucse" / cs.Int16ul,
    "cmd_and_length"
    / cs.ByteSwapped(
        cs.BitStruct(
            "tucmd" / cs.BitsInteger(8),
            "dtyp" / cs.BitsInteger(4),
            "paylen" / cs.BitsInteger(20),
        )
    ),
    "sta" / cs.Int8ul,
    "hdrlen" / cs.Int8ul,
    "mss" / cs.Int16ul,
)

# SDM §3.3.7 Table 3-17: TCP/IP data descriptor
TDESC_DATA = cs.Struct(
    "buffer_addr" / cs.Int64ul,
    "lower"
    / cs.ByteSwapped(
        cs.BitStruct(
            "dcmd" / cs.BitsInteger(8),
            "dtyp" / cs.BitsInteger(4),
            "dtalen" / cs.BitsInteger(20),
        )
    ),
    "sta" / cs.Int8ul,
    "popts" / cs.Int8ul,
    "special" / cs.Int16ul,
)

# Hot-path twins (rule 2).
RX_DESC = struct.Struct("<QHHBBH")  # buffer_addr, length, csum, status, errors, special
RX_WRITEBACK = struct.Struct("<HHBBH")  # the 8 bytes at offset 8 the device writes back
TX_DESC = struct.Struct("<QII")  # any transmit descriptor: qword 0, dword 2, dword 3
TX_LEGACY = struct.Struct("<QHBBBBH")  # buffer_addr, length, cso, cmd, sta, css, special
TX_CONTEXT = struct.Struct("<BBHBBHIBBH")  # ipcss..tucse, cmd_and_length, sta, hdrlen, mss
TX_DATA = struct.Struct("<QIBBH")  # buffer_addr, lower, sta, popts, special
