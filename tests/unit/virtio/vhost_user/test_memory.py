"""The vhost-user memory table (virtio.vhost_user.memory)."""

from __future__ import annotations

import os

import pytest

from devmodels import GuestMemory, MemoryRegion
from virtio.vhost_user.memory import MemoryTable, MemoryTableError
from virtio.vhost_user.messages import Region

U = 0x7F00_0000_0000


def memfd(size: int) -> int:
    fd = os.memfd_create("test-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def table():
    memory = GuestMemory()
    t = MemoryTable(memory, max_slots=4)
    yield t
    t.clear()


def test_set_table_maps_and_translates(table):
    a, b = memfd(0x10000), memfd(0x20000)
    os.pwrite(a, b"hello", 0x100)
    table.set_table([Region(0, 0x10000, U, 0), Region(0x100000, 0x10000, U + 0x200000, 0x10000)], [a, b])
    assert not is_open(a) and not is_open(b)  # mapped, then closed
    assert table.memory.read(0x100, 5) == b"hello"
    assert table.uaddr_to_gpa(U + 0x100, 16) == 0x100
    assert table.uaddr_to_gpa(U + 0x200010, 16) == 0x100010
    assert table.uaddr_to_gpa(U + 0xFFF8, 16) is None  # crosses the end of a region
    assert table.uaddr_to_gpa(U - 1, 1) is None
    assert table.uaddr_to_gpa(2**64 - 4, 8) is None


def test_set_table_replaces_the_old_one(table):
    table.set_table([Region(0, 0x10000, U, 0)], [memfd(0x10000)])
    table.set_table([Region(0x200000, 0x10000, U, 0)], [memfd(0x10000)])
    assert [r.base for r in table.memory.regions] == [0x200000]


@pytest.mark.parametrize(
    "regions, sizes, reason",
    [
        ([Region(0, 0, U, 0)], [0x1000], "size 0"),
        ([Region(0, 0x1000, U, 0x800)], [0x2000], "not page aligned"),
        ([Region(0, 0x2000, U, 0)], [0x1000], "shorter"),
        ([Region(2**64 - 0x1000, 0x2000, U, 0)], [0x2000], "overflows"),
        ([Region(0, 0x2000, U, 0), Region(0x1000, 0x2000, U + 0x10000, 0)], [0x2000, 0x2000], "overlap"),
        ([Region(0, 0x2000, U, 0), Region(0x10000, 0x2000, U + 0x1000, 0)], [0x2000, 0x2000], "overlap"),
    ],
    ids=["empty", "unaligned", "short-file", "overflow", "gpa-overlap", "uaddr-overlap"],
)
def test_invalid_tables_change_nothing_and_close_descriptors(table, regions, sizes, reason):
    table.set_table([Region(0x800000, 0x1000, U + 0x800000, 0)], [memfd(0x1000)])
    fds = [memfd(size) for size in sizes]
    with pytest.raises(MemoryTableError, match=reason):
        table.set_table(regions, fds)
    assert not any(is_open(fd) for fd in fds)
    assert [r.base for r in table.memory.regions] == [0x800000]


def test_descriptor_count_and_kind(table):
    with pytest.raises(MemoryTableError, match="descriptors"):
        table.set_table([Region(0, 0x1000, U, 0)], [])
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(MemoryTableError, match="not a memory file"):
        table.set_table([Region(0, 0x1000, U, 0)], [r])
    assert not is_open(r)


def test_add_and_remove_regions(table):
    table.add(Region(0, 0x1000, U, 0), memfd(0x1000))
    table.add(Region(0x10000, 0x1000, U + 0x10000, 0), memfd(0x1000))
    with pytest.raises(MemoryTableError):
        table.add(Region(0x800, 0x1000, U + 0x40000, 0), memfd(0x1000))
    with pytest.raises(MemoryTableError):
        table.remove(Region(0x20000, 0x1000, U, 0))
    table.remove(Region(0x10000, 0x1000, U + 0x10000, 0x1234))  # the offset is ignored
    assert [r.base for r in table.memory.regions] == [0]
    for i in range(3):
        table.add(Region(0x100000 * (i + 1), 0x1000, U + 0x100000 * (i + 1), 0), memfd(0x1000))
    fd = memfd(0x1000)
    with pytest.raises(MemoryTableError, match="slots"):
        table.add(Region(0x900000, 0x1000, U + 0x900000, 0), fd)
    assert not is_open(fd)


def test_ram_the_table_does_not_own_is_protected():
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 0x10000)])
    table = MemoryTable(memory)
    with pytest.raises(MemoryTableError, match="already has"):
        table.set_table([Region(0x8000, 0x10000, U, 0)], [memfd(0x10000)])
    table.set_table([Region(0x10000, 0x10000, U, 0)], [memfd(0x10000)])
    table.clear()
    assert [r.base for r in memory.regions] == [0]
