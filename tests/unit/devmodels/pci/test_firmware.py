"""Firmware-style enumeration and BAR assignment (devmodels.pci._firmware)."""

from __future__ import annotations

import itertools

import pytest

from devmodels import PIO_LIMIT, Bus, UsageError
from devmodels.pci import BarKind, PciFunction, PciHost, Window, defs, devfn, enumerate_bus0


def _host() -> PciHost:
    return PciHost(Bus("mmio"), Bus("pio", PIO_LIMIT))


def _windows(mem64: bool = True) -> dict[str, Window | None]:
    return {
        "io": Window(0xC000, 0x4000),
        "mem32": Window(0xC000_0000, 0x3EC0_0000),
        "mem64": Window(0x80_0000_0000, 0x10_0000_0000) if mem64 else None,
    }


def _device(tag: int, *bars: tuple[int, int, BarKind, bool], pin: int = 1) -> PciFunction:
    f = PciFunction(0x1234, tag, 0x020000, interrupt_pin=pin, name=f"d{tag}")
    for index, size, kind, prefetch in bars:
        f.add_bar(index, size, None, kind, prefetchable=prefetch)
    return f


def test_window_allocate_aligns_naturally() -> None:
    w = Window(0x1000, 0x10000)
    assert w.allocate(0x10) == 0x1000
    assert w.allocate(0x4000) == 0x4000
    assert w.allocate(0x8000) == 0x8000
    assert w.allocate(0x2000) is None  # 0x10000..0x12000 would leave the window
    assert w.allocate(0x1000) == 0x10000


def test_enumeration_sizes_and_assigns_every_kind() -> None:
    host = _host()
    dev = _device(
        1,
        (0, 0x1000, BarKind.MEM32, False),
        (1, 0x40, BarKind.IO, False),
        (2, 1 << 33, BarKind.MEM64, True),
        (5, 0x10, BarKind.MEM32, True),
    )
    host.plug(dev, devfn(3))
    found = enumerate_bus0(host, **_windows())  # type: ignore[arg-type]
    assert [i.bdf for i in found] == ["00:00.0", "00:03.0"]
    info = found[1]
    assert (info.vendor_id, info.device_id, info.class_code, info.interrupt_pin) == (0x1234, 1, 0x020000, 1)
    kinds = [(b.index, b.kind, b.size, b.prefetchable) for b in info.bars]
    assert kinds == [(0, "mem32", 0x1000, False), (1, "io", 0x40, False), (2, "mem64", 1 << 33, True), (5, "mem32", 0x10, True)]
    for bar in info.bars:
        assert bar.address is not None and bar.address % bar.size == 0
        assert dev.bar_address(bar.index) == bar.address  # decode was enabled
    assert info.bars[2].address is not None and info.bars[2].address >= 0x80_0000_0000
    assert dev.dma_allowed
    assert info.interrupt_line == 0xFF  # no routing table given


def test_64bit_bar_falls_back_to_mem32_without_a_64bit_window() -> None:
    host = _host()
    host.plug(_device(1, (0, 0x10000, BarKind.MEM64, False)))
    found = enumerate_bus0(host, **_windows(mem64=False))  # type: ignore[arg-type]
    assert found[1].bars[0].address == 0xC000_0000


def test_assignment_is_disjoint_and_largest_first() -> None:
    host = _host()
    devices = [_device(i, (0, 0x1000 << i, BarKind.MEM32, False), (1, 4 << i, BarKind.IO, False)) for i in range(4)]
    for d in devices:
        host.plug(d)
    found = enumerate_bus0(host, **_windows())  # type: ignore[arg-type]
    mem = sorted((b.address, b.address + b.size) for i in found for b in i.bars if b.kind == "mem32" and b.address)
    io = sorted((b.address, b.address + b.size) for i in found for b in i.bars if b.kind == "io" and b.address)
    for ranges in (mem, io):
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(ranges))
    assert mem[0] == (0xC000_0000, 0xC000_0000 + 0x8000)  # the largest came first
    assert host.mmio.find(0xC000_0000) is not None


