"""The construct descriptor structs and their precompiled struct twins agree (layouts rule 2)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels.e1000.layouts import RDESC, RX_DESC, TDESC_CONTEXT, TDESC_DATA, TDESC_LEGACY, TX_CONTEXT, TX_DATA, TX_LEGACY


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_structs_agree(raw: bytes) -> None:
    rx = RDESC.parse(raw)
    assert RX_DESC.unpack(raw) == (rx.buffer_addr, rx.length, rx.csum, rx.status, rx.errors, rx.special)
    legacy = TDESC_LEGACY.parse(raw)
    assert TX_LEGACY.unpack(raw) == (legacy.buffer_addr, legacy.length, legacy.cso, legacy.cmd, legacy.sta,
                                     legacy.css, legacy.special)
    ctx = TDESC_CONTEXT.parse(raw)
    f = TX_CONTEXT.unpack(raw)
    cmd = ctx.cmd_and_length
    assert f[:6] == (ctx.ipcss, ctx.ipcso, ctx.ipcse, ctx.tucss, ctx.tucso, ctx.tucse)
    assert f[6] == cmd.tucmd << 24 | cmd.dtyp << 20 | cmd.paylen
    assert f[7:] == (ctx.sta, ctx.hdrlen, ctx.mss)
    data = TDESC_DATA.parse(raw)
    d = TX_DATA.unpack(raw)
    assert d[1] == data.lower.dcmd << 24 | data.lower.dtyp << 20 | data.lower.dtalen
    assert d[2:] == (data.sta, data.popts, data.special)


def test_build_roundtrip() -> None:
    raw = os.urandom(16)
    assert TDESC_CONTEXT.build(TDESC_CONTEXT.parse(raw)) == raw
    assert TDESC_DATA.build(TDESC_DATA.parse(raw)) == raw
    assert all(s.sizeof() == 16 for s in (RDESC, TDESC_LEGACY, TDESC_CONTEXT, TDESC_DATA))
