"""PciHost: bus 0, CF8/CFC and ECAM config access, BAR mapping (devmodels.pci._host)."""

from __future__ import annotations

import pytest

from devmodels import PIO_LIMIT, Bus, RecordingLevelSink, RecordingMsiSink, UsageError
from devmodels._trace import RecordingSink
from devmodels.pci import PCI_CONFIG_ADDRESS_PORT, BarKind, ConfigPorts, Ecam, HostBridge, PciFunction, PciHost, defs, devfn

CMD, BAR0 = defs.PCI_COMMAND, defs.PCI_BASE_ADDRESS_0
MEM, IO = defs.PCI_COMMAND_MEMORY, defs.PCI_COMMAND_IO


class Window:
    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return self.tag

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def _fn(tag: int = 1, *, pin: int = 1) -> PciFunction:
    f = PciFunction(0x1234, 0x1000 + tag, 0xFF0000, interrupt_pin=pin, name=f"fn{tag}")
    f.add_bar(0, 0x1000, Window(tag))
    f.add_bar(1, 0x20, Window(tag + 100), BarKind.IO)
    f.add_bar(2, 0x4000, Window(tag + 200), BarKind.MEM64)
    return f


class Rig:
    def __init__(self) -> None:
        self.mmio = Bus("mmio")
        self.pio = Bus("pio", PIO_LIMIT)
        self.routes: list[tuple[int, int]] = []
        self.sinks: dict[tuple[int, int], RecordingLevelSink] = {}
        self.msi = RecordingMsiSink()
        self.host = PciHost(self.mmio, self.pio, self._route, self.msi)
        self.ports = ConfigPorts(self.host)
        self.pio.register(PCI_CONFIG_ADDRESS_PORT, 8, self.ports)
        self.ecam = Ecam(self.host)
        self.mmio.register(0xB000_0000, self.ecam.size, self.ecam, "ecam")

    def _route(self, slot: int, pin: int) -> RecordingLevelSink:
        self.routes.append((slot, pin))
        return self.sinks.setdefault((slot, pin), RecordingLevelSink())

    def cfg_write(self, at: int, offset: int, size: int, value: int) -> None:
        self.pio.write(0xCF8, 4, 1 << 31 | at << 8 | (offset & 0xFC))
        self.pio.write(0xCFC + (offset & 3), size, value)

    def cfg_read(self, at: int, offset: int, size: int) -> int:
        self.pio.write(0xCF8, 4, 1 << 31 | at << 8 | (offset & 0xFC))
        return self.pio.read(0xCFC + (offset & 3), size)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_devfn() -> None:
    assert devfn(3, 2) == 0x1A and devfn(31, 7) == 0xFF
    for bad in ((32, 0), (0, 8), (-1, 0)):
        with pytest.raises(UsageError):
            devfn(*bad)


def test_host_bridge_at_00_0(rig: Rig) -> None:
    assert isinstance(rig.host.functions[0], HostBridge)
    assert rig.cfg_read(0, 0, 4) == 0x29C0_8086
    assert rig.cfg_read(0, defs.PCI_REVISION_ID, 4) >> 8 == 0x060000


def test_plug_routes_interrupts_and_unplug(rig: Rig) -> None:
    f = _fn(pin=2)
    at = rig.host.plug(f)
    assert at == devfn(1) and rig.host.devfn_of(f) == at
    assert rig.routes == [(1, 2)]
    assert f.msi_sink is rig.msi
    g = _fn(2, pin=0)
    assert rig.host.plug(g, devfn(7, 3)) == devfn(7, 3)
    assert rig.routes == [(1, 2)]  # no pin, no route
    with pytest.raises(UsageError, match="already plugged"):
        rig.host.plug(f)
    with pytest.raises(UsageError, match="taken"):
        rig.host.plug(_fn(3), devfn(7, 3))
    with pytest.raises(UsageError):
        rig.host.plug(_fn(3), 256)
    rig.host.unplug(g)
    with pytest.raises(UsageError, match="not plugged"):
        rig.host.devfn_of(g)
    assert rig.cfg_read(devfn(7, 3), 0, 4) == 0xFFFF_FFFF


