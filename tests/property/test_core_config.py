"""Properties of PCI config space masks and BAR sizing (devmodels.pci)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import PIO_LIMIT, Bus
from devmodels.pci import BarKind, ConfigSpace, PciFunction, PciHost, defs
from devmodels.pci._firmware import _size_bar

_SETTINGS = settings(max_examples=200, deadline=None)
WINDOW = 16  # bytes of config space the masks are drawn for, at 0xF0 (next to the end)
BASE = 0x100 - WINDOW


@_SETTINGS
@given(
    st.binary(min_size=WINDOW, max_size=WINDOW),
    st.binary(min_size=WINDOW, max_size=WINDOW),
    st.binary(min_size=WINDOW, max_size=WINDOW),
    st.lists(st.tuples(st.integers(BASE - 4, 0x104), st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1)), max_size=12),
)
def test_guest_writes_obey_the_masks(initial: bytes, rw: bytes, w1c_raw: bytes, writes: list[tuple[int, int, int]]) -> None:
    config = ConfigSpace()
    w1c = bytes(w & ~r & 0xFF for w, r in zip(w1c_raw, rw, strict=True))
    config.data[BASE:] = initial
    config.writable[BASE:] = rw
    config.w1c[BASE:] = w1c
    for offset, size, value in writes:
        before = bytes(config.data)
        config.write(offset, size, value)
        after = config.data
        for pos in range(config.size):
            old, new = before[pos], after[pos]
            k = pos - offset
            if not 0 <= k < size:
                assert new == old, "a byte outside the access changed"
                continue
            written = (value >> (8 * k)) & 0xFF
            r = config.writable[pos]
            c = config.w1c[pos]
            ro = ~(r | c) & 0xFF
            assert new & ro == old & ro, "a read-only bit changed"
            assert new & r == written & r, "an RW bit did not take the written value"
            assert new & c == old & c & ~written, "W1C cleared a bit not written as 1, or kept one"
        # Reads return the stored bytes; those past the end read as zero.
        assert config.read(offset, size) == int.from_bytes(after[offset : offset + size], "little")


bar_specs = st.one_of(
    st.tuples(st.just(BarKind.MEM32), st.integers(4, 31), st.booleans()),
    st.tuples(st.just(BarKind.MEM64), st.integers(4, 63), st.booleans()),
    st.tuples(st.just(BarKind.IO), st.integers(2, 8), st.just(False)),
)


@_SETTINGS
@given(st.integers(0, 4), bar_specs, st.integers(0, (1 << 64) - 1))
def test_bar_sizing_answer(index: int, spec: tuple[BarKind, int, bool], value: int) -> None:
    kind, bits, prefetch = spec
    size = 1 << bits
    f = PciFunction(0x1234, 1, 0)
    f.add_bar(index, size, None, kind, prefetchable=prefetch)
    offset = defs.PCI_BASE_ADDRESS_0 + 4 * index
    if kind is BarKind.IO:
        type_bits = defs.PCI_BASE_ADDRESS_SPACE_IO
    else:
        type_bits = (defs.PCI_BASE_ADDRESS_MEM_TYPE_64 if kind is BarKind.MEM64 else 0) | (
            defs.PCI_BASE_ADDRESS_MEM_PREFETCH if prefetch else 0
        )
    low_mask = 0xFFFF_FFFC if kind is BarKind.IO else 0xFFFF_FFF0
    f.config_write(offset, 4, 0xFFFF_FFFF)
    if kind is BarKind.MEM64:
        f.config_write(offset + 4, 4, 0xFFFF_FFFF)
        answer = f.config_read(offset, 4) | f.config_read(offset + 4, 4) << 32
        assert answer == (~(size - 1) & ((1 << 64) - 1) & ~0xF) | type_bits
    else:
        assert f.config_read(offset, 4) == (~(size - 1) & low_mask) | type_bits
    # Any programmed value keeps the type bits and loses the bits below the size.
    f.config_write(offset, 4, value & 0xFFFF_FFFF)
    if kind is BarKind.MEM64:
        f.config_write(offset + 4, 4, value >> 32)
        got = f.config_read(offset, 4) | f.config_read(offset + 4, 4) << 32
        assert got == (value & ~(size - 1) & ~0xF) | type_bits
    else:
        assert f.config_read(offset, 4) == (value & ~(size - 1) & low_mask) | type_bits
    # Firmware sizing through config cycles recovers the declaration and restores the BAR.
    host = PciHost(Bus("mmio"), Bus("pio", PIO_LIMIT))
    at = host.plug(f)
    before = bytes(f.config.data)
    info, used = _size_bar(host, at, index)
    assert info is not None
    assert (info.size, info.kind, info.prefetchable) == (size, kind.value, prefetch)
    assert used == (2 if kind is BarKind.MEM64 else 1)
    assert bytes(f.config.data) == before