def test_interrupt_lines_follow_routing_table() -> None:
    host = _host()
    host.plug(_device(1, pin=2), devfn(4))
    host.plug(_device(2, pin=0), devfn(5))
    routes = {(4, 2): 19}
    found = enumerate_bus0(host, irq_of_pin=routes, **_windows())  # type: ignore[arg-type]
    assert [i.interrupt_line for i in found] == [0xFF, 19, 0xFF]
    assert host.functions[devfn(4)].config_read(defs.PCI_INTERRUPT_LINE, 1) == 19


def test_multifunction_devices() -> None:
    host = _host()
    f0 = _device(1)
    f0.config.set(defs.PCI_HEADER_TYPE, 1, defs.PCI_HEADER_TYPE_MULTI_FUNCTION)
    host.plug(f0, devfn(2, 0))
    host.plug(_device(2), devfn(2, 5))
    single = _device(3)
    host.plug(single, devfn(6, 0))
    host.plug(_device(4), devfn(6, 1))  # hidden: function 0 is not multi-function
    found = enumerate_bus0(host, **_windows())  # type: ignore[arg-type]
    assert [i.bdf for i in found] == ["00:00.0", "00:02.0", "00:02.5", "00:06.0"]


def test_window_too_small_is_a_usage_error() -> None:
    host = _host()
    host.plug(_device(1, (0, 0x10_0000, BarKind.MEM32, False)))
    with pytest.raises(UsageError, match="does not fit"):
        enumerate_bus0(host, io=Window(0xC000, 0x100), mem32=Window(0xC000_0000, 0x1000))


class FakeConfig:
    """Bus 0 with one function whose BAR registers are given as (writable, RO) pairs."""

    def __init__(self, bars: list[tuple[int, int]]) -> None:
        self.regs = {defs.PCI_VENDOR_ID: 0x5678_1234, defs.PCI_COMMAND: 0, defs.PCI_HEADER_TYPE & ~3: 0}
        self.masks = {defs.PCI_BASE_ADDRESS_0 + 4 * i: bar for i, bar in enumerate(bars)}
        for offset, (_, ro) in self.masks.items():
            self.regs[offset] = ro

    def config_read(self, bus: int, at: int, offset: int, size: int) -> int:
        if at != 0:
            return (1 << (8 * size)) - 1
        word = self.regs.get(offset & ~3, 0)
        return (word >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def config_write(self, bus: int, at: int, offset: int, size: int, value: int) -> None:
        if offset in self.masks:
            writable, ro = self.masks[offset]
            self.regs[offset] = (value & writable) | ro
        elif offset == defs.PCI_COMMAND:
            self.regs[offset] = value


def test_regression_bar_with_only_type_bits_is_not_a_bar() -> None:
    # A BAR whose address bits are all read-only (only prefetch/64-bit type bits read
    # back) was sized 0 and allocated, corrupting the window's next address.
    cfg = FakeConfig([(0, 0b1000), (0, defs.PCI_BASE_ADDRESS_SPACE_IO), (0xFFFF_F000, 0)])
    (info,) = enumerate_bus0(cfg, io=Window(0xC000, 0x100), mem32=Window(0xC000_0000, 0x10_0000))
    assert [(b.index, b.size, b.address) for b in info.bars] == [(2, 0x1000, 0xC000_0000)]


def test_regression_bar_size_is_lowest_writable_bit() -> None:
    # ``~mask + 1`` gave a non-power-of-two size for a non-contiguous mask; firmware (and
    # Linux ``pci_size``) take the lowest writable address bit.
    cfg = FakeConfig([(0xF0F0_F000, 0), (0xFFFF_FF0C, defs.PCI_BASE_ADDRESS_SPACE_IO)])
    (info,) = enumerate_bus0(cfg, io=Window(0xC000, 0x100), mem32=Window(0xC000_0000, 0x10_0000))
    assert [(b.kind, b.size) for b in info.bars] == [("mem32", 0x1000), ("io", 0x4)]
    assert all(b.address is not None and b.address % b.size == 0 for b in info.bars)
