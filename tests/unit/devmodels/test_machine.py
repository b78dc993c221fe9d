"""The in-process machine (devmodels._machine)."""

from __future__ import annotations

import os

import pytest

from devmodels import InterruptController, Machine, MsiMessage, UsageError, pci_intx_gsi
from devmodels._machine import ECAM_BASE, MMIO32_WINDOW
from devmodels._trace import RecordingSink
from devmodels.pci import BarKind, PciFunction, defs


@pytest.mark.parametrize("backing", ["bytearray", "anonymous", "memfd"])
def test_backings(backing: str) -> None:
    with Machine(ram_size=1 << 20, ram_backing=backing) as m:  # type: ignore[arg-type]
        (region,) = m.memory.regions
        assert (region.base, region.size) == (0, 1 << 20)
        assert (region.fd is not None) == (backing == "memfd")
        m.memory.write(0xFFFF0, b"end")
        assert m.memory.read(0xFFFF0, 3) == b"end"
        fd = region.fd
    if fd is not None:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert m.memory.regions == ()


@pytest.mark.parametrize(("size", "backing"), [(0, "bytearray"), (-1, "bytearray"), (ECAM_BASE + 1, "bytearray"), (4096, "hugepages")])
def test_bad_configuration(size: int, backing: str) -> None:
    with pytest.raises(UsageError):
        Machine(ram_size=size, ram_backing=backing)  # type: ignore[arg-type]


def test_intx_swizzle() -> None:
    assert [pci_intx_gsi(0, p) for p in range(1, 5)] == [16, 17, 18, 19]
    assert [pci_intx_gsi(1, p) for p in range(1, 5)] == [17, 18, 19, 16]
    assert pci_intx_gsi(31, 1) == 19


def test_interrupt_controller_levels_and_callbacks() -> None:
    ic = InterruptController()
    seen: list[tuple[int, bool]] = []
    ic.on_level.append(lambda gsi, level: seen.append((gsi, level)))
    a, b = ic.line(17).source(), ic.line(17).source()
    assert ic.line(17) is ic.line(17)
    a.set_level(True)
    b.set_level(True)
    a.set_level(False)
    assert ic.levels == {17: True}
    b.set_level(False)
    assert seen == [(17, True), (17, False)]


def test_interrupt_controller_msi_log_is_bounded() -> None:
    ic = InterruptController(msi_log_limit=8)
    heard: list[MsiMessage] = []
    ic.on_msi.append(heard.append)
    for i in range(100):
        ic.deliver_msi(0xFEE0_0000, i)
    assert len(heard) == 100
    assert len(ic.msi) <= 8 and ic.msi[-1] == MsiMessage(0xFEE0_0000, 99)


def test_config_cycles_reach_the_host_bridge(machine: Machine) -> None:
    assert machine.config_read(0, 0, 0, 4) == 0x29C0_8086
    assert machine.mmio.read(ECAM_BASE, 4) == 0x29C0_8086
    assert machine.config_read(0, 8, 0, 4) == 0xFFFF_FFFF
    assert machine.config_read(1, 0, 0, 2) == 0xFFFF


def test_add_pci_slots(machine: Machine) -> None:
    a = PciFunction(0x1234, 1, 0)
    b = PciFunction(0x1234, 2, 0)
    assert machine.add_pci(a) == 1
    assert machine.add_pci(b, slot=9) == 9
    assert machine.config_read(0, 9 << 3, 2, 2) == 2
    with pytest.raises(UsageError):
        machine.add_pci(PciFunction(1, 1, 0), slot=9)


def test_intx_reaches_the_gsi(machine: Machine) -> None:
    f = PciFunction(0x1234, 1, 0, interrupt_pin=2)
    slot = machine.add_pci(f, slot=5)
    f.set_intx(True)
    assert machine.irq.levels[pci_intx_gsi(slot, 2)] is True
    f.set_intx(False)
    assert machine.irq.levels[pci_intx_gsi(slot, 2)] is False


def test_ram_is_visible_on_the_mmio_bus(machine: Machine) -> None:
    machine.memory.write(0x1000, b"\x11\x22\x33\x44")
    assert machine.mmio.read(0x1000, 4) == 0x4433_2211
    machine.mmio.write(0x2001, 2, 0xBEEF)
    assert machine.memory.read(0x2001, 2) == b"\xef\xbe"
    assert machine.mmio.read((16 << 20) - 2, 4) == 0xFFFF_0000  # last RAM bytes, then a hole


def test_ram_window_survives_region_removal(machine: Machine) -> None:
    region = machine.memory.remove_region(0)
    assert machine.mmio.read(0x1000, 4) == 0xFFFF_FFFF
    machine.mmio.write(0x1000, 4, 1)  # dropped, no exception
    machine.memory.add_region(region)
    assert machine.mmio.read(0x1000, 4) == 0


def test_regression_bar_over_ram_is_refused(machine: Machine) -> None:
    # RAM was not on the MMIO bus, so a BAR programmed over it was mapped and shadowed
    # RAM for CPU accesses while DMA still reached RAM.
    f = PciFunction(0x1234, 1, 0)
    f.add_bar(0, 0x1000, None)
    slot = machine.add_pci(f)
    machine.memory.write(0x10_0000, b"ram!")
    with RecordingSink("pci.bar_conflict") as rec:
        machine.config_write(0, slot << 3, defs.PCI_BASE_ADDRESS_0, 4, 0x10_0000)
        machine.config_write(0, slot << 3, defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY)
    assert len(rec.events) == 1
    assert machine.mmio.read(0x10_0000, 4) == int.from_bytes(b"ram!", "little")


def test_bar_over_ecam_is_refused(machine: Machine) -> None:
    f = PciFunction(0x1234, 1, 0)
    f.add_bar(0, 0x1000, None, BarKind.MEM64)
    slot = machine.add_pci(f)
    with RecordingSink("pci.bar_conflict") as rec:
        machine.config_write(0, slot << 3, defs.PCI_BASE_ADDRESS_0, 4, ECAM_BASE + 0x8000)
        machine.config_write(0, slot << 3, defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY)
    assert len(rec.events) == 1
    assert machine.mmio.read(ECAM_BASE, 2) == 0x8086


def test_enumerate_uses_the_machine_windows(machine: Machine) -> None:
    f = PciFunction(0x1234, 1, 0, interrupt_pin=1)
    f.add_bar(0, 0x1000, None)
    f.add_bar(1, 0x20, None, BarKind.IO)
    f.add_bar(2, 0x1000, None, BarKind.MEM64)
    slot = machine.add_pci(f, slot=3)
    found = machine.enumerate()
    info = next(i for i in found if i.devfn == slot << 3)
    base, size = MMIO32_WINDOW
    addresses = {b.index: b.address for b in info.bars}
    assert addresses[0] is not None and base <= addresses[0] < base + size
    assert addresses[1] is not None and 0xC000 <= addresses[1] < 0x10000
    assert addresses[2] is not None and addresses[2] >= 0x80_0000_0000
    assert info.interrupt_line == pci_intx_gsi(3, 1)
