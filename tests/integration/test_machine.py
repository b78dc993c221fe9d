"""The whole core wired together: a machine, firmware enumeration and the test device
driven only through config cycles, MMIO, port I/O and guest RAM, as a guest would."""

from __future__ import annotations

import re
from collections.abc import Iterator
import subprocess
import sys

import pytest

from devmodels import Machine, pci_intx_gsi
from devmodels._demo import run_demo
from devmodels.pci import FunctionInfo, defs
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r


Booted = tuple[Machine, PciTestDevice, FunctionInfo, dict[int, int]]


@pytest.fixture(params=["bytearray", "memfd"])
def booted(request: pytest.FixtureRequest) -> Iterator[Booted]:
    with Machine(ram_size=8 << 20, ram_backing=request.param) as m:
        dev = PciTestDevice(m.memory)
        slot = m.add_pci(dev, slot=4)
        found = m.enumerate()
        info = next(i for i in found if i.devfn == slot << 3)
        bars = {b.index: b.address for b in info.bars if b.address is not None}
        yield m, dev, info, bars


def test_enumeration_finds_bridge_and_device(booted: Booted) -> None:
    m, dev, info, bars = booted
    assert (info.vendor_id, info.device_id, info.class_code) == (r.TESTDEV_VENDOR_ID, r.TESTDEV_DEVICE_ID, r.TESTDEV_CLASS)
    assert sorted(bars) == [0, 1, 2]
    assert info.interrupt_line == pci_intx_gsi(4, 1)
    assert m.config_read(0, 4 << 3, defs.PCI_INTERRUPT_LINE, 1) == info.interrupt_line
    cmd = m.config_read(0, 4 << 3, defs.PCI_COMMAND, 2)
    assert cmd & (defs.PCI_COMMAND_IO | defs.PCI_COMMAND_MEMORY | defs.PCI_COMMAND_MASTER) == 0b111


def test_registers_through_mmio_and_port_io(booted: Booted) -> None:
    m, dev, info, bars = booted
    assert m.mmio.read(bars[0] + r.ID, 4) == r.TESTDEV_MAGIC
    assert m.pio.read(bars[1] + r.ID, 4) == r.TESTDEV_MAGIC
    m.pio.write(bars[1] + r.SCRATCH, 4, 0xA5A5)
    assert m.mmio.read(bars[0] + r.SCRATCH, 4) == 0xA5A5
    # An unaligned 2-byte guest access is split by the bus into byte lanes SCRATCH accepts.
    m.mmio.write(bars[0] + r.SCRATCH + 1, 2, 0xBBCC)
    assert m.mmio.read(bars[0] + r.SCRATCH, 4) == 0xBBCCA5


def test_dma_and_intx(booted: Booted) -> None:
    m, dev, info, bars = booted
    gsi = info.interrupt_line
    m.memory.write(0x4000, b"guest data" * 10)
    m.mmio.write(bars[0] + r.DMA_SRC, 8, 0x4000)
    m.mmio.write(bars[0] + r.DMA_DST, 8, 0x9000)
    m.mmio.write(bars[0] + r.DMA_LEN, 4, 100)
    m.mmio.write(bars[0] + r.DMA_CMD, 4, r.DMA_CMD_START)
    assert m.mmio.read(0x9000, 10) == int.from_bytes(b"guest data", "little")  # RAM through the bus
    assert m.mmio.read(bars[0] + r.DMA_STATUS, 4) == r.DMA_STATUS_DONE
    assert m.irq.levels[gsi] is True
    m.mmio.write(bars[0] + r.IRQ_ACK, 4, r.IRQ_DMA_DONE)
    assert m.irq.levels[gsi] is False


def test_dma_at_the_bar_itself_is_an_error(booted: Booted) -> None:
    m, dev, info, bars = booted
    m.mmio.write(bars[0] + r.DMA_SRC, 8, 0)
    m.mmio.write(bars[0] + r.DMA_DST, 8, bars[0])  # device memory is not guest RAM
    m.mmio.write(bars[0] + r.DMA_LEN, 4, 16)
    m.mmio.write(bars[0] + r.DMA_CMD, 4, r.DMA_CMD_START)
    assert m.mmio.read(bars[0] + r.DMA_STATUS, 4) == r.DMA_STATUS_ERROR
    assert m.mmio.read(bars[0] + r.ID, 4) == r.TESTDEV_MAGIC


