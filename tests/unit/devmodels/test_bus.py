"""Address-space dispatch (devmodels._bus)."""

from __future__ import annotations

import pytest

from devmodels import MMIO_LIMIT, PIO_LIMIT, Bus, BusDevice, UsageError
from devmodels._trace import RecordingSink


class Recorder:
    """A device that records accesses and reads back a fixed pattern."""

    def __init__(self, value: int = 0x1122334455667788) -> None:
        self.value = value
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class Ram:
    """A memory-like device: bytes, little-endian."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.data[offset : offset + size] = value.to_bytes(size, "little")


def test_recorder_is_a_bus_device() -> None:
    assert isinstance(Recorder(), BusDevice)
    assert not isinstance(object(), BusDevice)


def test_register_find_unregister() -> None:
    bus = Bus("mmio")
    a, b = Recorder(), Recorder()
    ma = bus.register(0x1000, 0x100, a, "a")
    mb = bus.register(0x1100, 0x100, b)
    assert mb.name == "Recorder"
    assert (ma.base, ma.length, ma.end) == (0x1000, 0x100, 0x1100)
    assert bus.find(0x0FFF) is None
    assert bus.find(0x1000) is ma and bus.find(0x10FF) is ma
    assert bus.find(0x1100) is mb and bus.find(0x1200) is None
    assert bus.mappings == (ma, mb)
    bus.unregister(ma)
    assert bus.find(0x1000) is None and bus.mappings == (mb,)
    with pytest.raises(UsageError, match="not registered"):
        bus.unregister(ma)
    assert "1 mappings" in repr(bus)


@pytest.mark.parametrize(
    ("base", "length"),
    [(0x1000, 0x100), (0x0F80, 0x100), (0x10FF, 1), (0x0F00, 0x400), (0x1080, 0x10)],
)
def test_overlapping_registration_is_refused(base: int, length: int) -> None:
    bus = Bus()
    bus.register(0x1000, 0x100, Recorder(), "first")
    with pytest.raises(UsageError, match="overlaps first"):
        bus.register(base, length, Recorder())
    assert len(bus.mappings) == 1


@pytest.mark.parametrize(
    ("base", "length", "limit"),
    [(0, 0, MMIO_LIMIT), (0, -4, MMIO_LIMIT), (-1, 2, MMIO_LIMIT), (MMIO_LIMIT - 4, 8, MMIO_LIMIT), (0xFFFF, 2, PIO_LIMIT)],
)
def test_registration_outside_the_space_is_refused(base: int, length: int, limit: int) -> None:
    with pytest.raises(UsageError):
        Bus("x", limit).register(base, length, Recorder())


def test_aligned_access_goes_to_the_device_with_offsets() -> None:
    bus = Bus()
    dev = Recorder(0xAABBCCDD)
    bus.register(0x2000, 0x100, dev)
    assert bus.read(0x2010, 4) == 0xAABBCCDD
    assert bus.read(0x2011, 1) == 0xDD  # a device's over-wide answer is truncated
    bus.write(0x2008, 8, 0x1_2233_4455_6677_8899)  # value is truncated to the size
    assert dev.reads == [(0x10, 4), (0x11, 1)]
    assert dev.writes == [(0x8, 8, 0x2233_4455_6677_8899 & (1 << 64) - 1)]


def test_unaligned_access_is_split_into_aligned_pieces() -> None:
    bus = Bus()
    dev = Recorder(0)
    bus.register(0, 0x100, dev)
    bus.write(0x3, 8, 0x0807060504030201)
    assert dev.writes == [(0x3, 1, 0x01), (0x4, 4, 0x05040302), (0x8, 2, 0x0706), (0xA, 1, 0x08)]
    bus.read(0x6, 3)
    assert dev.reads == [(0x6, 2), (0x8, 1)]


def test_split_across_two_devices_and_a_gap() -> None:
    bus = Bus()
    left, right = Ram(0x10), Ram(0x10)
    bus.register(0x00, 0x10, left)
    bus.register(0x14, 0x10, right)
    bus.write_bytes(0x0C, bytes(range(1, 13)))  # 4 bytes left, 4 in the gap, 4 right
    assert bytes(left.data[0x0C:]) == bytes([1, 2, 3, 4])
    assert bytes(right.data[:4]) == bytes([9, 10, 11, 12])
    assert bus.read_bytes(0x0C, 12) == bytes([1, 2, 3, 4]) + b"\xff" * 4 + bytes([9, 10, 11, 12])
    assert bus.read_bytes(0, 0) == b""
    bus.write_bytes(0, b"")
    assert left.data[0] == 0


def test_unmapped_access_reads_ones_and_is_traced() -> None:
    bus = Bus("pio", PIO_LIMIT)
    with RecordingSink("bus.unmapped") as rec:
        assert bus.read(0x80, 2) == 0xFFFF
        bus.write(0x80, 1, 0x5A)
    assert rec.events == [
        ("bus.unmapped", {"bus": "pio", "op": "read", "addr": 0x80, "size": 2}),
        ("bus.unmapped", {"bus": "pio", "op": "write", "addr": 0x80, "size": 1, "value": 0x5A}),
    ]


@pytest.mark.parametrize(("addr", "size"), [(0, 0), (0, -1), (-1, 1), (MMIO_LIMIT - 2, 4), (MMIO_LIMIT, 1)])
def test_bad_accesses_are_usage_errors(addr: int, size: int) -> None:
    bus = Bus()
    with pytest.raises(UsageError):
        bus.read(addr, size)
    with pytest.raises(UsageError):
        bus.write(addr, size, 0)


def test_access_at_the_top_of_the_space() -> None:
    bus = Bus()
    ram = Ram(0x10)
    bus.register(MMIO_LIMIT - 0x10, 0x10, ram)
    bus.write(MMIO_LIMIT - 8, 8, 0x0102030405060708)
    assert bus.read(MMIO_LIMIT - 8, 8) == 0x0102030405060708


class _Loopback:
    """A device whose register access turns around and touches the bus again."""

    def __init__(self, bus: Bus, target: int) -> None:
        self.bus = bus
        self.target = target
        self.inner_read: int | None = None
        self.inner_writes = 0

    def read(self, offset: int, size: int) -> int:
        self.inner_read = self.bus.read(self.target, 4)
        return 7

    def write(self, offset: int, size: int, value: int) -> None:
        self.inner_writes += 1
        self.bus.write(self.target, 4, value)


def test_reentrant_access_to_the_same_device_is_not_dispatched() -> None:
    bus = Bus()
    dev = _Loopback(bus, 0x1000)
    bus.register(0x1000, 0x10, dev, "loop")
    with RecordingSink("bus.reentrant") as rec:
        assert bus.read(0x1000, 4) == 7
        bus.write(0x1000, 4, 1)
    assert dev.inner_read == 0xFFFF_FFFF
    assert dev.inner_writes == 1  # the nested write was dropped, not recursed into
    assert [f["op"] for _, f in rec.events] == ["read", "write"]
    assert not bus.mappings[0].active


def test_reentrancy_guard_allows_another_device() -> None:
    bus = Bus()
    ram = Ram(0x10)
    bus.register(0x2000, 0x10, ram)
    dev = _Loopback(bus, 0x2000)
    bus.register(0x1000, 0x10, dev)
    bus.write(0x1000, 4, 0xABCD)
    assert ram.read(0, 4) == 0xABCD


def test_device_exception_clears_the_guard() -> None:
    class Boom:
        def read(self, offset: int, size: int) -> int:
            raise RuntimeError("device bug")

        def write(self, offset: int, size: int, value: int) -> None:
            raise RuntimeError("device bug")

    bus = Bus()
    mapping = bus.register(0, 8, Boom())
    with pytest.raises(RuntimeError):
        bus.read(0, 4)
    assert not mapping.active
    with pytest.raises(RuntimeError):
        bus.write(0, 4, 0)
    assert not mapping.active


def test_access_trace() -> None:
    bus = Bus()
    bus.register(0x100, 0x10, Recorder(0x42), "dev")
    with RecordingSink("bus.access") as rec:
        bus.read(0x104, 4)
        bus.write(0x108, 2, 0x55)
    assert rec.events == [
        ("bus.access", {"bus": "mmio", "op": "read", "device": "dev", "addr": 0x104, "size": 4, "value": 0x42}),
        ("bus.access", {"bus": "mmio", "op": "write", "device": "dev", "addr": 0x108, "size": 2, "value": 0x55}),
    ]
