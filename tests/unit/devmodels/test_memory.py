"""Guest memory (devmodels._memory): backings, checks, cross-region access, IOMMU hook."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable

import pytest

from devmodels import Access, GuestMemory, GuestMemoryError, HostError, MemoryRegion, UsageError
from devmodels._errors import AddressOverflowError
from devmodels._memory import ADDRESS_LIMIT

PAGE = mmap.PAGESIZE
Maker = Callable[[int, int], MemoryRegion]


# -- regions and backings -----------------------------------------------------------------


@pytest.mark.parametrize("maker", [MemoryRegion.from_bytearray, MemoryRegion.anonymous, MemoryRegion.memfd])
def test_every_backing_reads_back_writes(maker: Maker) -> None:
    region = maker(0x10000, 2 * PAGE)
    memory = GuestMemory([region])
    try:
        assert memory.read(0x10000, 4) == b"\0\0\0\0"
        memory.write(0x10000 + PAGE - 2, b"abcd")  # across the page boundary
        assert memory.read(0x10000 + PAGE - 2, 4) == b"abcd"
        assert bytes(region.buffer[PAGE - 2 : PAGE + 2]) == b"abcd"
    finally:
        memory.close()


def test_memfd_region_is_shared_through_its_fd() -> None:
    first = MemoryRegion.memfd(0, 4 * PAGE, name="test-ram")
    assert first.fd is not None
    # The same memfd mapped a second time (as another process would) at another gpa.
    second = MemoryRegion.from_fd(0x100000, 2 * PAGE, first.fd, offset=2 * PAGE)
    a, b = GuestMemory([first]), GuestMemory([second])
    try:
        a.write(2 * PAGE + 5, b"shared")
        assert b.read(0x100000 + 5, 6) == b"shared"
        b.store_u32(0x100000 + PAGE, 0xDEADBEEF)
        assert a.load_u32(3 * PAGE) == 0xDEADBEEF
    finally:
        b.close()
        fd = first.fd
        a.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # the memfd region owned and closed its fd


def test_from_fd_leaves_the_fd_open() -> None:
    fd = os.memfd_create("caller-owned")
    try:
        os.ftruncate(fd, PAGE)
        region = MemoryRegion.from_fd(0, PAGE, fd)
        region.close()
        assert os.fstat(fd).st_size == PAGE
    finally:
        os.close(fd)


def test_from_fd_readonly_refuses_guest_writes() -> None:
    fd = os.memfd_create("rom")
    try:
        os.ftruncate(fd, PAGE)
        os.pwrite(fd, b"ROM!", 0)
        memory = GuestMemory([MemoryRegion.from_fd(0, PAGE, fd, readonly=True)])
        assert memory.read(0, 4) == b"ROM!"
        with pytest.raises(GuestMemoryError, match="read-only"):
            memory.write(0, b"x")
        assert memory.read(0, 4) == b"ROM!"
        memory.close()
    finally:
        os.close(fd)


def test_from_fd_rejects_unaligned_offset_and_bad_fd() -> None:
    fd = os.memfd_create("x")
    try:
        os.ftruncate(fd, 2 * PAGE)
        with pytest.raises(UsageError, match="page size"):
            MemoryRegion.from_fd(0, PAGE, fd, offset=100)
        with pytest.raises(UsageError):
            MemoryRegion.from_fd(0, PAGE, fd, offset=-PAGE)
        with pytest.raises(HostError):
            MemoryRegion.from_fd(0, 4 * PAGE, fd)  # longer than the file
    finally:
        os.close(fd)
    with pytest.raises(HostError):
        MemoryRegion.from_fd(0, PAGE, fd)  # closed fd


@pytest.mark.parametrize("size", [0, -1, -PAGE, 1.5, "4096"])
@pytest.mark.parametrize("maker", [MemoryRegion.from_bytearray, MemoryRegion.anonymous, MemoryRegion.memfd])
def test_bad_region_sizes_are_usage_errors(maker: Maker, size: object) -> None:
    with pytest.raises(UsageError):
        maker(0, size)  # type: ignore[arg-type]


def test_region_must_fit_the_64bit_space() -> None:
    with pytest.raises(UsageError):
        MemoryRegion.from_bytearray(-PAGE, PAGE)
    with pytest.raises(UsageError):
        MemoryRegion.from_bytearray(ADDRESS_LIMIT - PAGE + 1, PAGE)
    top = MemoryRegion.from_bytearray(ADDRESS_LIMIT - PAGE, PAGE)
    memory = GuestMemory([top])
    memory.store_u64(ADDRESS_LIMIT - 8, 0x0102030405060708)
    assert memory.load_u64(ADDRESS_LIMIT - 8) == 0x0102030405060708
    with pytest.raises(AddressOverflowError):
        memory.read(ADDRESS_LIMIT - 4, 8)


def test_add_region_rejects_overlaps_and_keeps_order() -> None:
    memory = GuestMemory([MemoryRegion.from_bytearray(0x2000, 0x1000)])
    with pytest.raises(UsageError, match="overlaps"):
        memory.add_region(MemoryRegion.from_bytearray(0x2FFF, 0x10))
    with pytest.raises(UsageError, match="overlaps"):
        memory.add_region(MemoryRegion.from_bytearray(0x1800, 0x1000))
    with pytest.raises(UsageError, match="overlaps"):
        memory.add_region(MemoryRegion.from_bytearray(0x2100, 0x10))
    memory.add_region(MemoryRegion.from_bytearray(0x3000, 0x1000))  # adjacent is fine
    memory.add_region(MemoryRegion.from_bytearray(0x1000, 0x1000))
    assert [r.base for r in memory.regions] == [0x1000, 0x2000, 0x3000]
    assert memory.size == 0x3000
    assert "3 regions" in repr(memory)


def test_remove_region() -> None:
    a, b = MemoryRegion.from_bytearray(0, 0x1000), MemoryRegion.from_bytearray(0x1000, 0x1000)
    memory = GuestMemory([a, b])
    assert memory.remove_region(0x1000) is b
    assert not memory.check_range(0x1000, 1)
    with pytest.raises(UsageError):
        memory.remove_region(0x1000)
    with pytest.raises(UsageError):
        memory.remove_region(0x800)  # inside a region, not its start
    assert memory.read(0, 1) == b"\0"


# -- checked accesses ---------------------------------------------------------------------


def _two_adjacent() -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, 0x1000), MemoryRegion.from_bytearray(0x1000, 0x1000)])


def test_access_across_adjacent_regions() -> None:
    memory = _two_adjacent()
    data = bytes(range(32))
    memory.write(0x1000 - 16, data)
    assert memory.read(0x1000 - 16, 32) == data
    buf = bytearray(32)
    memory.read_into(0x1000 - 16, buf)
    assert bytes(buf) == data
    memory.fill(0x1000 - 2, 4, 0x1AB)  # value is truncated to a byte
    assert memory.read(0x1000 - 3, 6) == bytes([13, 0xAB, 0xAB, 0xAB, 0xAB, 18])
    assert memory.check_range(0, 0x2000)
    assert not memory.check_range(0, 0x2001)


def test_access_into_a_hole_fails_and_writes_nothing() -> None:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 0x1000), MemoryRegion.from_bytearray(0x2000, 0x1000)])
    with pytest.raises(GuestMemoryError) as info:
        memory.write(0xFF0, b"x" * 0x20)
    assert (info.value.gpa, info.value.length) == (0xFF0, 0x20)
    assert memory.read(0xFF0, 0x10) == bytes(0x10)
    buf = bytearray(b"unchanged-buffer" * 2)
    with pytest.raises(GuestMemoryError):
        memory.read_into(0xFF0, buf)
    assert buf == bytearray(b"unchanged-buffer" * 2)
    with pytest.raises(GuestMemoryError):
        memory.fill(0x1FFF, 2)
    assert memory.read(0x2000, 1) == b"\0"
    for gpa in (0x1000, 0x1800, 0x3000, 0x10_0000):
        with pytest.raises(GuestMemoryError):
            memory.read(gpa, 1)
        assert not memory.check_range(gpa, 1)


def test_negative_gpa_and_length() -> None:
    memory = _two_adjacent()
    with pytest.raises(GuestMemoryError):
        memory.read(-1, 1)
    with pytest.raises(GuestMemoryError):
        memory.fill(0, -1)
    assert not memory.check_range(0, -5)
    with pytest.raises(GuestMemoryError):
        memory.load_u8(-1)


def test_regression_read_negative_length_is_a_guest_memory_error() -> None:
    # bytearray(-1) used to raise ValueError before the range check.
    memory = _two_adjacent()
    with pytest.raises(GuestMemoryError, match="negative length"):
        memory.read(0, -1)


def test_regression_read_huge_length_does_not_allocate() -> None:
    # A guest-controlled length used to be allocated before the range check (MemoryError
    # for 1 TiB, or a huge allocation for anything short of that).
    memory = _two_adjacent()
    with pytest.raises(GuestMemoryError):
        memory.read(0, 1 << 40)
    with pytest.raises(AddressOverflowError):
        memory.read(0x10, (1 << 64) - 1)


@pytest.mark.parametrize(
    ("gpa", "length"),
    [(ADDRESS_LIMIT - 1, 2), (ADDRESS_LIMIT, 1), (1 << 70, 1), (0x1000, ADDRESS_LIMIT), (ADDRESS_LIMIT - 8, 9)],
)
def test_overflow_past_2_64(gpa: int, length: int) -> None:
    memory = _two_adjacent()
    with pytest.raises(AddressOverflowError):
        memory.read(gpa, length)
    with pytest.raises(AddressOverflowError):
        memory.fill(gpa, length)
    assert not memory.check_range(gpa, length, Access.WRITE)


def test_zero_length_access() -> None:
    memory = _two_adjacent()
    assert memory.read(0x10, 0) == b""
    memory.write(0x10, b"")
    assert memory.check_range(0x1FFF, 0)
    with pytest.raises(GuestMemoryError):
        memory.read(0x5000, 0)  # even an empty access must start in RAM


def test_scalars_little_endian_and_truncated() -> None:
    memory = _two_adjacent()
    memory.store_u8(0, 0x1FF)
    memory.store_u16(2, 0x1_BEEF)
    memory.store_u32(4, 0x1_CAFE_F00D)
    memory.store_u64(8, (1 << 64) | 0x1122334455667788)
    assert memory.read(0, 16) == bytes.fromhex("ff00efbe0df0feca8877665544332211")
    assert memory.load_u8(0) == 0xFF
    assert memory.load_u16(2) == 0xBEEF
    assert memory.load_u32(4) == 0xCAFEF00D
    assert memory.load_u64(8) == 0x1122334455667788


@pytest.mark.parametrize("size", [2, 4, 8])
def test_scalar_across_regions_is_refused(size: int) -> None:
    memory = _two_adjacent()
    gpa = 0x1000 - size // 2
    load = {2: memory.load_u16, 4: memory.load_u32, 8: memory.load_u64}[size]
    with pytest.raises(GuestMemoryError, match="spans"):
        load(gpa)


def test_read_write_struct() -> None:
    memory = _two_adjacent()
    layout = struct.Struct("<QIH")
    memory.write_struct(layout, 0x100, 7, 8, 9)
    assert memory.read_struct(layout, 0x100) == (7, 8, 9)
    with pytest.raises(GuestMemoryError):
        memory.read_struct(layout, 0x2000 - 4)


def test_readonly_region() -> None:
    rom = MemoryRegion(0x1000, bytearray(b"R" * 0x1000), readonly=True)
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 0x1000), rom])
    assert memory.read(0x1000, 2) == b"RR"
    assert memory.check_range(0x1000, 0x10, Access.READ)
    assert not memory.check_range(0x1000, 0x10, Access.WRITE)
    for op in (
        lambda: memory.write(0x1000, b"x"),
        lambda: memory.write(0xFFF, b"xx"),  # starts in RAM, ends in ROM: nothing written
        lambda: memory.fill(0x1800, 4),
        lambda: memory.store_u32(0x1000, 1),
        lambda: memory.view(0x1000, 4, Access.WRITE),
    ):
        with pytest.raises(GuestMemoryError, match="read-only"):
            op()
    assert memory.read(0xFFF, 2) == b"\0R"
    view = memory.view(0x1000, 4)
    assert view.readonly and bytes(view) == b"RRRR"


def test_view_within_one_region() -> None:
    memory = _two_adjacent()
    view = memory.view(0x10, 4, Access.WRITE)
    view[:] = b"wxyz"
    del view
    assert memory.read(0x10, 4) == b"wxyz"
    assert len(memory.view(0x10, 0)) == 0
    with pytest.raises(GuestMemoryError, match="more than one"):
        memory.view(0xFFE, 4)


def test_views_split_at_region_boundaries() -> None:
    memory = _two_adjacent()
    memory.write(0xFFC, b"12345678")
    views = memory.views([(0xFFC, 8), (0, 2)])
    assert [bytes(v) for v in views] == [b"1234", b"5678", b"\0\0"]
    with pytest.raises(GuestMemoryError):
        memory.views([(0, 1), (0x1FFF, 2)])


def test_regression_views_of_readonly_region_are_readonly() -> None:
    # ``view`` returned read-only views of read-only regions but ``views`` did not, so a
    # device could write ROM through a READ view.
    rom = MemoryRegion(0, bytearray(16), readonly=True)
    memory = GuestMemory([rom])
    (view,) = memory.views([(0, 16)])
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1


# -- the translate (IOMMU) hook -----------------------------------------------------------


class _Iommu:
    """Maps iova [0x10_0000, +0x1000) to gpa 0x1000 for reads and writes, faults elsewhere."""

    def __init__(self, writable: bool = True) -> None:
        self.calls: list[tuple[int, int, Access]] = []
        self.writable = writable

    def __call__(self, iova: int, length: int, access: Access) -> int:
        self.calls.append((iova, length, access))
        if not (0x10_0000 <= iova and iova + length <= 0x10_1000):
            raise GuestMemoryError(iova, length, "IOMMU fault")
        if access & Access.WRITE and not self.writable:
            raise GuestMemoryError(iova, length, "IOMMU write fault")
        return iova - 0x10_0000 + 0x1000


def test_translate_hook_maps_iova() -> None:
    iommu = _Iommu()
    memory = _two_adjacent()
    memory.translate = iommu
    memory.write(0x10_0010, b"dma")
    memory.translate = None
    assert memory.read(0x1010, 3) == b"dma"
    memory.translate = iommu
    assert memory.load_u16(0x10_0010) == int.from_bytes(b"dm", "little")
    assert iommu.calls[0] == (0x10_0010, 3, Access.WRITE)
    assert iommu.calls[-1] == (0x10_0010, 2, Access.READ)


def test_translate_hook_faults_are_guest_memory_errors() -> None:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 0x4000)], translate=_Iommu(writable=False))
    with pytest.raises(GuestMemoryError, match="IOMMU fault"):
        memory.read(0x1010, 1)  # a gpa that is RAM, but not a mapped iova
    with pytest.raises(GuestMemoryError, match="write fault"):
        memory.store_u8(0x10_0000, 1)
    assert not memory.check_range(0x10_0FFF, 2)
    assert memory.read(0x10_0000, 1) == b"\0"


def test_translate_hook_result_is_range_checked() -> None:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 0x1000)], translate=lambda iova, n, a: (1 << 64) - 1)
    with pytest.raises(AddressOverflowError):
        memory.read(0, 4)
    memory.translate = lambda iova, n, a: 0x5000  # translates to a hole
    with pytest.raises(GuestMemoryError):
        memory.load_u32(0)