def test_msix_through_the_bar_and_config_cycles(booted: Booted) -> None:
    m, dev, info, bars = booted
    cap = dev.caps.find(defs.PCI_CAP_ID_MSIX)
    assert cap is not None
    assert m.config_read(0, 4 << 3, cap, 1) == defs.PCI_CAP_ID_MSIX
    m.mmio.write(bars[2] + 16, 8, 0xFEE0_1000)
    m.mmio.write(bars[2] + 0, 8, 0xFEE0_0000)
    m.mmio.write(bars[2] + 8, 8, 0x0000_0001_0000_0099)  # data, masked
    m.config_write(0, 4 << 3, cap + 2, 2, defs.PCI_MSIX_FLAGS_ENABLE)
    m.mmio.write(bars[0] + r.IRQ_RAISE, 4, 1)
    assert dev.msix is not None
    assert m.irq.msi == [] and m.mmio.read(bars[2] + dev.msix.pba_offset, 8) == 1
    m.mmio.write(bars[2] + 12, 4, 0)
    assert m.irq.msi == [(0xFEE0_0000, 0x99)]
    assert m.irq.levels.get(info.interrupt_line, False) is False


def test_snapshot_moves_a_device_between_machines(booted: Booted) -> None:
    m, dev, info, bars = booted
    m.mmio.write(bars[0] + r.SCRATCH, 4, 0x5EED)
    state = dev.state()
    with Machine(ram_size=8 << 20, ram_backing="bytearray") as other:
        twin = PciTestDevice(other.memory)
        other.add_pci(twin, slot=4)
        twin.restore(state)
        assert other.mmio.read(bars[0] + r.SCRATCH, 4) == 0x5EED
        assert other.pio.read(bars[1] + r.ID, 4) == r.TESTDEV_MAGIC


def test_bar_moved_by_the_guest_follows(booted: Booted) -> None:
    m, dev, info, bars = booted
    at = 4 << 3
    m.config_write(0, at, defs.PCI_BASE_ADDRESS_0, 4, 0xD000_0000)
    assert m.mmio.read(0xD000_0000 + r.ID, 4) == r.TESTDEV_MAGIC
    assert m.mmio.read(bars[0] + r.ID, 4) == 0xFFFF_FFFF
    m.config_write(0, at, defs.PCI_COMMAND, 2, 0)
    assert m.mmio.read(0xD000_0000 + r.ID, 4) == 0xFFFF_FFFF
    assert m.pio.read(bars[1] + r.ID, 4) == 0xFFFF_FFFF


# -- the demo -----------------------------------------------------------------------------


def test_run_demo_lines() -> None:
    lines = run_demo()
    assert lines[0] == "PCI bus 0 (enumerated through 0xCF8/0xCFC config cycles):"
    assert lines[1].split() == ["BDF", "ID", "class", "IRQ", "BARs"]
    assert re.fullmatch(r"\s+00:00\.0\s+8086:29c0\s+060000 host bridge\s+-\s+-", lines[2])
    assert re.fullmatch(
        r"\s+00:01\.0\s+1234:de70\s+00ff00 unclassified\s+17\s+"
        r"BAR0 mem32 0x1000@0xc0000000, BAR1 io 0x10@0xc000, BAR2 mem32 0x1000@0xc0001000",
        lines[3],
    )
    assert lines[4] == ""
    assert lines[5:] == [
        "testdev ID via MMIO: 0x7e57de70, via port I/O: 0x7e57de70",
        "scratch round trip: 0xc0ffee",
        "DMA copy of 224 bytes: status=1 data matches; INTx GSI 17 level=True",
        "after IRQ_ACK: GSI 17 level=False",
        "MSI-X vector 0 after IRQ_RAISE: address=0xfee00000 data=0x4041",
    ]


def test_demo_command_line() -> None:
    out = subprocess.run([sys.executable, "-m", "devmodels", "demo"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == run_demo()
    assert out.stderr == ""
