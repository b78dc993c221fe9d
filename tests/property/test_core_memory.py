"""Property: guest memory never reads or writes outside its regions, for any (gpa, len),
compared with a byte-per-address model (devmodels._memory)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import Access, GuestMemory, GuestMemoryError, MemoryRegion
from devmodels._memory import ADDRESS_LIMIT

_SETTINGS = settings(max_examples=200, deadline=None)
TOP = ADDRESS_LIMIT - 0x100  # a region may sit at the very top of the 64-bit space

# Region layouts: (gap before, size, read-only) in a low area, plus an optional top region.
layouts = st.tuples(
    st.lists(st.tuples(st.integers(0, 0x40), st.integers(1, 0x80), st.booleans()), min_size=1, max_size=5),
    st.booleans(),
)


@st.composite
def addresses(draw: st.DrawFn) -> int:
    return draw(
        st.one_of(
            st.integers(0, 0x700),
            st.integers(TOP - 0x10, ADDRESS_LIMIT + 0x10),
            st.integers(-0x10, -1),
            st.integers(0, 1 << 70),
        )
    )


lengths = st.one_of(st.integers(0, 0x120), st.integers(-4, -1), st.sampled_from([1 << 32, 1 << 63, ADDRESS_LIMIT]))
ops = st.lists(
    st.tuples(st.sampled_from(["read", "write", "fill", "check", "load", "store"]), addresses(), lengths, st.integers(0, 255)),
    max_size=25,
)


class Model:
    def __init__(self, memory: GuestMemory) -> None:
        self.byte: dict[int, int] = {}
        self.readonly: set[int] = set()
        self.region_of: dict[int, int] = {}
        for region in memory.regions:
            for a in range(region.base, region.end):
                self.byte[a] = 0
                self.region_of[a] = region.base
                if region.readonly:
                    self.readonly.add(a)

    def ok(self, gpa: int, length: int, write: bool) -> bool:
        if length < 0 or gpa < 0 or gpa + length > ADDRESS_LIMIT:
            return False
        if length == 0:
            return gpa in self.byte
        if length > len(self.byte):
            return False
        span = range(gpa, gpa + length)
        return all(a in self.byte and not (write and a in self.readonly) for a in span)

    def one_region(self, gpa: int, length: int) -> bool:
        return len({self.region_of[a] for a in range(gpa, gpa + length)}) == 1


def _memory(layout: tuple[list[tuple[int, int, bool]], bool]) -> GuestMemory:
    pieces, top = layout
    regions = []
    pos = 0
    for gap, size, ro in pieces:
        pos += gap
        regions.append(MemoryRegion(pos, bytearray(size), readonly=ro))
        pos += size
    if top:
        regions.append(MemoryRegion.from_bytearray(TOP, ADDRESS_LIMIT - TOP))
    return GuestMemory(regions)


@_SETTINGS
@given(layouts, ops)
def test_memory_matches_model(
    layout: tuple[list[tuple[int, int, bool]], bool], operations: list[tuple[str, int, int, int]]
) -> None:
    memory = _memory(layout)
    model = Model(memory)
    counter = 0
    for op, gpa, length, value in operations:
        counter += 1
        if op == "read":
            if model.ok(gpa, length, False):
                assert memory.read(gpa, length) == bytes(model.byte[a] for a in range(gpa, gpa + length))
            else:
                _refused(memory.read, gpa, length)
        elif op == "write":
            if not 0 <= length <= 0x120:
                continue
            data = bytes((counter + i) & 0xFF for i in range(length))
            if model.ok(gpa, length, True):
                memory.write(gpa, data)
                for i, b in enumerate(data):
                    model.byte[gpa + i] = b
            else:
                _refused(memory.write, gpa, data)
        elif op == "fill":
            if model.ok(gpa, length, True):
                memory.fill(gpa, length, value)
                for a in range(gpa, gpa + length):
                    model.byte[a] = value
            else:
                _refused(memory.fill, gpa, length, value)
        elif op == "check":
            for access, write in ((Access.READ, False), (Access.WRITE, True)):
                assert memory.check_range(gpa, length, access) == model.ok(gpa, length, write)
        else:
            size = (1, 2, 4, 8)[value % 4]
            load = {1: memory.load_u8, 2: memory.load_u16, 4: memory.load_u32, 8: memory.load_u64}[size]
            store = {1: memory.store_u8, 2: memory.store_u16, 4: memory.store_u32, 8: memory.store_u64}[size]
            write = op == "store"
            fits = model.ok(gpa, size, write) and model.one_region(gpa, size)
            scalar = int.from_bytes(bytes((value + i) & 0xFF for i in range(size)), "little")
            if fits and write:
                store(gpa, scalar)
                for i, b in enumerate(scalar.to_bytes(size, "little")):
                    model.byte[gpa + i] = b
            elif fits:
                assert load(gpa) == int.from_bytes(bytes(model.byte[a] for a in range(gpa, gpa + size)), "little")
            else:
                if write:
                    _refused(store, gpa, scalar)
                else:
                    _refused(load, gpa)
        # Nothing outside the model ever changes; every region still matches it.
        for region in memory.regions:
            assert bytes(region.buffer) == bytes(model.byte[a] for a in range(region.base, region.end))


def _refused(action: Callable[..., object], *args: object) -> None:
    try:
        action(*args)
    except GuestMemoryError:
        return
    raise AssertionError("access outside RAM was not refused")
