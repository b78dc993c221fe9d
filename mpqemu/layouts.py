"""Wire layouts of QEMU 7.2's mpqemu messages (``include/hw/remote/mpqemu-link.h``).

A message is ``MPQemuMsg`` minus its trailing ``fds``/``num_fds`` fields, which never
travel as bytes: ``mpqemu_msg_send`` writes the header (``MPQEMU_MSG_HDR_SIZE`` bytes)
and then ``size`` bytes of the ``data`` union in one ``sendmsg``, with the descriptors as
``SCM_RIGHTS`` ancillary data.

=============  ======  =============================================================
structure      bytes   layout (native byte order, LP64)
=============  ======  =============================================================
header         16      ``int cmd``; 4 bytes padding; ``size_t size``
PciConfDataMsg 12      ``uint32_t addr``; ``uint32_t val``; ``int len``
BarAccessMsg   24      ``hwaddr addr``; ``uint64_t val``; ``unsigned size``;
                       ``bool memory``; 3 bytes padding
SyncSysmemMsg  192     ``hwaddr gpas[8]``; ``uint64_t sizes[8]``; ``off_t offsets[8]``
RET data       8       ``uint64_t u64`` (absent, ``size`` 0, in the DEVICE_RESET reply)
=============  ======  =============================================================

Rules: every per-access message (config and BAR) uses a precompiled ``struct.Struct``
(CONVENTIONS: layouts: hot paths avoid construct); ``SyncSysmemMsg`` is declared with construct
since it is rare. Decoding never trusts a value: callers check ranges.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import construct as cs

from .defs import MPQEMU_CMD_RET, MPQEMU_MSG_HDR_SIZE, REMOTE_MAX_FDS
from devmodels import UsageError

__all__ = [
    "MSG_HEADER",
    "PCI_CONF_DATA_MSG",
    "BAR_ACCESS_MSG",
    "SyncSysmemMsg",
    "RET_DATA",
    "PciConfData",
    "BarAccess",
    "SyncSysmem",
    "pack_header",
    "unpack_header",
    "encode_message",
    "encode_ret",
    "pack_pci_conf_data",
    "unpack_pci_conf_data",
    "pack_bar_access",
    "unpack_bar_access",
    "pack_sync_sysmem",
    "unpack_sync_sysmem",
]

# "=": native byte order, no implicit alignment; the padding is written out.
MSG_HEADER = struct.Struct("=i4xQ")
PCI_CONF_DATA_MSG = struct.Struct("=IIi")
BAR_ACCESS_MSG = struct.Struct("=QQIB3x")
RET_DATA = struct.Struct("=Q")
# A RET header and its u64 packed at once (the reply to every config and BAR access).
_RET_WITH_U64 = struct.Struct("=i4xQQ")

SyncSysmemMsg = cs.Struct(
    "gpas" / cs.Array(REMOTE_MAX_FDS, cs.Int64un),
    "sizes" / cs.Array(REMOTE_MAX_FDS, cs.Int64un),
    "offsets" / cs.Array(REMOTE_MAX_FDS, cs.Int64sn),
)

assert MSG_HEADER.size == MPQEMU_MSG_HDR_SIZE
assert PCI_CONF_DATA_MSG.size == 12
assert BAR_ACCESS_MSG.size == 24
assert SyncSysmemMsg.sizeof() == 192


class PciConfData(NamedTuple):
    """``PciConfDataMsg``: a config access of ``length`` bytes at ``addr``."""

    addr: int
    val: int
    length: int


class BarAccess(NamedTuple):
    """``BarAccessMsg``: a BAR access at absolute address ``addr`` (memory or I/O space)."""

    addr: int
    val: int
    size: int
    memory: bool


class SyncSysmem(NamedTuple):
    """``SyncSysmemMsg``: the guest RAM table; entry ``i`` goes with descriptor ``i``."""

    gpas: tuple[int, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]


def pack_header(cmd: int, size: int) -> bytes:
    """The 16-byte message header."""
    return MSG_HEADER.pack(cmd, size)


def unpack_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(cmd, size)`` of a 16-byte header."""
    cmd, size = MSG_HEADER.unpack(data)
    return cmd, size


def encode_message(cmd: int, payload: bytes = b"") -> bytes:
    """A whole message: header with ``size = len(payload)``, then the payload."""
    return MSG_HEADER.pack(cmd, len(payload)) + payload


def encode_ret(value: int | None) -> bytes:
    """A RET message carrying ``value`` as its u64, or no data at all when ``None``."""
    if value is None:
        return MSG_HEADER.pack(MPQEMU_CMD_RET, 0)
    return _RET_WITH_U64.pack(MPQEMU_CMD_RET, RET_DATA.size, value & 0xFFFF_FFFF_FFFF_FFFF)


def pack_pci_conf_data(addr: int, val: int, length: int) -> bytes:
    """Encode a ``PciConfDataMsg``."""
    return PCI_CONF_DATA_MSG.pack(addr, val, length)


def unpack_pci_conf_data(data: bytes | bytearray | memoryview) -> PciConfData:
    """Decode a ``PciConfDataMsg`` (exactly 12 bytes)."""
    return PciConfData(*PCI_CONF_DATA_MSG.unpack(data))


def pack_bar_access(addr: int, val: int, size: int, memory: bool) -> bytes:
    """Encode a ``BarAccessMsg``."""
    return BAR_ACCESS_MSG.pack(addr, val, size, 1 if memory else 0)


def unpack_bar_access(data: bytes | bytearray | memoryview) -> BarAccess:
    """Decode a ``BarAccessMsg`` (exactly 24 bytes); any non-zero ``memory`` byte is true."""
    addr, val, size, memory = BAR_ACCESS_MSG.unpack(data)
    return BarAccess(addr, val, size, memory != 0)


def pack_sync_sysmem(entries: list[tuple[int, int, int]]) -> bytes:
    """Encode a ``SyncSysmemMsg`` from up to 8 ``(gpa, size, offset)`` entries.

    Raises:
        UsageError: more than ``REMOTE_MAX_FDS`` entries.
    """
    if len(entries) > REMOTE_MAX_FDS:
        raise UsageError(f"a SyncSysmemMsg holds at most {REMOTE_MAX_FDS} entries, not {len(entries)}")
    padded = list(entries) + [(0, 0, 0)] * (REMOTE_MAX_FDS - len(entries))
    return SyncSysmemMsg.build(
        {
            "gpas": [e[0] for e in padded],
            "sizes": [e[1] for e in padded],
            "offsets": [e[2] for e in padded],
        }
    )


def unpack_sync_sysmem(data: bytes | bytearray | memoryview) -> SyncSysmem:
    """Decode a ``SyncSysmemMsg`` (exactly 192 bytes)."""
    parsed = SyncSysmemMsg.parse(bytes(data))
    return SyncSysmem(tuple(parsed.gpas), tuple(parsed.sizes), tuple(parsed.offsets))
