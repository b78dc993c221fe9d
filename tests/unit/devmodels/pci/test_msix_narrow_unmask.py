"""Clearing a vector's Mask bit with a 1- or 2-byte write delivers its pending message.

PCI 3.0 §6.8.2.9: when the Mask bit of a vector whose Pending bit is set is cleared, the
function sends the message (and clears the Pending bit). Our table takes accesses of any
size (``_msix`` rule 3), so a byte or word write to the Vector Control dword that clears
bit 0 unmasks the vector exactly as a dword write does; the message must not stay pending.
A write of the other bytes of that dword (reserved bits) leaves the vector masked.
"""

from __future__ import annotations

import pytest

from devmodels import RecordingMsiSink
from devmodels.pci import MsixCapability, PciFunction, defs

VECTOR_CTRL = defs.PCI_MSIX_ENTRY_VECTOR_CTRL


def _address(vector: int) -> int:
    return 0xFEE0_0000 | vector << 12


def _pending_vector(vector: int) -> tuple[PciFunction, MsixCapability, RecordingMsiSink]:
    """MSI-X enabled, ``vector`` programmed but masked, signalled once (so pending)."""
    f = PciFunction(0x1234, 0x5678, 0xFF0000)
    f.add_bar(1, 0x1000, None)
    msix = f.add_msix(4, bar=1)
    f.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER)
    sink = RecordingMsiSink()
    f.msi_sink = sink
    base = vector * defs.PCI_MSIX_ENTRY_SIZE
    f.bar_write(1, base, 4, _address(vector))
    f.bar_write(1, base + 4, 4, 0)
    f.bar_write(1, base + 8, 4, 0x40 + vector)
    f.bar_write(1, base + VECTOR_CTRL, 4, defs.PCI_MSIX_ENTRY_CTRL_MASKBIT)
    f.config_write(msix.offset + defs.PCI_MSIX_FLAGS, 2, defs.PCI_MSIX_FLAGS_ENABLE)
    f.signal(vector)
    assert sink.messages == [] and msix.pending(vector)
    return f, msix, sink


@pytest.mark.parametrize("vector", [0, 3])
@pytest.mark.parametrize("size", [1, 2])
def test_narrow_unmask_delivers_the_pending_message(vector: int, size: int) -> None:
    f, msix, sink = _pending_vector(vector)
    f.bar_write(1, vector * defs.PCI_MSIX_ENTRY_SIZE + VECTOR_CTRL, size, 0)
    assert msix.entry(vector)[2] is False  # unmasked
    assert sink.messages == [(_address(vector), 0x40 + vector)]
    assert not msix.pending(vector) and f.bar_read(1, msix.pba_offset, 8) == 0
    f.signal(vector)  # unmasked now: straight out
    assert len(sink.messages) == 2


@pytest.mark.parametrize(("offset", "size"), [(1, 1), (2, 1), (3, 1), (2, 2)])
def test_writes_to_the_reserved_bytes_keep_the_vector_masked(offset: int, size: int) -> None:
    f, msix, sink = _pending_vector(1)
    f.bar_write(1, defs.PCI_MSIX_ENTRY_SIZE + VECTOR_CTRL + offset, size, 0)
    assert msix.entry(1)[2] is True
    assert sink.messages == [] and msix.pending(1)
    f.bar_write(1, defs.PCI_MSIX_ENTRY_SIZE + VECTOR_CTRL, 1, 0)  # then bit 0 itself
    assert sink.messages == [(_address(1), 0x41)]


def test_a_narrow_write_that_keeps_the_mask_set_delivers_nothing() -> None:
    f, msix, sink = _pending_vector(2)
    f.bar_write(1, 2 * defs.PCI_MSIX_ENTRY_SIZE + VECTOR_CTRL, 1, defs.PCI_MSIX_ENTRY_CTRL_MASKBIT)
    assert sink.messages == [] and msix.pending(2)
