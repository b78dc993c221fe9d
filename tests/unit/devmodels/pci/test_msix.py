"""The MSI-X capability, table and PBA (devmodels.pci._msix), PCI 3.0 §6.8.2."""

from __future__ import annotations

import pytest

from devmodels import RecordingMsiSink, SnapshotError, UsageError
from devmodels.pci import ConfigSpace, CapabilityList, MsixCapability, PciFunction, defs

ENABLE, MASKALL = defs.PCI_MSIX_FLAGS_ENABLE, defs.PCI_MSIX_FLAGS_MASKALL


def _setup(vectors: int = 4, bar_size: int = 0x1000, **kwargs: int) -> tuple[PciFunction, MsixCapability, RecordingMsiSink]:
    f = PciFunction(0x1234, 0x5678, 0xFF0000)
    f.add_bar(1, bar_size, None)
    msix = f.add_msix(vectors, bar=1, **kwargs)
    f.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER)  # MSI-X writes need bus mastering
    sink = RecordingMsiSink()
    f.msi_sink = sink
    return f, msix, sink


def _entry(f: PciFunction, vector: int, address: int, data: int, masked: bool) -> None:
    base = vector * 16
    f.bar_write(1, base, 4, address & 0xFFFF_FFFF)
    f.bar_write(1, base + 4, 4, address >> 32)
    f.bar_write(1, base + 8, 4, data)
    f.bar_write(1, base + 12, 4, int(masked))


def _control(f: PciFunction, msix: MsixCapability, value: int) -> None:
    f.config_write(msix.offset + defs.PCI_MSIX_FLAGS, 2, value)


def test_capability_fields() -> None:
    f, msix, _ = _setup(5, table_offset=0x800, pba_offset=0x100)
    cap = msix.offset
    assert f.config_read(cap, 1) == defs.PCI_CAP_ID_MSIX
    assert f.config_read(cap + 2, 2) == 4  # table size N-1
    assert f.config_read(cap + 4, 4) == 0x800 | 1
    assert f.config_read(cap + 8, 4) == 0x100 | 1
    f.config_write(cap + 2, 2, 0xFFFF)
    assert f.config_read(cap + 2, 2) == ENABLE | MASKALL | 4
    f.config_write(cap + 4, 8, 0)
    assert f.config_read(cap + 4, 4) == 0x801  # BIR/offsets are read-only
    assert (msix.table_len, msix.pba_len, msix.end) == (80, 8, 0x850)


def test_default_pba_follows_table() -> None:
    _, msix, _ = _setup(65)
    assert msix.pba_offset == 65 * 16 and msix.pba_len == 16


@pytest.mark.parametrize(
    ("vectors", "bar", "table", "pba"),
    [(0, 0, 0, None), (2049, 0, 0, None), (1, 6, 0, None), (1, 0, 4, None), (1, 0, 0, 12), (4, 0, 0, 0x30), (4, 0, 0x40, 0x40)],
)
def test_bad_declarations(vectors: int, bar: int, table: int, pba: int | None) -> None:
    config = ConfigSpace()
    with pytest.raises(UsageError):
        MsixCapability(config, CapabilityList(config), vectors, bar, table, pba)


def test_reset_masks_every_vector() -> None:
    f, msix, _ = _setup(3)
    for v in range(3):
        assert msix.entry(v) == (0, 0, True)
        assert f.bar_read(1, v * 16 + 12, 4) == 1
    _entry(f, 1, 0xFEE0_0000, 5, masked=False)
    msix.reset()
    assert msix.entry(1) == (0, 0, True)


def test_table_write_masks() -> None:
    f, msix, _ = _setup(2)
    f.bar_write(1, 0, 8, (1 << 64) - 1)  # address low 2 bits are RO zero
    f.bar_write(1, 8, 8, (1 << 64) - 1)  # vector control: only bit 0 exists
    assert f.bar_read(1, 0, 8) == 0xFFFF_FFFF_FFFF_FFFC
    assert f.bar_read(1, 8, 4) == 0xFFFF_FFFF
    assert f.bar_read(1, 12, 4) == 1
    f.bar_write(1, 13, 1, 0xFF)
    assert f.bar_read(1, 12, 4) == 1
    f.bar_write(1, 12, 1, 0xFE)
    assert f.bar_read(1, 12, 4) == 0
    assert msix.entry(0) == (0xFFFF_FFFF_FFFF_FFFC, 0xFFFF_FFFF, False)


