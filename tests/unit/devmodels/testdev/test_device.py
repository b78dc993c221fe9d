"""The PCI test device: registers, DMA, interrupts, snapshots (devmodels.testdev)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from devmodels import GuestMemory, MemoryRegion, RecordingLevelSink, RecordingMsiSink, SnapshotError, from_dict, to_dict
from devmodels._trace import RecordingSink
from devmodels.pci import defs
from devmodels.testdev import PciTestDevice, PciTestDeviceState
from devmodels.testdev import regs as r

RAM = 0x10_0000  # 1 MiB of RAM, then 4 KiB of ROM at 0x20_0000
ROM = 0x20_0000


@pytest.fixture
def memory() -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, RAM), MemoryRegion(ROM, bytearray(0x1000), readonly=True)])


@pytest.fixture
def dev(memory: GuestMemory) -> PciTestDevice:
    d = PciTestDevice(memory)
    d.intx = RecordingLevelSink()
    d.msi_sink = RecordingMsiSink()
    d.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY | defs.PCI_COMMAND_MASTER)
    return d


def _rd(d: PciTestDevice, reg: int, size: int = 4) -> int:
    return d.bar_read(0, reg, size)


def _wr(d: PciTestDevice, reg: int, value: int, size: int = 4) -> None:
    d.bar_write(0, reg, size, value)


def _dma(d: PciTestDevice, src: int, dst: int, length: int) -> None:
    _wr(d, r.DMA_SRC, src, 8)
    _wr(d, r.DMA_DST, dst, 8)
    _wr(d, r.DMA_LEN, length)
    _wr(d, r.DMA_CMD, r.DMA_CMD_START)


def _level(d: PciTestDevice) -> bool:
    assert isinstance(d.intx, RecordingLevelSink)
    return d.intx.level


def _msgs(d: PciTestDevice) -> list[tuple[int, int]]:
    assert isinstance(d.msi_sink, RecordingMsiSink)
    return d.msi_sink.messages  # type: ignore[return-value]


def test_identity_and_bars(dev: PciTestDevice) -> None:
    assert dev.config_read(0, 4) == r.TESTDEV_DEVICE_ID << 16 | r.TESTDEV_VENDOR_ID
    assert dev.config_read(defs.PCI_REVISION_ID, 4) == r.TESTDEV_CLASS << 8 | 1
    assert [(b.size, b.kind.value) for b in dev.bars if b] == [(0x1000, "mem32"), (0x10, "io"), (0x1000, "mem32")]
    assert dev.msix is not None and dev.msix.vectors == r.MSIX_VECTORS and dev.msi is not None


def test_registers(dev: PciTestDevice) -> None:
    assert _rd(dev, r.ID) == r.TESTDEV_MAGIC
    _wr(dev, r.ID, 0)
    assert _rd(dev, r.ID) == r.TESTDEV_MAGIC
    _wr(dev, r.SCRATCH, 0x1234_5678)
    assert _rd(dev, r.SCRATCH) == 0x1234_5678
    _wr(dev, r.SCRATCH + 1, 0xAB, 1)  # SCRATCH allows byte lanes
    assert _rd(dev, r.SCRATCH) == 0x1234_AB78
    assert _rd(dev, r.IRQ_RAISE) == 0 and _rd(dev, r.DMA_CMD) == 0  # write-only
    assert _rd(dev, 0x800) == 0  # unimplemented offset
    assert dev.bar_read(1, r.ID, 4) == r.TESTDEV_MAGIC
    dev.bar_write(1, r.SCRATCH, 4, 7)
    assert dev.bar_read(1, r.SCRATCH, 4) == 7 == _rd(dev, r.SCRATCH)
    assert dev.bar_read(1, 8, 4) == 0 and dev.bar_read(1, r.ID, 2) == 0
    dev.bar_write(1, r.ID, 4, 0)
    assert _rd(dev, r.ID) == r.TESTDEV_MAGIC


def test_dma_copy(dev: PciTestDevice, memory: GuestMemory) -> None:
    memory.write(0x1000, b"payload!" * 64)
    _dma(dev, 0x1000, 0x8000, 512)
    assert memory.read(0x8000, 512) == b"payload!" * 64
    assert _rd(dev, r.DMA_STATUS) == r.DMA_STATUS_DONE
    assert _rd(dev, r.IRQ_STATUS) == r.IRQ_DMA_DONE
    assert _level(dev)


def test_dma_overlapping_and_boundary_copies(dev: PciTestDevice, memory: GuestMemory) -> None:
    memory.write(0, bytes(range(256)))
    _dma(dev, 0, 16, 64)  # overlapping source and destination
    assert memory.read(16, 64) == bytes(range(64))
    _dma(dev, 0, RAM - 8, 8)  # ends exactly at the end of RAM
    assert _rd(dev, r.DMA_STATUS) == r.DMA_STATUS_DONE
    _dma(dev, 0, 0, r.DMA_MAX_LEN)
    assert _rd(dev, r.DMA_STATUS) == r.DMA_STATUS_DONE


@pytest.mark.parametrize(
    ("src", "dst", "length"),
    [
        (RAM - 4, 0, 8),  # source runs off the end of RAM
        (0, RAM - 4, 8),  # destination runs off the end
        (0x3000_0000, 0, 4),  # source not RAM at all
        (0, ROM, 4),  # destination read-only
        ((1 << 64) - 4, 0, 8),  # source wraps past 2**64
        (0, (1 << 64) - 1, 2),  # destination wraps past 2**64
        (0, 0x1000, r.DMA_MAX_LEN + 1),  # oversized
        (0, 0x1000, 0xFFFF_FFFF),  # hugely oversized: bounded, no allocation
        ((1 << 64) - 1, (1 << 64) - 1, 0xFFFF_FFFF),
    ],
)
def test_hostile_dma_ends_in_error_status(dev: PciTestDevice, memory: GuestMemory, src: int, dst: int, length: int) -> None:
    memory.write(0, b"\xAA" * 0x2000)
    ram_before = memory.read(0, RAM)
    with RecordingSink("testdev.dma") as rec:
        _dma(dev, src, dst, length)
    assert _rd(dev, r.DMA_STATUS) == r.DMA_STATUS_ERROR
    assert _rd(dev, r.IRQ_STATUS) == r.IRQ_DMA_ERROR
    assert memory.read(0, RAM) == ram_before
    assert _level(dev)
    assert len(rec.events) == 1 and "error" in rec.events[0][1]


def test_dma_with_bus_master_off_is_refused(dev: PciTestDevice, memory: GuestMemory) -> None:
    memory.write(0, b"src!")
    dev.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY)
    _dma(dev, 0, 0x100, 4)
    assert memory.read(0x100, 4) == bytes(4)
    assert _rd(dev, r.DMA_STATUS) == r.DMA_STATUS_ERROR
    assert _rd(dev, r.IRQ_STATUS) == r.IRQ_DMA_ERROR


def test_dma_cmd_without_start_bit_does_nothing(dev: PciTestDevice, memory: GuestMemory) -> None:
    memory.write(0, b"data")
    _wr(dev, r.DMA_SRC, 0, 8)
    _wr(dev, r.DMA_DST, 0x100, 8)
    _wr(dev, r.DMA_LEN, 4)
    _wr(dev, r.DMA_CMD, 0b10)
    assert memory.read(0x100, 4) == bytes(4)
    assert _rd(dev, r.DMA_STATUS) == r.DMA_STATUS_IDLE


def test_intx_follows_status_until_acknowledged(dev: PciTestDevice) -> None:
    _wr(dev, r.IRQ_RAISE, 0b1100)
    assert _rd(dev, r.IRQ_STATUS) == 0b1100 and _level(dev)
    _wr(dev, r.IRQ_ACK, 0b0100)
    assert _level(dev)
    _wr(dev, r.IRQ_ACK, 0b1000)
    assert not _level(dev) and _rd(dev, r.IRQ_STATUS) == 0
    dev.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY | defs.PCI_COMMAND_INTX_DISABLE)
    _wr(dev, r.IRQ_RAISE, 1)
    assert not _level(dev)
    assert dev.config_read(defs.PCI_STATUS, 2) & defs.PCI_STATUS_INTERRUPT


def test_msix_interrupts(dev: PciTestDevice) -> None:
    assert dev.msix is not None
    dev.bar_write(2, 0, 4, 0xFEE0_0000)
    dev.bar_write(2, 8, 4, 0x31)
    dev.bar_write(2, 12, 4, 0)
    dev.config_write(dev.msix.offset + 2, 2, defs.PCI_MSIX_FLAGS_ENABLE)
    _wr(dev, r.IRQ_RAISE, 1)
    _wr(dev, r.IRQ_RAISE, 1)  # no new bit, no new message
    _wr(dev, r.IRQ_RAISE, 2)
    assert _msgs(dev) == [(0xFEE0_0000, 0x31)] * 2
    assert not _level(dev)
    dev.bar_write(2, 12, 4, 1)  # mask vector 0
    _wr(dev, r.IRQ_ACK, 3)
    _wr(dev, r.IRQ_RAISE, 4)
    assert len(_msgs(dev)) == 2 and dev.msix.pending(0)
    dev.bar_write(2, 12, 4, 0)
    assert len(_msgs(dev)) == 3 and not dev.msix.pending(0)


def test_msi_interrupts(dev: PciTestDevice) -> None:
    assert dev.msi is not None
    cap = dev.msi.offset
    dev.config_write(cap + 4, 4, 0xFEE0_2000)
    dev.config_write(dev.msi._data_offset, 2, 0x55)
    dev.config_write(cap + 2, 2, defs.PCI_MSI_FLAGS_ENABLE)
    _wr(dev, r.IRQ_RAISE, 1)
    assert _msgs(dev) == [(0xFEE0_2000, 0x55)] and not _level(dev)


def test_reset(dev: PciTestDevice, memory: GuestMemory) -> None:
    _wr(dev, r.SCRATCH, 9)
    _wr(dev, r.IRQ_RAISE, 1)
    dev.reset()
    assert _rd(dev, r.SCRATCH) == 0
    assert dev.registers["SCRATCH"] == 0 and dev.registers["IRQ_STATUS"] == 0
    assert dev.command == 0 and not _level(dev)


# -- snapshots ----------------------------------------------------------------------------


def _busy(dev: PciTestDevice, memory: GuestMemory) -> None:
    _wr(dev, r.SCRATCH, 0xFEED)
    _dma(dev, 0, 0x100, 16)
    dev.config_write(defs.PCI_BASE_ADDRESS_0, 4, 0xC000_0000)
    dev.bar_write(2, 0, 4, 0xFEE0_0000)


def test_snapshot_round_trip_through_json(dev: PciTestDevice, memory: GuestMemory) -> None:
    _busy(dev, memory)
    state = dev.state()
    data = json.loads(json.dumps(to_dict(state)))
    restored = from_dict(PciTestDeviceState, data)
    assert restored == state
    other = PciTestDevice(memory)
    sink = RecordingLevelSink()
    other.intx = sink
    other.restore(restored)
    assert other.state() == state
    assert other.bar_read(0, r.SCRATCH, 4) == 0xFEED
    assert other.bar_address(0) == 0xC000_0000
    assert sink.level  # the DMA-done interrupt was still pending


def _bad_states(state: PciTestDeviceState) -> list[tuple[str, object]]:
    regs = dict(state.registers)
    pairs = tuple(sorted(regs.items()))
    return [
        ("version", dataclasses.replace(state, version=0)),
        ("pci.version", dataclasses.replace(state, pci=dataclasses.replace(state.pci, version=9))),
        ("registers", dataclasses.replace(state, registers=pairs[:-1])),
        ("registers", dataclasses.replace(state, registers=pairs + ((0x7F0, 0),))),
        ("registers", dataclasses.replace(state, registers=pairs + (pairs[0],))),
        ("registers[SCRATCH]", dataclasses.replace(state, registers=tuple(sorted({**regs, r.SCRATCH: 1 << 32}.items())))),
        ("registers[DMA_SRC]", dataclasses.replace(state, registers=tuple(sorted({**regs, r.DMA_SRC: -1}.items())))),
        ("registers[ID]", dataclasses.replace(state, registers=tuple(sorted({**regs, r.ID: 0}.items())))),
        ("pci.config", dataclasses.replace(state, pci=dataclasses.replace(state.pci, config=bytes(256)))),
        # wrong shapes
        ("state", {"version": 1}),
        ("pci", dataclasses.replace(state, pci=None)),  # type: ignore[arg-type]
        ("registers", dataclasses.replace(state, registers=[list(p) for p in pairs])),  # type: ignore[arg-type]
        ("registers", dataclasses.replace(state, registers=((0, 1, 2),))),  # type: ignore[arg-type]
        ("registers", dataclasses.replace(state, registers=(5,))),  # type: ignore[arg-type]
        ("registers.offset", dataclasses.replace(state, registers=((["x"], 1),))),  # type: ignore[arg-type]
        ("registers.offset", dataclasses.replace(state, registers=(("a", 1),) + pairs[1:])),  # type: ignore[arg-type]
    ]


def test_rejected_snapshots_leave_the_device_unchanged(dev: PciTestDevice, memory: GuestMemory) -> None:
    _busy(dev, memory)
    good = dev.state()
    target = PciTestDevice(memory)
    target.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY)
    target.bar_write(0, r.SCRATCH, 4, 0x77)
    before = target.state()
    for field, bad in _bad_states(good):
        with pytest.raises(SnapshotError) as info:
            target.restore(bad)  # type: ignore[arg-type]
        assert info.value.field == field, (field, bad)
        assert target.state() == before


def test_regression_restore_wrong_shapes_raise_snapshot_error(dev: PciTestDevice, memory: GuestMemory) -> None:
    # dict(state.registers) raised TypeError/ValueError and ``state.pci=None`` raised
    # AttributeError: an untrusted snapshot escaped as a non-SnapshotError.
    good = dev.state()
    for bad in (
        dataclasses.replace(good, registers=((0, 1, 2),)),  # type: ignore[arg-type]
        dataclasses.replace(good, registers=(([1], 2),)),  # type: ignore[arg-type]
        dataclasses.replace(good, pci=None),  # type: ignore[arg-type]
        None,
    ):
        with pytest.raises(SnapshotError):
            dev.restore(bad)  # type: ignore[arg-type]


def test_dma_completions_use_msix_vector_1(dev: PciTestDevice, memory: GuestMemory) -> None:
    assert dev.msix is not None
    dev.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY | defs.PCI_COMMAND_MASTER)
    for vector, data in ((0, 0x31), (1, 0x32)):
        dev.bar_write(2, 16 * vector, 4, 0xFEE0_0000)
        dev.bar_write(2, 16 * vector + 8, 4, data)
        dev.bar_write(2, 16 * vector + 12, 4, 0)
    dev.config_write(dev.msix.offset + 2, 2, defs.PCI_MSIX_FLAGS_ENABLE)
    memory.write(0x1000, b"x" * 16)
    _dma(dev, 0x1000, 0x2000, 16)
    _wr(dev, r.IRQ_RAISE, 0b100)
    assert [data for _, data in _msgs(dev)] == [0x32, 0x31]
