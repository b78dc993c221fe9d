"""Properties of the bus (devmodels._bus): dispatch stays in range, overlaps are refused,
and split accesses are equivalent to byte-wise accesses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import Bus, UsageError

SPACE = 0x200
_SETTINGS = settings(max_examples=200, deadline=None)
Layout = list[tuple[int, int]]
Ops = list[tuple[bool, int, int, int]]


class CheckedRam:
    """Memory-like device that records every access it is given."""

    def __init__(self, base: int, length: int) -> None:
        self.base = base
        self.length = length
        self.data = bytearray(length)
        self.accesses: list[tuple[int, int]] = []

    def _note(self, offset: int, size: int) -> None:
        self.accesses.append((offset, size))

    def read(self, offset: int, size: int) -> int:
        self._note(offset, size)
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self._note(offset, size)
        assert 0 <= value < 1 << (8 * size)
        self.data[offset : offset + size] = value.to_bytes(size, "little")


ranges = st.lists(st.tuples(st.integers(0, SPACE - 1), st.integers(1, 0x60)), max_size=12)
accesses = st.lists(
    st.tuples(st.booleans(), st.integers(0, SPACE - 1), st.integers(1, 24), st.integers(0, (1 << 192) - 1)),
    max_size=30,
)


def _build(layout: list[tuple[int, int]]) -> tuple[Bus, list[CheckedRam]]:
    bus = Bus("mmio", SPACE)
    accepted: list[CheckedRam] = []
    for base, length in layout:
        overlaps = any(base < d.base + d.length and d.base < base + length for d in accepted)
        outside = base + length > SPACE
        device = CheckedRam(base, length)
        try:
            bus.register(base, length, device)
        except UsageError:
            assert overlaps or outside
            continue
        assert not (overlaps or outside)
        accepted.append(device)
    assert [m.device for m in bus.mappings] == sorted(accepted, key=lambda d: d.base)
    return bus, accepted


@_SETTINGS
@given(ranges, accesses)
def test_registration_matches_model_and_dispatch_stays_in_range(layout: Layout, ops: Ops) -> None:
    bus, devices = _build(layout)
    for is_write, addr, size, value in ops:
        size = min(size, SPACE - addr)
        if is_write:
            bus.write(addr, size, value)
        else:
            bus.read(addr, size)
    for device in devices:
        for offset, size in device.accesses:
            assert size in (1, 2, 4, 8)
            assert 0 <= offset and offset + size <= device.length
            assert (device.base + offset) % size == 0


@_SETTINGS
@given(ranges, accesses)
def test_split_access_equals_bytewise_access(layout: Layout, ops: Ops) -> None:
    bus, devices = _build(layout)
    # The model: one byte per address; unmapped bytes read 0xFF and ignore writes.
    owner: dict[int, CheckedRam] = {}
    for d in devices:
        for a in range(d.base, d.base + d.length):
            owner[a] = d
    model = bytearray(SPACE)
    for a in range(SPACE):
        model[a] = 0 if a in owner else 0xFF
    for is_write, addr, size, value in ops:
        size = min(size, SPACE - addr)
        if is_write:
            bus.write(addr, size, value)
            data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            for i, byte in enumerate(data):
                if addr + i in owner:
                    model[addr + i] = byte
        else:
            got = bus.read(addr, size)
            assert got == int.from_bytes(model[addr : addr + size], "little")
            assert got == int.from_bytes(bytes(bus.read(addr + i, 1) for i in range(size)), "little")
    for d in devices:
        assert bytes(d.data) == bytes(model[d.base : d.base + d.length])


@_SETTINGS
@given(ranges)
def test_find_agrees_with_the_mappings(layout: Layout) -> None:
    bus, devices = _build(layout)
    for addr in range(SPACE):
        mapping = bus.find(addr)
        holders = [d for d in devices if d.base <= addr < d.base + d.length]
        assert len(holders) <= 1
        assert (mapping.device if mapping else None) is (holders[0] if holders else None)