def test_bus_full(rig: Rig) -> None:
    for i in range(31):
        rig.host.plug(PciFunction(1, i, 0, interrupt_pin=0))
    with pytest.raises(UsageError, match="no free slot"):
        rig.host.plug(PciFunction(1, 99, 0))


# -- mechanism #1 -------------------------------------------------------------------------


def test_config_address_latch(rig: Rig) -> None:
    rig.pio.write(0xCF8, 4, 0xFFFF_FFFF)
    assert rig.pio.read(0xCF8, 4) == 0x80FF_FFFC  # reserved bits 30:24 and 1:0 read zero
    assert rig.pio.read(0xCF8, 2) == 0xFFFF  # only dword accesses reach CONFIG_ADDRESS
    rig.pio.write(0xCF8, 2, 0)
    assert rig.pio.read(0xCF8, 4) == 0x80FF_FFFC


def test_config_data_without_enable_bit(rig: Rig) -> None:
    rig.pio.write(0xCF8, 4, 0)  # enable bit clear
    assert rig.pio.read(0xCFC, 4) == 0xFFFF_FFFF
    rig.pio.write(0xCFC, 4, 0)
    assert rig.cfg_read(0, 0, 2) == 0x8086


def test_byte_and_word_config_data(rig: Rig) -> None:
    f = _fn()
    at = rig.host.plug(f)
    assert rig.cfg_read(at, 1, 1) == 0x12
    assert rig.cfg_read(at, 2, 2) == 0x1001
    assert rig.cfg_read(at, 3, 1) == 0x10
    rig.cfg_write(at, defs.PCI_INTERRUPT_LINE, 1, 0x0B)
    assert f.config_read(defs.PCI_INTERRUPT_LINE, 1) == 0x0B
    # A dword at CFD: three bytes of the register, one byte past CFF (unmapped).
    assert rig.cfg_read(at, 1, 4) == 0xFF10_0112


def test_empty_slots_other_buses_and_offsets(rig: Rig) -> None:
    at = rig.host.plug(_fn())
    assert rig.cfg_read(devfn(9), 0, 4) == 0xFFFF_FFFF
    assert rig.cfg_read(devfn(1, 1), 0, 2) == 0xFFFF
    rig.cfg_write(devfn(9), 4, 2, 0xFFFF)  # dropped, no exception
    rig.pio.write(0xCF8, 4, 1 << 31 | 1 << 16 | at << 8)  # bus 1
    assert rig.pio.read(0xCFC, 4) == 0xFFFF_FFFF
    assert rig.host.config_read(0, at, 0x100, 4) == 0xFFFF_FFFF  # beyond conventional space
    rig.host.config_write(3, at, 0, 4, 0)
    assert rig.host.config_read(0, at, 0, 2) == 0x1234


def test_config_write_at_0xfd_size_4(rig: Rig) -> None:
    f = _fn()
    at = rig.host.plug(f)
    f.config.set_writable(0xFC, 4, 0xFFFF_FFFF)
    rig.host.config_write(0, at, 0xFD, 4, 0x4433_2211)
    assert f.config.get(0xFC, 4) == 0x3322_1100
    assert rig.host.config_read(0, at, 0xFD, 4) == 0x0033_2211


# -- ECAM ---------------------------------------------------------------------------------


