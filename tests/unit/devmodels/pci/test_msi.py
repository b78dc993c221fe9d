"""The MSI capability (devmodels.pci._msi), PCI 3.0 §6.8.1."""

from __future__ import annotations

import pytest

from devmodels import RecordingMsiSink, UsageError
from devmodels._trace import RecordingSink
from devmodels.pci import PciFunction, defs

FLAGS = defs.PCI_MSI_FLAGS


def _setup(vectors: int = 1, *, is_64bit: bool = True, mask: bool = True) -> tuple[PciFunction, int, RecordingMsiSink]:
    f = PciFunction(0x1234, 0x5678, 0xFF0000)
    msi = f.add_msi(vectors, is_64bit=is_64bit, per_vector_mask=mask)
    f.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER)  # MSI writes need bus mastering
    sink = RecordingMsiSink()
    f.msi_sink = sink
    return f, msi.offset, sink


def _program(f: PciFunction, cap: int, *, mme: int = 0, address: int = 0xFEE0_0000, data: int = 0x4000) -> None:
    assert f.msi is not None
    f.config_write(cap + 4, 4, address & 0xFFFF_FFFF)
    if f.msi.is_64bit:
        f.config_write(cap + 8, 4, address >> 32)
    f.config_write(f.msi._data_offset, 2, data)
    f.config_write(cap + FLAGS, 2, defs.PCI_MSI_FLAGS_ENABLE | mme << 4)


@pytest.mark.parametrize(
    ("is_64bit", "mask", "length", "data", "mask_at"),
    [(True, True, 24, 12, 16), (True, False, 14, 12, None), (False, True, 20, 8, 12), (False, False, 10, 8, None)],
)
def test_layout(is_64bit: bool, mask: bool, length: int, data: int, mask_at: int | None) -> None:
    f, cap, _ = _setup(8, is_64bit=is_64bit, mask=mask)
    assert f.msi is not None
    assert f.msi.length == length and cap == 0x40
    assert f.config_read(cap, 1) == defs.PCI_CAP_ID_MSI
    control = f.config_read(cap + FLAGS, 2)
    assert control & defs.PCI_MSI_FLAGS_QMASK == 3 << 1  # 8 vectors capable
    assert bool(control & defs.PCI_MSI_FLAGS_64BIT) == is_64bit
    assert bool(control & defs.PCI_MSI_FLAGS_MASKBIT) == mask
    assert f.msi._data_offset == cap + data
    f.config_write(cap + data, 2, 0xFFFF)
    assert f.config_read(cap + data, 2) == 0xFFFF
    if mask_at is not None:
        f.config_write(cap + mask_at, 4, 0xFFFF_FFFF)
        assert f.config_read(cap + mask_at, 4) == 0xFF  # only 8 mask bits exist
        f.config_write(cap + mask_at + 4, 4, 0xFFFF_FFFF)
        assert f.config_read(cap + mask_at + 4, 4) == 0  # pending is read-only
    # Capable count, 64-bit and mask-capable bits are read-only; enable/MME are not.
    f.config_write(cap + FLAGS, 2, 0xFFFF)
    assert f.config_read(cap + FLAGS, 2) == control | defs.PCI_MSI_FLAGS_ENABLE | defs.PCI_MSI_FLAGS_QSIZE


def test_bad_vector_counts() -> None:
    for vectors in (0, 3, 64, -1):
        with pytest.raises(UsageError):
            PciFunction(1, 2, 3).add_msi(vectors)


def test_disabled_msi_does_not_handle_notify() -> None:
    f, cap, sink = _setup()
    assert f.msi is not None
    assert f.msi.notify(0, sink) is False
    assert sink.messages == []


def test_address_low_bits_are_read_only() -> None:
    f, cap, sink = _setup(is_64bit=False)
    _program(f, cap, address=0xFEE0_1003)
    assert f.msi is not None and f.msi.address == 0xFEE0_1000
    f.signal(0)
    assert sink.messages == [(0xFEE0_1000, 0x4000)]


