"""Wire layouts against the C structures of QEMU 7.2's mpqemu-link.h (LP64, little-endian)."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpqemu import defs as d
from mpqemu import layouts as lay

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="byte images below are little-endian")


def test_sizes_match_the_c_structures() -> None:
    assert d.MPQEMU_MSG_HDR_SIZE == lay.MSG_HEADER.size == 16  # offsetof(MPQemuMsg, data.u64)
    assert lay.PCI_CONF_DATA_MSG.size == 12
    assert lay.BAR_ACCESS_MSG.size == 24
    assert lay.SyncSysmemMsg.sizeof() == d.MPQEMU_MSG_DATA_SIZE == 192


def test_command_numbers_follow_the_enum_order() -> None:
    order = ["SYNC_SYSMEM", "RET", "PCI_CFGWRITE", "PCI_CFGREAD", "BAR_WRITE", "BAR_READ", "SET_IRQFD", "DEVICE_RESET"]
    assert [d.CMD_NAMES[i] for i in range(d.MPQEMU_CMD_MAX)] == order


def test_header_bytes() -> None:
    # int cmd = 3, 4 bytes of padding, size_t size = 12
    assert lay.pack_header(3, 12) == bytes([3, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0])
    assert lay.unpack_header(lay.pack_header(-1, 2**64 - 1)) == (-1, 2**64 - 1)


def test_pci_conf_data_bytes() -> None:
    raw = lay.pack_pci_conf_data(0x10, 0xFFFF_FFFF, 4)
    assert raw == struct.pack("<IIi", 0x10, 0xFFFF_FFFF, 4)
    assert lay.unpack_pci_conf_data(raw) == lay.PciConfData(0x10, 0xFFFF_FFFF, 4)
    assert lay.unpack_pci_conf_data(struct.pack("<IIi", 1, 2, -5)).length == -5


def test_bar_access_bytes_and_bool() -> None:
    raw = lay.pack_bar_access(0xFEBF_0000, 0x1122_3344_5566_7788, 8, True)
    assert raw == struct.pack("<QQIB3x", 0xFEBF_0000, 0x1122_3344_5566_7788, 8, 1)
    assert lay.unpack_bar_access(raw) == lay.BarAccess(0xFEBF_0000, 0x1122_3344_5566_7788, 8, True)
    # C bool from a hostile peer: any non-zero byte is true.
    assert lay.unpack_bar_access(struct.pack("<QQIB3x", 0, 0, 4, 0x80)).memory is True


def test_ret_with_and_without_data() -> None:
    assert lay.encode_ret(0x7E57_DE70) == lay.pack_header(d.MPQEMU_CMD_RET, 8) + struct.pack("<Q", 0x7E57_DE70)
    assert lay.encode_ret(None) == lay.pack_header(d.MPQEMU_CMD_RET, 0)
    assert lay.encode_ret(-1) == lay.pack_header(d.MPQEMU_CMD_RET, 8) + b"\xff" * 8


def test_sync_sysmem_layout() -> None:
    raw = lay.pack_sync_sysmem([(0x0, 0xC0000, 0x0), (0x100000, 0x1FF00000, 0x100000)])
    gpas, sizes, offsets = raw[:64], raw[64:128], raw[128:]
    assert struct.unpack("<8Q", gpas)[:2] == (0, 0x100000)
    assert struct.unpack("<8Q", sizes)[:3] == (0xC0000, 0x1FF00000, 0)
    assert struct.unpack("<8q", offsets)[:2] == (0, 0x100000)
    table = lay.unpack_sync_sysmem(raw)
    assert table.gpas[1] == 0x100000 and table.sizes[0] == 0xC0000 and len(table.offsets) == 8


def test_off_t_is_signed() -> None:
    raw = bytes(128) + struct.pack("<q", -4096) + bytes(56)
    assert lay.unpack_sync_sysmem(raw).offsets[0] == -4096


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(-(2**63), 2**63 - 1)),
        max_size=8,
    )
)
def test_sync_sysmem_round_trip(entries: list[tuple[int, int, int]]) -> None:
    table = lay.unpack_sync_sysmem(lay.pack_sync_sysmem(entries))
    assert list(zip(table.gpas, table.sizes, table.offsets, strict=True))[: len(entries)] == entries


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.booleans())
def test_bar_access_round_trip(addr: int, val: int, size: int, memory: bool) -> None:
    assert lay.unpack_bar_access(lay.pack_bar_access(addr, val, size, memory)) == (addr, val, size, memory)


def test_sync_sysmem_holds_at_most_eight_entries() -> None:
    from devmodels import UsageError

    with pytest.raises(UsageError, match="at most 8"):
        lay.pack_sync_sysmem([(0, 1, 0)] * 9)
