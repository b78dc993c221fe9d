"""FIS codecs and memory-structure layouts: the struct hot paths against the construct definitions."""

from __future__ import annotations

import construct as cs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels.ahci import BadCommandFis, TaskFile, build_d2h, build_dma_setup, build_h2d, build_pio_setup, build_sdb
from devmodels.ahci import parse_h2d
from devmodels.ahci import layouts as L

u8 = st.integers(0, 0xFF)


def test_layout_sizes_match_the_specifications() -> None:
    assert L.CommandHeader.sizeof() == L.CMD_HEADER.size == 32
    assert L.PrdtEntry.sizeof() == L.PRD_ENTRY.size == 16
    assert L.CommandTableHeader.sizeof() == 0x80
    assert L.RegH2DFis.sizeof() == L.H2D_FIS.size == 20
    assert L.RegD2HFis.sizeof() == L.D2H_FIS.size == 20
    assert L.PioSetupFis.sizeof() == L.PIO_SETUP_FIS.size == 20
    assert L.DmaSetupFis.sizeof() == L.DMA_SETUP_FIS.size == 28
    assert L.SetDeviceBitsFis.sizeof() == L.SDB_FIS.size == 8
    assert L.ReceivedFis.sizeof() == 256


@settings(max_examples=200, deadline=None)
@given(command=u8, features=st.integers(0, 0xFFFF), lba=st.integers(0, (1 << 48) - 1),
       count=st.integers(0, 0xFFFF), device=u8, control=u8, icc=u8, c=st.booleans(), pm=st.integers(0, 15))
def test_h2d_round_trip_and_construct_agree(command: int, features: int, lba: int, count: int, device: int,
                                            control: int, icc: int, c: bool, pm: int) -> None:
    tf = TaskFile(command, features, lba, count, device, control, icc, c, pm)
    raw = build_h2d(tf)
    assert parse_h2d(raw) == tf
    parsed = L.RegH2DFis.parse(raw)
    assert parsed.flags.c == c and parsed.flags.pm_port == pm
    assert parsed.lba_low | parsed.lba_mid << 8 | parsed.lba_high << 16 == lba & 0xFF_FFFF
    assert parsed.lba_low_exp | parsed.lba_mid_exp << 8 | parsed.lba_high_exp << 16 == lba >> 24
    assert parsed.features | parsed.features_exp << 8 == features
    assert parsed.count | parsed.count_exp << 8 == count


def test_parse_h2d_rejects_other_fis_types_and_short_input() -> None:
    with pytest.raises(BadCommandFis):
        parse_h2d(b"\x34" + bytes(19))
    with pytest.raises(BadCommandFis):
        parse_h2d(b"\x27" + bytes(10))


def test_lba28_uses_device_low_nibble() -> None:
    assert TaskFile(lba=0x12_3456, device=0x4A).lba28 == 0xA12_3456


@settings(max_examples=100, deadline=None)
@given(status=u8, error=u8, lba=st.integers(0, (1 << 48) - 1), count=st.integers(0, 0xFFFF), i=st.booleans())
def test_d2h_matches_construct(status: int, error: int, lba: int, count: int, i: bool) -> None:
    p = L.RegD2HFis.parse(build_d2h(status, error, lba, count, 0xE0, interrupt=i))
    assert (p.status, p.error, p.flags.i, p.device) == (status, error, i, 0xE0)
    lba_bytes = [p.lba_low, p.lba_mid, p.lba_high, p.lba_low_exp, p.lba_mid_exp, p.lba_high_exp]
    assert sum(b << (8 * k) for k, b in enumerate(lba_bytes)) == lba
    assert p.count | p.count_exp << 8 == count


def test_pio_setup_dma_setup_and_sdb_match_construct() -> None:
    p = L.PioSetupFis.parse(build_pio_setup(0x58, 0x50, 512, to_host=True))
    assert (p.flags.i, p.flags.d, p.status, p.e_status, p.transfer_count) == (True, True, 0x58, 0x50, 512)
    assert L.PioSetupFis.parse(build_pio_setup(0x58, 0x50, 1 << 20, to_host=False)).transfer_count == 0xFFFF
    q = L.DmaSetupFis.parse(build_dma_setup(17, 4096, to_host=True))
    assert (q.dma_buffer_id, q.transfer_count, q.flags.d, q.flags.i, q.flags.a) == (17, 4096, True, False, False)
    s = L.SetDeviceBitsFis.parse(build_sdb(0x41, 0x10, 0x8000_0001))
    assert (s.status.status_hi, s.status.status_lo, s.error, s.sactive, s.flags.i) == (4, 1, 0x10, 0x8000_0001, True)
    assert build_sdb(0xFF, 0, 0)[2] == 0x77  # BSY and DRQ are not carried by SDB


def test_command_header_and_prd_bitfields() -> None:
    raw = L.CMD_HEADER.pack(5 | 1 << 5 | 1 << 6 | 1 << 10 | 3 << 12 | 7 << 16, 123, 0x1000, 0x2)
    h = L.CommandHeader.parse(raw)
    assert (h.dw0.cfl, h.dw0.a, h.dw0.w, h.dw0.c, h.dw0.pmp, h.dw0.prdtl) == (5, True, True, True, 3, 7)
    assert (h.prdbc, h.ctba, h.ctbau) == (123, 0x1000, 2)
    e = L.PrdtEntry.parse(L.PRD_ENTRY.pack(0x2000, 1, 0, 1 << 31 | 4095))
    assert (e.dba, e.dbau, e.dw3.i, e.dw3.dbc) == (0x2000, 1, True, 4095)
    with pytest.raises(cs.ConstError):
        L.RegH2DFis.parse(bytes(20))