def test_64bit_address() -> None:
    f, cap, sink = _setup()
    _program(f, cap, address=0x1_2345_6780)
    f.signal(0)
    assert sink.messages == [(0x1_2345_6780, 0x4000)]


@pytest.mark.parametrize("mme", [0, 1, 2, 3, 4, 5])
def test_32_vectors_multiple_message_enable_replaces_low_data_bits(mme: int) -> None:
    f, cap, sink = _setup(32)
    _program(f, cap, mme=mme, data=0x40FF)
    enabled = 1 << mme
    assert f.msi is not None and f.msi.enabled_vectors == enabled
    with RecordingSink("pci.msi_dropped") as rec:
        for vector in range(33):
            assert f.msi.notify(vector, sink) is True
    expected = [(0xFEE0_0000, (0x40FF & ~(enabled - 1)) | v) for v in range(enabled)]
    assert sink.messages == expected
    assert len(rec.events) == 33 - enabled


def test_mme_above_capable_is_capped() -> None:
    f, cap, sink = _setup(4)
    _program(f, cap, mme=7)
    assert f.msi is not None and f.msi.enabled_vectors == 4


def test_regression_msi_negative_vector_is_dropped() -> None:
    # ``vector >= enabled`` let -1 through to ``mask >> -1``, which raised ValueError.
    f, cap, sink = _setup(4)
    _program(f, cap, mme=2)
    assert f.msi is not None
    with RecordingSink("pci.msi_dropped") as rec:
        assert f.msi.notify(-1, sink) is True
    assert sink.messages == [] and len(rec.events) == 1


def test_masked_vector_pends_and_is_delivered_once_on_unmask() -> None:
    f, cap, sink = _setup(32)
    _program(f, cap, mme=5)
    msi = f.msi
    assert msi is not None
    mask_reg = msi._mask_offset
    f.config_write(mask_reg, 4, 0x8000_0002)
    f.signal(1)  # signal() goes through MSI: MSI-X is absent
    msi.notify(31, sink)
    msi.notify(31, sink)
    msi.notify(0, sink)
    assert sink.messages == [(0xFEE0_0000, 0x4000)]
    assert msi.pending(1) and msi.pending(31) and not msi.pending(0)
    assert msi.masked(1) and not msi.masked(0)
    f.config_write(mask_reg, 4, 0x8000_0000)  # unmask vector 1 only
    assert sink.messages[1:] == [(0xFEE0_0000, 0x4001)]
    assert not msi.pending(1) and msi.pending(31)
    f.config_write(mask_reg, 4, 0)
    f.config_write(mask_reg, 4, 0)
    assert sink.messages[2:] == [(0xFEE0_0000, 0x401F)]
    assert f.config_read(msi._pending_offset, 4) == 0


def test_pending_waits_while_disabled() -> None:
    f, cap, sink = _setup(2)
    _program(f, cap, mme=1)
    msi = f.msi
    assert msi is not None
    f.config_write(msi._mask_offset, 4, 0b01)
    msi.notify(0, sink)
    f.config_write(cap + FLAGS, 2, 1 << 4)  # disable, keep MME
    f.config_write(msi._mask_offset, 4, 0)
    assert sink.messages == [] and msi.pending(0)
    f.config_write(cap + FLAGS, 2, defs.PCI_MSI_FLAGS_ENABLE | 1 << 4)
    assert sink.messages == [(0xFEE0_0000, 0x4000)]


def test_without_per_vector_mask_nothing_is_ever_masked() -> None:
    f, cap, sink = _setup(2, mask=False)
    _program(f, cap, mme=1)
    msi = f.msi
    assert msi is not None
    assert not msi.masked(0) and not msi.pending(0)
    msi.notify(1, sink)
    assert sink.messages == [(0xFEE0_0000, 0x4001)]


def test_covers() -> None:
    f, cap, _ = _setup()
    assert f.msi is not None
    assert f.msi.covers(cap, 1) and f.msi.covers(cap - 2, 4) and f.msi.covers(cap + 23, 1)
    assert not f.msi.covers(cap + 24, 4) and not f.msi.covers(cap - 4, 4)
