"""Server DMA windows: DmaTable bookkeeping and DmaMemory routing."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from devmodels import Access, GuestMemory, GuestMemoryError, MemoryRegion
from passthrough.errors import VfioUserReject
from passthrough.user.dma import DmaMemory, DmaTable

RW = 0b11


def memfd(size: int, data: bytes = b"") -> int:
    fd = os.memfd_create("t")
    os.ftruncate(fd, size)
    if data:
        os.pwrite(fd, data, 0)
    return fd


def test_fd_window_is_mapped_and_unmapped() -> None:
    memory = GuestMemory()
    table = DmaTable(memory, 8)
    fd = memfd(0x2000, b"hello")
    window = table.add(0x10000, 0x2000, RW, fd, 0)
    assert memory.read(0x10000, 5) == b"hello"
    memory.write(0x10001, b"EL")
    assert os.pread(fd, 5, 0) == b"hELlo"
    assert table.find(0x10000, 0x2000) is window and table.find(0x11FFF, 2) is None
    table.remove(0x10000, 0x2000)
    assert memory.regions == ()
    with pytest.raises(OSError):
        os.fstat(fd)  # the table owned and closed it


def test_read_only_window() -> None:
    memory = GuestMemory()
    table = DmaTable(memory, 8)
    table.add(0, 0x1000, 0b01, memfd(0x1000), 0)
    with pytest.raises(GuestMemoryError):
        memory.write(0, b"x")
    table.clear()


@pytest.mark.parametrize(
    ("address", "size", "flags", "code"),
    [(0, 0, RW, errno.EINVAL), ((1 << 64) - 1, 2, RW, errno.EINVAL), (0, 0x1000, 0b100, errno.EINVAL)],
)
def test_bad_requests(address: int, size: int, flags: int, code: int) -> None:
    with pytest.raises(VfioUserReject) as info:
        DmaTable(GuestMemory(), 8).add(address, size, flags, None, 0)
    assert info.value.errno == code


def test_overlap_limit_and_exact_unmap() -> None:
    table = DmaTable(GuestMemory(), 2)
    table.add(0x1000, 0x1000, RW, None, 0)
    for address, size in ((0x1800, 0x100), (0x0, 0x1001), (0x1FFF, 1)):
        with pytest.raises(VfioUserReject) as info:
            table.add(address, size, RW, None, 0)
        assert info.value.errno == errno.EEXIST
    table.add(0x3000, 0x1000, RW, None, 0)
    with pytest.raises(VfioUserReject) as info:
        table.add(0x5000, 0x1000, RW, None, 0)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(VfioUserReject) as info:
        table.remove(0x1000, 0x800)
    assert info.value.errno == errno.ENOENT
    table.remove(0x1000, 0x1000)
    assert [w.address for w in table.windows] == [0x3000]


def test_fd_checks_leave_the_fd_to_the_caller() -> None:
    table = DmaTable(GuestMemory(), 8)
    short = memfd(0x1000)
    r, w = os.pipe()
    for fd, offset, size in ((short, 0, 0x2000), (short, 0x800, 0x800), (r, 0, 0x1000)):
        with pytest.raises(VfioUserReject):
            table.add(0, size, RW, fd, offset)
        os.fstat(fd)  # still open: the caller (the server's dispatcher) closes it
    for fd in (short, r, w):
        os.close(fd)


def test_collision_with_vmm_memory_is_eexist() -> None:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 0x1000)])
    with pytest.raises(VfioUserReject) as info:
        DmaTable(memory, 8).add(0, 0x1000, RW, memfd(0x1000), 0)
    assert info.value.errno == errno.EEXIST


class FakeChannel:
    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.log: list[tuple[str, int, int]] = []

    def dma_read(self, address: int, count: int) -> bytes:
        self.log.append(("read", address, count))
        return bytes(self.data[address : address + count])

    def dma_write(self, address: int, data: bytes) -> None:
        self.log.append(("write", address, len(data)))
        self.data[address : address + len(data)] = data


def test_dma_memory_routes_message_windows_to_the_channel() -> None:
    memory = DmaMemory()
    table = DmaTable(memory, 8)
    table.add(0x1000, 0x1000, RW, None, 0)
    table.add(0x4000, 0x1000, 0b01, None, 0)
    channel = FakeChannel(0x8000)
    memory.channel = channel
    memory.write(0x1010, b"abc")
    assert channel.data[0x1010:0x1013] == b"abc"
    assert memory.read(0x1010, 3) == b"abc"
    memory.store_u32(0x1100, 0xAABBCCDD)
    assert memory.load_u32(0x1100) == 0xAABBCCDD
    assert memory.load_u8(0x1100) == 0xDD and memory.load_u16(0x1100) == 0xCCDD
    memory.store_u64(0x1200, 7)
    assert memory.load_u64(0x1200) == 7
    layout = struct.Struct("<IH")
    memory.write_struct(layout, 0x1300, 5, 6)
    assert memory.read_struct(layout, 0x1300) == (5, 6)
    buf = bytearray(3)
    memory.read_into(0x1010, buf)
    assert buf == b"abc"
    memory.fill(0x1400, 4, 0xEE)
    assert memory.read(0x1400, 4) == b"\xee" * 4
    assert memory.check_range(0x1000, 0x1000, Access.WRITE)
    assert not memory.check_range(0x4000, 0x10, Access.WRITE)
    assert not memory.check_range(0x1F00, 0x200)  # straddles the window end
    with pytest.raises(GuestMemoryError):
        memory.write(0x4000, b"x")  # read-only window
    with pytest.raises(GuestMemoryError):
        memory.view(0x1000, 4)  # no zero-copy view without an fd
    with pytest.raises(GuestMemoryError):
        memory.read(0x1FFE, 4)  # straddles
    memory.channel = None
    with pytest.raises(GuestMemoryError, match="no vfio-user client"):
        memory.read(0x1000, 1)


def test_dma_memory_falls_back_to_regions() -> None:
    memory = DmaMemory()
    table = DmaTable(memory, 8)
    table.add(0x1000, 0x1000, RW, None, 0)
    table.add(0x8000, 0x1000, RW, memfd(0x1000), 0)
    memory.channel = FakeChannel(0x1)
    memory.write(0x8000, b"mapped")
    assert memory.view(0x8000, 6).tobytes() == b"mapped"
    assert memory.load_u16(0x8000) == int.from_bytes(b"ma", "little")
    table.clear()
    assert memory.regions == ()
    with pytest.raises(GuestMemoryError):
        memory.read(0x1000, 1)  # the message window is gone too