def test_ecam(rig: Rig) -> None:
    f = _fn()
    express = PciFunction(0x1234, 0x2222, 0, express=True)
    at = rig.host.plug(f)
    ex = rig.host.plug(express, devfn(4, 1))
    base = 0xB000_0000
    assert rig.mmio.read(base + (at << 12), 4) == 0x1001_1234
    rig.mmio.write(base + (at << 12) + defs.PCI_INTERRUPT_LINE, 1, 9)
    assert f.config_read(defs.PCI_INTERRUPT_LINE, 1) == 9
    assert rig.mmio.read(base + (at << 12) + 0x100, 4) == 0xFFFF_FFFF
    express.config.set(0x100, 4, 0x1234_5678)
    assert rig.mmio.read(base + (ex << 12) + 0x100, 4) == 0x1234_5678
    assert rig.mmio.read(base + (devfn(30) << 12), 4) == 0xFFFF_FFFF
    assert rig.ecam.size == 1 << 20 and Ecam(rig.host, buses=4).size == 4 << 20
    assert Ecam(rig.host, buses=2).read((1 << 20) | (at << 12), 4) == 0xFFFF_FFFF  # bus 1


# -- BAR mapping --------------------------------------------------------------------------


def _program(rig: Rig, at: int, mem: int = 0xC000_0000, io: int = 0xC000, mem64: int = 0x80_0000_0000) -> None:
    rig.host.config_write(0, at, BAR0, 4, mem)
    rig.host.config_write(0, at, BAR0 + 4, 4, io)
    rig.host.config_write(0, at, BAR0 + 8, 4, mem64 & 0xFFFF_FFFF)
    rig.host.config_write(0, at, BAR0 + 12, 4, mem64 >> 32)


def test_bars_map_when_decode_is_enabled(rig: Rig) -> None:
    f = _fn()
    at = rig.host.plug(f)
    _program(rig, at)
    assert rig.mmio.read(0xC000_0000, 4) == 0xFFFF_FFFF  # decode still off
    rig.host.config_write(0, at, CMD, 2, MEM)
    assert rig.mmio.read(0xC000_0010, 4) == 1
    assert rig.mmio.read(0x80_0000_3FFC, 4) == 201
    assert rig.pio.read(0xC000, 4) == 0xFFFF_FFFF
    rig.host.config_write(0, at, CMD, 2, MEM | IO)
    assert rig.pio.read(0xC01C, 4) == 101
    rig.mmio.write(0xC000_0FFC, 4, 0xAB)
    bar0 = f.bars[0]
    assert bar0 is not None and isinstance(bar0.device, Window)
    assert bar0.device.writes == [(0xFFC, 4, 0xAB)]
    rig.host.config_write(0, at, CMD, 2, IO)
    assert rig.mmio.read(0xC000_0010, 4) == 0xFFFF_FFFF
    names = sorted(m.name for m in rig.mmio.mappings)
    assert names == ["ecam"]
    assert [m.name for m in rig.pio.mappings if m.name.startswith("fn")] == ["fn1.bar1"]


def test_bar_move_remaps(rig: Rig) -> None:
    at = rig.host.plug(_fn())
    _program(rig, at)
    rig.host.config_write(0, at, CMD, 2, MEM)
    with RecordingSink("pci.bar_map") as rec:
        rig.host.config_write(0, at, BAR0, 4, 0xD000_0000)
    assert rig.mmio.read(0xC000_0000, 4) == 0xFFFF_FFFF
    assert rig.mmio.read(0xD000_0000, 4) == 1
    assert rec.events == [("pci.bar_map", {"function": "fn1", "bar": 0, "base": 0xD000_0000, "size": 0x1000})]


def test_sizing_with_decode_on_moves_the_bar_and_back(rig: Rig) -> None:
    at = rig.host.plug(_fn())
    _program(rig, at)
    rig.host.config_write(0, at, CMD, 2, MEM)
    rig.host.config_write(0, at, BAR0, 4, 0xFFFF_FFFF)
    assert rig.mmio.read(0xFFFF_F000, 4) == 1
    rig.host.config_write(0, at, BAR0, 4, 0xC000_0000)
    assert rig.mmio.read(0xC000_0000, 4) == 1
    assert rig.mmio.find(0xFFFF_F000) is None


