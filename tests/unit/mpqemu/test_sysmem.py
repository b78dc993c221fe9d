"""SysmemTable: SYNC_SYSMEM tables validated, mapped into GuestMemory, replaced, closed."""

from __future__ import annotations

import fcntl
import mmap
import os

import pytest

from devmodels import GuestMemory, GuestMemoryError, MemoryRegion
from mpqemu import SysmemError, SysmemTable
from mpqemu.layouts import SyncSysmem

PAGE = mmap.PAGESIZE
MIB = 1 << 20


def _table(*entries: tuple[int, int, int]) -> SyncSysmem:
    padded = list(entries) + [(0, 0, 0)] * (8 - len(entries))
    return SyncSysmem(tuple(e[0] for e in padded), tuple(e[1] for e in padded), tuple(e[2] for e in padded))


def _memfd(size: int, seal: bool = True) -> int:
    fd = os.memfd_create("test-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _open_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def ram():
    """A 2 MiB memfd the 'QEMU side' keeps, and its mapping."""
    fd = _memfd(2 * MIB)
    view = mmap.mmap(fd, 2 * MIB)
    yield fd, view
    view.close()
    os.close(fd)


def test_two_sections_of_one_file(ram) -> None:  # type: ignore[no-untyped-def]
    fd, view = ram
    memory = GuestMemory()
    table = SysmemTable(memory)
    # Like QEMU's [0, 0xc0000) and [0x100000, ...) sections of one memfd.
    assert table.apply(_table((0, 0xC0000, 0), (MIB, MIB, MIB)), [os.dup(fd), os.dup(fd)])
    assert [(r.base, r.size) for r in memory.regions] == [(0, 0xC0000), (MIB, MIB)]
    memory.write(MIB + 16, b"hello")
    assert view[MIB + 16 : MIB + 21] == b"hello"  # shared with the other side
    view[0x100:0x104] = b"abcd"
    assert memory.read(0x100, 4) == b"abcd"
    with pytest.raises(GuestMemoryError):
        memory.read(0xC0000, 1)  # the hole between the sections
    table.close()
    assert memory.regions == ()


def test_identical_table_keeps_the_mapping_and_closes_new_fds(ram) -> None:  # type: ignore[no-untyped-def]
    fd, _ = ram
    memory = GuestMemory()
    table = SysmemTable(memory)
    entry = (0, 2 * MIB, 0)
    first = os.dup(fd)
    assert table.apply(_table(entry), [first])
    region = memory.regions[0]
    second = os.dup(fd)
    assert table.apply(_table(entry), [second]) is False
    assert memory.regions[0] is region and not _is_open(second) and _is_open(first)
    assert table.updates == 1
    table.close()
    assert not _is_open(first)


def test_new_table_replaces_and_closes_the_old(ram) -> None:  # type: ignore[no-untyped-def]
    fd, _ = ram
    memory = GuestMemory()
    table = SysmemTable(memory)
    old = os.dup(fd)
    table.apply(_table((0, MIB, 0)), [old])
    new = os.dup(fd)
    before = _open_count()
    assert table.apply(_table((4 * MIB, MIB, MIB)), [new])
    # The old descriptor and the old mapping's own dup are gone; the new mapping holds one.
    assert _open_count() == before - 1
    assert _is_open(new)
    assert [(r.base, r.size) for r in memory.regions] == [(4 * MIB, MIB)]
    table.close()


def test_empty_table_unmaps_everything(ram) -> None:  # type: ignore[no-untyped-def]
    fd, _ = ram
    memory = GuestMemory()
    table = SysmemTable(memory)
    table.apply(_table((0, MIB, 0)), [os.dup(fd)])
    assert table.apply(_table(), [])
    assert memory.regions == ()


def test_regions_the_vmm_added_are_left_alone(ram) -> None:  # type: ignore[no-untyped-def]
    fd, _ = ram
    own = MemoryRegion.from_bytearray(16 * MIB, PAGE)
    memory = GuestMemory([own])
    table = SysmemTable(memory)
    table.apply(_table((0, MIB, 0)), [os.dup(fd)])
    table.close()
    assert memory.regions == (own,)
    with pytest.raises(SysmemError, match="overlaps RAM the VMM added"):
        table.apply(_table((16 * MIB, PAGE, 0)), [os.dup(fd)])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ((0, 0, 0), "zero size"),
        ((2**64 - PAGE, 2 * PAGE, 0), "overflows"),
        ((0, PAGE, 100), "not page aligned"),
        ((0, PAGE, -PAGE), "negative"),
        ((0, 4 * MIB, 0), "past the end of the file"),
        ((0, 2 * MIB, PAGE), "past the end of the file"),
    ],
)
def test_bad_entries_are_refused_and_unmap_the_old_table(ram, entry, message) -> None:  # type: ignore[no-untyped-def]
    fd, _ = ram
    memory = GuestMemory()
    table = SysmemTable(memory)
    old = os.dup(fd)
    table.apply(_table((0, MIB, 0)), [old])
    bad = os.dup(fd)
    with pytest.raises(SysmemError, match=message):
        table.apply(_table(entry), [bad])
    assert memory.regions == ()
    assert not _is_open(bad) and not _is_open(old)


def test_overlapping_entries_are_refused(ram) -> None:  # type: ignore[no-untyped-def]
    fd, _ = ram
    table = SysmemTable(GuestMemory())
    fds = [os.dup(fd), os.dup(fd)]
    with pytest.raises(SysmemError, match="overlap"):
        table.apply(_table((0, MIB, 0), (MIB - PAGE, MIB, 0)), fds)
    assert not any(_is_open(f) for f in fds)


def test_descriptor_that_is_not_a_file_is_refused() -> None:
    r, w = os.pipe()
    table = SysmemTable(GuestMemory())
    with pytest.raises(SysmemError, match="not a regular file"):
        table.apply(_table((0, PAGE, 0)), [r])
    assert not _is_open(r)
    os.close(w)


def test_more_than_eight_descriptors_are_refused(ram) -> None:  # type: ignore[no-untyped-def]
    fd, _ = ram
    fds = [os.dup(fd) for _ in range(9)]
    with pytest.raises(SysmemError, match="more than 8"):
        SysmemTable(GuestMemory()).apply(_table(), fds)
    assert not any(_is_open(f) for f in fds)


def test_unsealed_memfd_is_mapped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fd = _memfd(MIB, seal=False)
    table = SysmemTable(GuestMemory())
    with caplog.at_level("WARNING", logger="mpqemu"):
        assert table.apply(_table((0, MIB, 0)), [fd])
    assert "not sealed" in caplog.text
    table.close()