def test_notify_when_disabled_is_not_handled() -> None:
    f, msix, sink = _setup()
    _entry(f, 0, 0xFEE0_0000, 1, masked=False)
    assert msix.notify(0, sink) is False
    assert sink.messages == [] and not msix.pending(0)


def test_delivery_and_pending() -> None:
    f, msix, sink = _setup()
    _entry(f, 0, 0xFEE0_0000, 0x10, masked=False)
    _entry(f, 1, 0xFEE0_1000, 0x11, masked=True)
    _control(f, msix, ENABLE)
    assert f.signal(0) and f.signal(1)
    assert sink.messages == [(0xFEE0_0000, 0x10)]
    assert msix.pending(1) and f.bar_read(1, msix.pba_offset, 8) == 0b10
    f.bar_write(1, 16 + 12, 4, 0)  # unmask vector 1
    assert sink.messages[1:] == [(0xFEE0_1000, 0x11)]
    assert not msix.pending(1)
    f.bar_write(1, 16 + 12, 4, 0)
    assert len(sink.messages) == 2


def test_out_of_range_vectors_are_dropped_when_enabled() -> None:
    f, msix, sink = _setup(2)
    _control(f, msix, ENABLE)
    for vector in (-1, 2, 0xFFFF):
        assert msix.notify(vector, sink) is True
    assert sink.messages == [] and not any(msix.pba)


def test_function_mask_holds_everything() -> None:
    f, msix, sink = _setup()
    for v in range(4):
        _entry(f, v, 0xFEE0_0000 + 16 * v, v, masked=v == 3)
    _control(f, msix, ENABLE | MASKALL)
    for v in range(4):
        f.signal(v)
    assert sink.messages == [] and [msix.pending(v) for v in range(4)] == [True] * 4
    f.bar_write(1, 12, 4, 0)  # an entry write while function-masked delivers nothing
    assert sink.messages == []
    _control(f, msix, ENABLE)
    assert sink.messages == [(0xFEE0_0000 + 16 * v, v) for v in range(3)]
    assert [msix.pending(v) for v in range(4)] == [False, False, False, True]
    _control(f, msix, ENABLE)
    assert len(sink.messages) == 3


def test_pending_survives_disable_and_is_sent_on_reenable() -> None:
    f, msix, sink = _setup()
    _entry(f, 2, 0xFEE0_0000, 2, masked=True)
    _control(f, msix, ENABLE)
    f.signal(2)
    _control(f, msix, 0)
    f.bar_write(1, 2 * 16 + 12, 4, 0)
    assert sink.messages == []
    _control(f, msix, ENABLE)
    assert sink.messages == [(0xFEE0_0000, 2)]


def test_pba_is_read_only_and_bounded() -> None:
    f, msix, sink = _setup(2, table_offset=0, pba_offset=0x800)
    _control(f, msix, ENABLE)
    f.signal(1)
    f.bar_write(1, 0x800, 8, 0)
    assert f.bar_read(1, 0x800, 8) == 0b10
    assert f.bar_read(1, 0x804, 4) == 0
    assert f.bar_read(1, 0x808, 4) == 0  # past the PBA, no device: reads zero
    assert f.bar_read(1, 0x20, 4) == 0  # past the table


def test_accesses_across_entries() -> None:
    f, msix, sink = _setup(2)
    _entry(f, 0, 0xFEE0_0000, 0xA, masked=True)
    _entry(f, 1, 0xFEE0_0000, 0xB, masked=True)
    _control(f, msix, ENABLE)
    f.signal(0)
    f.signal(1)
    f.bar_write(1, 12, 8, 0)  # unaligned 8 bytes: ctrl of 0 and address of 1
    assert sink.messages == [(0xFEE0_0000, 0xA)]
    assert msix.pending(1)
    assert msix.in_table(12, 8) and not msix.in_table(28, 8) and msix.in_pba(32, 8)


def test_check_state() -> None:
    _, msix, _ = _setup(4)
    good_table, good_pba = bytes(msix.table), bytes(msix.pba)
    msix.check_state(good_table, good_pba)
    with pytest.raises(SnapshotError):
        msix.check_state(good_table + b"\0", good_pba)
    with pytest.raises(SnapshotError):
        msix.check_state(good_table, good_pba[:4])
    with pytest.raises(SnapshotError, match="reserved"):
        msix.check_state(b"\x03" + good_table[1:], good_pba)
    with pytest.raises(SnapshotError, match="beyond"):
        msix.check_state(good_table, b"\x10" + bytes(7))
    msix.check_state(good_table, b"\x0f" + bytes(7))
    msix.load_state(good_table, b"\x0f" + bytes(7))
    assert all(msix.pending(v) for v in range(4))