@pytest.mark.parametrize(
    ("mem", "io", "mem64", "reason"),
    [
        (0xB000_0000, 0xC000, 0x80_0000_0000, "overlaps"),  # over ECAM
        (0xC000_0000, 0xCF0, 0x80_0000_0000, "overlaps"),  # I/O over 0xCF8
        (0xC000_0000, 0xFFFF_FFE0, 0x80_0000_0000, "outside bus"),  # I/O past 64 KiB
        (0xC000_0000, 0xC000, 0xC000_0000, "overlaps"),  # BAR2 over the function's own BAR0
    ],
)
def test_conflicting_bar_is_left_unmapped_and_traced(rig: Rig, mem: int, io: int, mem64: int, reason: str) -> None:
    at = rig.host.plug(_fn())
    with RecordingSink("pci.bar_conflict") as rec:
        _program(rig, at, mem, io, mem64)
        rig.host.config_write(0, at, CMD, 2, MEM | IO)
    assert len(rec.events) == 1 and reason in rec.events[0][1]["reason"]
    assert rig.mmio.read(0xB000_0000, 2) == 0x8086  # ECAM still answers
    assert rig.cfg_read(0, 0, 2) == 0x8086  # config ports still answer


def test_64bit_bar_at_the_top_of_the_space(rig: Rig) -> None:
    at = rig.host.plug(_fn())
    _program(rig, at, mem64=0xFFFF_FFFF_FFFF_FFF0)  # the size mask aligns it down
    rig.host.config_write(0, at, CMD, 2, MEM)
    assert rig.mmio.read((1 << 64) - 4, 4) == 201
    assert rig.mmio.find((1 << 64) - 0x4000) is not None


def test_regression_conflicting_bar_maps_once_the_range_is_free(rig: Rig) -> None:
    # A BAR refused for a conflict with another function stayed unmapped forever, even
    # after the other function's BAR moved away.
    a, b = _fn(1), _fn(2)
    at_a, at_b = rig.host.plug(a), rig.host.plug(b)
    _program(rig, at_a, 0xC000_0000, 0xC000, 0x80_0000_0000)
    rig.host.config_write(0, at_a, CMD, 2, MEM)
    _program(rig, at_b, 0xC000_0000, 0xC100, 0x80_1000_0000)
    rig.host.config_write(0, at_b, CMD, 2, MEM)
    assert rig.mmio.read(0xC000_0000, 4) == 1  # a keeps the range
    rig.host.config_write(0, at_a, BAR0, 4, 0xD000_0000)
    assert rig.mmio.read(0xD000_0000, 4) == 1
    assert rig.mmio.read(0xC000_0000, 4) == 2  # b decodes now that the range is free


def test_regression_unplug_deasserts_intx(rig: Rig) -> None:
    # An unplugged function asserting INTx left the line asserted on its behalf.
    f = _fn(pin=1)
    rig.host.plug(f)
    f.set_intx(True)
    sink = rig.sinks[(1, 1)]
    assert sink.level
    rig.host.unplug(f)
    assert not sink.level
    f.set_intx(True)  # the detached function no longer reaches the line
    assert not sink.level


def test_unplug_removes_mappings_and_frees_the_range(rig: Rig) -> None:
    a, b = _fn(1), _fn(2)
    at_a = rig.host.plug(a)
    _program(rig, at_a)
    rig.host.config_write(0, at_a, CMD, 2, MEM | IO)
    at_b = rig.host.plug(b)
    _program(rig, at_b)
    rig.host.config_write(0, at_b, CMD, 2, MEM | IO)
    assert rig.mmio.read(0xC000_0000, 4) == 1
    rig.host.unplug(a)
    assert rig.mmio.read(0xC000_0000, 4) == 2
    assert rig.pio.read(0xC000, 4) == 102
    a.config_write(BAR0, 4, 0xE000_0000)  # no longer listened to
    assert rig.mmio.find(0xE000_0000) is None
