"""PciFunction: header, BARs, command gating, INTx/status, reset, snapshots."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from devmodels import RecordingLevelSink, RecordingMsiSink, SnapshotError, UsageError
from devmodels._trace import RecordingSink
from devmodels.pci import BarKind, PciFunction, PciFunctionState, defs

CMD, STATUS, BAR0 = defs.PCI_COMMAND, defs.PCI_STATUS, defs.PCI_BASE_ADDRESS_0


class Regs:
    """A 16-byte register window that remembers writes."""

    def __init__(self) -> None:
        self.data: dict[int, int] = {}

    def read(self, offset: int, size: int) -> int:
        return self.data.get(offset, 0x5A)

    def write(self, offset: int, size: int, value: int) -> None:
        self.data[offset] = value


def _function(**kwargs: object) -> PciFunction:
    return PciFunction(0x8086, 0x100E, 0x020000, revision=3, subsystem_vendor_id=0x1AF4, subsystem_id=0x1100, **kwargs)  # type: ignore[arg-type]


def test_header_fields() -> None:
    f = _function()
    assert f.config_read(defs.PCI_VENDOR_ID, 4) == 0x100E_8086
    assert f.config_read(defs.PCI_REVISION_ID, 4) == 0x0200_0003
    assert f.config_read(defs.PCI_SUBSYSTEM_VENDOR_ID, 4) == 0x1100_1AF4
    assert f.config_read(defs.PCI_INTERRUPT_PIN, 1) == 1
    assert f.config_read(defs.PCI_HEADER_TYPE, 1) == 0
    assert f.config.size == 256 and _function(express=True).config.size == 4096
    assert repr(f) == "<PciFunction 8086:100e>"
    with pytest.raises(UsageError):
        _function(interrupt_pin=5)


def test_read_only_header_ignores_guest_writes() -> None:
    f = _function()
    before = bytes(f.config.data)
    for offset in [*range(0, 0x40, 4), 0x3D, 0xFD]:
        if offset != CMD:
            f.config_write(offset, 4, 0xFFFF_FFFF)
    changed = [i for i in range(256) if f.config.data[i] != before[i]]
    # Only Interrupt Line (0x3C) and Cache Line/Latency (0x0C/0x0D) are writable there.
    assert changed == [0x0C, 0x0D, 0x3C]


def test_command_register_writable_bits() -> None:
    f = _function()
    f.config_write(CMD, 2, 0xFFFF)
    assert f.command == (
        defs.PCI_COMMAND_IO
        | defs.PCI_COMMAND_MEMORY
        | defs.PCI_COMMAND_MASTER
        | defs.PCI_COMMAND_PARITY
        | defs.PCI_COMMAND_SERR
        | defs.PCI_COMMAND_INTX_DISABLE
    )
    assert f.dma_allowed
    f.config_write(CMD, 2, 0)
    assert not f.dma_allowed


def test_status_w1c_bits() -> None:
    f = _function()
    f.config.set_bits(STATUS, 2, defs.PCI_STATUS_REC_MASTER_ABORT | defs.PCI_STATUS_PARITY, True)
    f.config_write(STATUS, 2, defs.PCI_STATUS_PARITY | defs.PCI_STATUS_INTERRUPT)
    assert f.config_read(STATUS, 2) == defs.PCI_STATUS_REC_MASTER_ABORT


# -- BARs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "size", "prefetch", "low"),
    [
        (BarKind.MEM32, 0x1000, False, 0xFFFF_F000),
        (BarKind.MEM32, 0x10, True, 0xFFFF_FFF8),
        (BarKind.MEM32, 1 << 31, False, 0x8000_0000),
        (BarKind.IO, 0x20, False, 0xFFFF_FFE1),
        (BarKind.IO, 4, False, 0xFFFF_FFFD),
        (BarKind.MEM64, 0x4000, True, 0xFFFF_C00C),
    ],
)
def test_bar_sizing_reads_back_mask_and_type(kind: BarKind, size: int, prefetch: bool, low: int) -> None:
    f = _function()
    f.add_bar(0, size, Regs(), kind, prefetchable=prefetch)
    original = f.config_read(BAR0, 4)
    f.config_write(BAR0, 4, 0xFFFF_FFFF)
    assert f.config_read(BAR0, 4) == low
    f.config_write(BAR0, 4, original)
    assert f.config_read(BAR0, 4) == original


@pytest.mark.parametrize(("size", "low", "high"), [(0x1000, 0xFFFF_F004, 0xFFFF_FFFF), (1 << 32, 0x4, 0xFFFF_FFFF), (1 << 34, 0x4, 0xFFFF_FFFC), (1 << 63, 0x4, 0x8000_0000)])
def test_64bit_bar_upper_half_sizing(size: int, low: int, high: int) -> None:
    f = _function()
    f.add_bar(2, size, None, BarKind.MEM64)
    f.config_write(BAR0 + 8, 4, 0xFFFF_FFFF)
    f.config_write(BAR0 + 12, 4, 0xFFFF_FFFF)
    assert f.config_read(BAR0 + 8, 4) == low
    assert f.config_read(BAR0 + 12, 4) == high
    assert ((~((high << 32) | (low & ~0xF)) + 1) & (1 << 64) - 1) == size


def test_regression_64bit_bar_larger_than_2_63_is_refused() -> None:
    # A 2**64 BAR left no writable address bits: it read back as unimplemented.
    f = _function()
    with pytest.raises(UsageError, match="2\\*\\*63"):
        f.add_bar(0, 1 << 64, None, BarKind.MEM64)
    assert f.bars[0] is None


@pytest.mark.parametrize(
    ("index", "size", "kind"),
    [
        (6, 0x1000, BarKind.MEM32),
        (-1, 0x1000, BarKind.MEM32),
        (0, 8, BarKind.MEM32),
        (0, 0x1800, BarKind.MEM32),
        (0, 0, BarKind.MEM32),
        (0, -16, BarKind.MEM32),
        (0, 2, BarKind.IO),
        (0, 0x200, BarKind.IO),
        (0, 1 << 32, BarKind.MEM32),
        (5, 0x1000, BarKind.MEM64),
        (0, 4096.0, BarKind.MEM32),
    ],
)
def test_bad_bar_declarations(index: int, size: int, kind: BarKind) -> None:
    with pytest.raises(UsageError):
        _function().add_bar(index, size, None, kind)


def test_bar_slots_cannot_be_reused() -> None:
    f = _function()
    f.add_bar(0, 0x1000, None, BarKind.MEM64)
    with pytest.raises(UsageError, match="BAR1"):
        f.add_bar(1, 0x1000, None)
    with pytest.raises(UsageError, match="BAR0"):
        f.add_bar(0, 0x1000, None)
    f.add_bar(3, 0x1000, None)
    with pytest.raises(UsageError, match="BAR3"):
        f.add_bar(2, 0x1000, None, BarKind.MEM64)


def test_bar_address_is_gated_by_command() -> None:
    f = _function()
    f.add_bar(0, 0x1000, Regs())
    f.add_bar(1, 0x10, Regs(), BarKind.IO)
    f.add_bar(2, 0x1000, Regs(), BarKind.MEM64)
    f.config_write(BAR0, 4, 0xFEB0_0000)
    f.config_write(BAR0 + 4, 4, 0xC010)
    f.config_write(BAR0 + 8, 4, 0x2000_0000)
    f.config_write(BAR0 + 12, 4, 0x80)
    assert [f.bar_address(i) for i in range(6)] == [None] * 6
    f.config_write(CMD, 2, defs.PCI_COMMAND_IO)
    assert [f.bar_address(i) for i in range(3)] == [None, 0xC010, None]
    f.config_write(CMD, 2, defs.PCI_COMMAND_MEMORY)
    assert [f.bar_address(i) for i in range(3)] == [0xFEB0_0000, None, 0x80_2000_0000]
    assert f.bar_address(3) is None and f.bar_address(7) is None and f.bar_address(-1) is None
    f.config_write(BAR0, 4, 0)
    assert f.bar_address(0) is None  # address 0 means unassigned


def test_mapping_listeners_hear_decode_and_bar_changes_only() -> None:
    f = _function()
    f.add_bar(0, 0x1000, Regs())
    calls: list[PciFunction] = []
    f.add_mapping_listener(calls.append)
    f.config_write(defs.PCI_INTERRUPT_LINE, 1, 5)
    f.config_write(CMD, 2, defs.PCI_COMMAND_MASTER)
    assert calls == []
    f.config_write(BAR0, 4, 0xE000_0000)
    f.config_write(CMD, 2, defs.PCI_COMMAND_MEMORY)
    f.config_write(BAR0 + 4, 4, 0xFFFF_FFFF)  # BAR1 is not implemented: nothing changes
    assert calls == [f, f]
    f.remove_mapping_listener(calls.append)
    f.remove_mapping_listener(calls.append)
    f.config_write(CMD, 2, 0)
    assert len(calls) == 2


def test_bar_accesses_are_bounded_and_dispatched() -> None:
    f = _function()
    regs = Regs()
    f.add_bar(0, 0x10, regs)
    f.add_bar(1, 0x10, None)
    f.bar_write(0, 0xC, 4, 7)
    assert regs.data == {0xC: 7}
    assert f.bar_read(0, 0x8, 4) == 0x5A
    with RecordingSink("pci.bar_unhandled") as rec:
        assert f.bar_read(0, 0xD, 4) == 0  # runs past the end
        f.bar_write(0, 0x10, 1, 1)
        assert f.bar_read(0, -4, 4) == 0
        assert f.bar_read(1, 0, 4) == 0  # no device behind it
        f.bar_write(1, 0, 4, 1)
        assert f.bar_read(4, 0, 4) == 0  # not declared
        assert f.bar_read(9, 0, 4) == 0
    assert regs.data == {0xC: 7}
    assert len(rec.events) == 7


# -- INTx and status ----------------------------------------------------------------------


def test_intx_drives_sink_and_interrupt_status() -> None:
    f = _function()
    sink = RecordingLevelSink()
    f.intx = sink
    f.set_intx(True)
    assert sink.level and f.config_read(STATUS, 2) & defs.PCI_STATUS_INTERRUPT
    f.config_write(CMD, 2, defs.PCI_COMMAND_INTX_DISABLE)
    assert not sink.level  # masked by the command register...
    assert f.config_read(STATUS, 2) & defs.PCI_STATUS_INTERRUPT  # ...but still reported
    f.config_write(CMD, 2, 0)
    assert sink.level
    f.set_intx(False)
    assert not sink.level and not f.config_read(STATUS, 2) & defs.PCI_STATUS_INTERRUPT
    assert sink.history == [True, False, True, False]


def test_function_without_pin_never_asserts() -> None:
    f = _function(interrupt_pin=0)
    sink = RecordingLevelSink()
    f.intx = sink
    f.set_intx(True)
    assert not sink.level


def test_signal_prefers_msix_then_msi_then_reports_intx() -> None:
    f = _function()
    f.add_bar(0, 0x1000, None)
    msix = f.add_msix(2, bar=0)
    msi = f.add_msi(1)
    sink = RecordingMsiSink()
    f.msi_sink = sink
    f.config_write(CMD, 2, defs.PCI_COMMAND_MASTER)
    assert f.signal(0) is False and not f.msi_enabled and not f.msix_enabled
    f.config_write(msi.offset + defs.PCI_MSI_ADDRESS_LO, 4, 0xFEE0_1000)
    f.config_write(msi.offset + 12, 2, 0x31)
    f.config_write(msi.offset + defs.PCI_MSI_FLAGS, 2, defs.PCI_MSI_FLAGS_ENABLE)
    assert f.signal(0) is True and f.msi_enabled
    assert sink.messages[-1] == (0xFEE0_1000, 0x31)
    f.bar_write(0, 0, 4, 0xFEE0_2000)
    f.bar_write(0, 8, 4, 0x42)
    f.bar_write(0, 12, 4, 0)
    f.config_write(msix.offset + defs.PCI_MSIX_FLAGS, 2, defs.PCI_MSIX_FLAGS_ENABLE)
    assert f.signal(0) is True and f.msix_enabled
    assert sink.messages[-1] == (0xFEE0_2000, 0x42)
    assert len(sink.messages) == 2


def test_regression_msi_and_msix_need_bus_master_enable() -> None:
    # MSI/MSI-X messages are memory writes (PCIe 3.0 §7.5.1.1): they were sent with Bus
    # Master Enable clear, so a driver quiescing the function still got interrupts.
    f = _function()
    f.add_bar(0, 0x1000, None)
    msix = f.add_msix(2, bar=0)
    msi = f.add_msi(1)
    sink = RecordingMsiSink()
    f.msi_sink = sink
    f.config_write(msi.offset + defs.PCI_MSI_ADDRESS_LO, 4, 0xFEE0_1000)
    f.config_write(msi.offset + defs.PCI_MSI_FLAGS, 2, defs.PCI_MSI_FLAGS_ENABLE)
    with RecordingSink("pci.msi_blocked") as rec:
        assert f.signal(0) is True  # handled (no INTx fallback), but not sent
    assert sink.messages == [] and len(rec.events) == 1
    f.config_write(CMD, 2, defs.PCI_COMMAND_MASTER)
    f.signal(0)
    assert sink.messages == [(0xFEE0_1000, 0)]
    # MSI-X: a pending vector released while bus mastering is off is not sent either.
    f.bar_write(0, 0, 4, 0xFEE0_2000)
    f.config_write(msix.offset + defs.PCI_MSIX_FLAGS, 2, defs.PCI_MSIX_FLAGS_ENABLE)
    f.signal(0)
    assert msix.pending(0) and len(sink.messages) == 1
    f.config_write(CMD, 2, 0)
    f.bar_write(0, 12, 4, 0)
    assert len(sink.messages) == 1 and not msix.pending(0)
    f.config_write(CMD, 2, defs.PCI_COMMAND_MASTER)
    f.signal(0)
    assert sink.messages[1:] == [(0xFEE0_2000, 0)]


def test_add_msi_and_msix_only_once() -> None:
    f = _function()
    f.add_bar(0, 0x1000, None)
    f.add_bar(1, 0x10, None, BarKind.IO)
    f.add_msi()
    with pytest.raises(UsageError):
        f.add_msi()
    with pytest.raises(UsageError, match="memory BAR1"):
        f.add_msix(1, bar=1)
    with pytest.raises(UsageError, match="BAR2"):
        f.add_msix(1, bar=2)
    with pytest.raises(UsageError, match="cannot hold"):
        f.add_msix(256, bar=0)  # 4 KiB of table + PBA does not fit 4 KiB
    f.add_msix(8, bar=0)
    with pytest.raises(UsageError):
        f.add_msix(8, bar=0)


@pytest.mark.parametrize("bar", [6, -1, 100])
def test_regression_add_msix_bar_index_out_of_range(bar: int) -> None:
    # bars[bar] raised IndexError (or silently used BAR5 for -1) before the range check.
    f = _function()
    f.add_bar(5, 0x1000, None)
    with pytest.raises(UsageError, match="0..5"):
        f.add_msix(1, bar=bar)
    assert f.msix is None


# -- reset and snapshots ------------------------------------------------------------------


def _busy_function() -> tuple[PciFunction, RecordingLevelSink]:
    f = _function()
    f.add_bar(0, 0x1000, Regs())
    f.add_bar(2, 0x2000, None, BarKind.MEM64)
    f.add_msix(4, bar=2)
    f.add_msi(4)
    sink = RecordingLevelSink()
    f.intx = sink
    f.config_write(BAR0, 4, 0xE000_0000)
    f.config_write(CMD, 2, defs.PCI_COMMAND_MEMORY | defs.PCI_COMMAND_MASTER)
    f.bar_write(2, 16, 4, 0xFEE0_0000)
    f.set_intx(True)
    return f, sink


def test_reset_function_restores_power_on_image() -> None:
    f, sink = _busy_function()
    pristine = _function()
    pristine.add_bar(0, 0x1000, Regs())
    pristine.add_bar(2, 0x2000, None, BarKind.MEM64)
    pristine.add_msix(4, bar=2)
    pristine.add_msi(4)
    calls: list[PciFunction] = []
    f.add_mapping_listener(calls.append)
    f.reset_function()
    assert bytes(f.config.data) == bytes(pristine.config_read(i, 1) for i in range(256))
    assert f.bar_address(0) is None and not sink.level and calls == [f]
    assert f.msix is not None and f.msix.entry(1) == (0, 0, True)


def test_snapshot_round_trip() -> None:
    f, _ = _busy_function()
    state = f.pci_state()
    g, sink = _busy_function()
    g.reset_function()
    g.check_pci_state(state)
    g.load_pci_state(state)
    assert g.pci_state() == state
    assert g.bar_address(0) == 0xE000_0000 and sink.level
    assert g.msix is not None and g.msix.entry(1)[0] == 0xFEE0_0000


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: dataclasses.replace(s, version=2), "pci.version"),
        (lambda s: dataclasses.replace(s, config=s.config[:255]), "pci.config"),
        (lambda s: dataclasses.replace(s, config="x" * 256), "pci.config"),
        (lambda s: dataclasses.replace(s, config=b"\x87" + s.config[1:]), "pci.config"),  # vendor ID
        (lambda s: dataclasses.replace(s, config=s.config[:0x35] + b"\x01" + s.config[0x36:]), "pci.config"),
        (lambda s: dataclasses.replace(s, intx_level=1), "pci.intx_level"),
        (lambda s: dataclasses.replace(s, msix_table=None), "pci.msix"),
        (lambda s: dataclasses.replace(s, msix_table=s.msix_table[:-1]), "msix.table"),
        (lambda s: dataclasses.replace(s, msix_table=b"\x01" + s.msix_table[1:]), "msix.table"),
        (lambda s: dataclasses.replace(s, msix_table=s.msix_table[:12] + b"\x02" + s.msix_table[13:]), "msix.table"),
        (lambda s: dataclasses.replace(s, msix_pba=b"\x10" + bytes(7)), "msix.pba"),
        (lambda s: dataclasses.replace(s, msix_pba=bytes(16)), "msix.pba"),
        (lambda s: dataclasses.replace(s, msix_table=list(s.msix_table)), "pci.msix_table"),
        (lambda s: dataclasses.replace(s, msix_pba=7), "pci.msix_pba"),
    ],
)
def test_rejected_snapshot_changes_nothing(change: Callable[[PciFunctionState], PciFunctionState], field: str) -> None:
    f, sink = _busy_function()
    good = f.pci_state()
    bad = change(good)
    g, _ = _busy_function()
    g.reset_function()
    before = g.pci_state()
    with pytest.raises(SnapshotError) as info:
        g.check_pci_state(bad)
    assert info.value.field == field
    assert g.pci_state() == before


def test_snapshot_of_function_without_msix_must_have_none() -> None:
    f = _function()
    state = f.pci_state()
    assert state.msix_table is None and state.msix_pba is None
    with pytest.raises(SnapshotError, match="has MSI-X"):
        f.check_pci_state(dataclasses.replace(state, msix_table=b"", msix_pba=b""))


def test_snapshot_allows_dynamic_status_and_msi_pending_bits() -> None:
    f, _ = _busy_function()
    assert f.msi is not None
    state = f.pci_state()
    config = bytearray(state.config)
    config[STATUS] ^= defs.PCI_STATUS_INTERRUPT
    config[f.msi._pending_offset] = 0b1010
    f.check_pci_state(dataclasses.replace(state, config=bytes(config)))


def test_regression_snapshot_msi_pending_beyond_vectors() -> None:
    # The MSI Pending Bits dword was exempt from the read-only check entirely, so a
    # snapshot could set pending bits for vectors the function does not have.
    f, _ = _busy_function()
    assert f.msi is not None and f.msi.vectors == 4
    state = f.pci_state()
    config = bytearray(state.config)
    config[f.msi._pending_offset] = 0b1_0000
    with pytest.raises(SnapshotError, match="pending"):
        f.check_pci_state(dataclasses.replace(state, config=bytes(config)))


@pytest.mark.parametrize("state", [None, {"version": 1}, (1, b"", None, None, False)])
def test_regression_check_pci_state_wrong_type(state: object) -> None:
    # A non-state object raised AttributeError/TypeError instead of SnapshotError.
    f, _ = _busy_function()
    with pytest.raises(SnapshotError) as info:
        f.check_pci_state(state)  # type: ignore[arg-type]
    assert info.value.field == "pci"


def test_state_is_plain_data() -> None:
    f, _ = _busy_function()
    state = f.pci_state()
    assert isinstance(state, PciFunctionState)
    assert isinstance(state.config, bytes) and isinstance(state.msix_table, bytes)
    f.config_write(defs.PCI_INTERRUPT_LINE, 1, 0x33)
    assert state.config[defs.PCI_INTERRUPT_LINE] != 0x33
