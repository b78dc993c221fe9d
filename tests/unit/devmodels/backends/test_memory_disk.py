from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels import GuestMemory, MemoryRegion, UsageError
from devmodels.backends import BlockCompletion, BlockOp, BlockRequest, BlockStatus
from devmodels.backends.block import MemoryDiskBackend, RawFileBackend

DISK = 64 * 1024
RAM = 64 * 1024


@pytest.fixture
def memory():
    mem = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
    yield mem
    mem.close()


def one(backend, memory, request) -> BlockCompletion:
    backend.submit(request, memory)
    (completion,) = backend.completions()
    return completion


def test_round_trip_and_synchronous_completion(memory):
    with MemoryDiskBackend(DISK) as disk:
        data = os.urandom(2048)
        memory.write(100, data)
        disk.submit(BlockRequest(BlockOp.WRITE, 1024, 2048, [(100, 1000), (1100, 1048)], tag="w"), memory)
        assert disk.completions() == [BlockCompletion("w", BlockStatus.OK, 2048)]
        assert disk.read_at(1024, 2048) == data
        c = one(disk, memory, BlockRequest(BlockOp.READ, 1024, 2048, [(40000, 2048)], tag="r"))
        assert c == BlockCompletion("r", BlockStatus.OK, 2048)
        assert memory.read(40000, 2048) == data
        disk.drain()  # nothing in flight, returns at once


def test_initial_data_and_host_access():
    with MemoryDiskBackend(4096, data=b"abc") as disk:
        assert disk.read_at(0, 4) == b"abc\0"
        disk.write_at(4090, b"xyz")
        assert disk.read_at(4090, 3) == b"xyz"
        with pytest.raises(UsageError):
            disk.read_at(4095, 2)
    with pytest.raises(UsageError):
        MemoryDiskBackend(512, data=bytes(513))
    for size in (0, -1, 1.5, True):
        with pytest.raises(UsageError):
            MemoryDiskBackend(size)  # type: ignore[arg-type]


@pytest.mark.parametrize("op", [BlockOp.DISCARD, BlockOp.WRITE_ZEROES])
def test_discard_and_write_zeroes_zero_the_range(memory, op):
    size = 5 * 4096
    with MemoryDiskBackend(size, data=b"\xee" * size) as disk:
        assert disk.supports_discard
        # Partial pages at both edges, whole pages in between.
        c = one(disk, memory, BlockRequest(op, 1024, 3 * 4096, unmap=True))
        assert c.status is BlockStatus.OK and c.transferred == 3 * 4096
        content = disk.read_at(0, size)
        assert content[:1024] == b"\xee" * 1024
        assert content[1024 : 1024 + 3 * 4096] == bytes(3 * 4096)
        assert content[1024 + 3 * 4096 :] == b"\xee" * (size - 1024 - 3 * 4096)
        c = one(disk, memory, BlockRequest(op, 512, 512))  # inside one page
        assert c.status is BlockStatus.OK and disk.read_at(0, 1024) == b"\xee" * 512 + bytes(512)


def test_readonly(memory):
    with MemoryDiskBackend(DISK, readonly=True, data=b"\x42" * 512) as disk:
        assert disk.readonly and not disk.supports_discard
        for request in (
            BlockRequest(BlockOp.WRITE, 0, 512, [(0, 512)]),
            BlockRequest(BlockOp.DISCARD, 0, 512),
            BlockRequest(BlockOp.WRITE_ZEROES, 0, 512),
        ):
            assert one(disk, memory, request).status is BlockStatus.IO_ERROR
        assert disk.read_at(0, 512) == b"\x42" * 512
        assert one(disk, memory, BlockRequest(BlockOp.READ, 0, 512, [(0, 512)])).status is BlockStatus.OK
        assert one(disk, memory, BlockRequest(BlockOp.FLUSH, 0, 0)).status is BlockStatus.OK


def test_guest_memory_outside_ram_is_io_error(memory):
    with MemoryDiskBackend(DISK) as disk:
        c = one(disk, memory, BlockRequest(BlockOp.READ, 0, 512, [(RAM - 100, 512)]))
        assert c.status is BlockStatus.IO_ERROR and "guest memory" in c.error


def test_notify_and_close(memory):
    calls = []
    disk = MemoryDiskBackend(DISK)
    disk.set_notify(lambda: calls.append(1))
    disk.submit(BlockRequest(BlockOp.FLUSH, 0, 0), memory)
    disk.submit(BlockRequest(BlockOp.FLUSH, 0, 0), memory)
    assert calls == [1]  # once, when the ready list became non-empty
    assert len(disk.completions()) == 2
    disk.set_notify(lambda: 1 / 0)
    disk.submit(BlockRequest(BlockOp.FLUSH, 0, 0), memory)  # a failing hook is contained
    disk.close()
    disk.close()
    with pytest.raises(UsageError):
        disk.submit(BlockRequest(BlockOp.FLUSH, 0, 0), memory)


# -- differential: MemoryDiskBackend, RawFileBackend and a plain bytearray agree -----------

SECTOR = 512
SECTORS = 16

requests = st.lists(
    st.tuples(
        st.sampled_from(list(BlockOp)),
        st.integers(-1, SECTORS + 1),  # start sector (out of range at the edges)
        st.integers(0, 4),  # sectors
        st.integers(0, RAM // SECTOR),  # guest page of the buffer (last one is past RAM)
        st.booleans(),  # unmap
        st.integers(0, 3),  # how many extra bytes to split off into a second segment
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=requests, salt=st.integers(0, 2**32))
def test_backends_agree_with_a_model(tmp_path, ops, salt):
    rng = random.Random(salt)
    seed = rng.randbytes(SECTOR * SECTORS)
    image = tmp_path / "diff.img"
    image.write_bytes(seed)
    model = bytearray(seed)
    mem_a = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
    mem_b = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
    fill = rng.randbytes(RAM)
    mem_a.write(0, fill)
    mem_b.write(0, fill)
    with MemoryDiskBackend(len(seed), data=seed) as disk, RawFileBackend(image, workers=1) as raw:
        for op, start, count, page, unmap, split in ops:
            offset, length = start * SECTOR, count * SECTOR
            gpa = page * SECTOR
            cut = min(split * 100, length)
            segments = [(gpa, cut), (gpa + cut, length - cut)] if op in (BlockOp.READ, BlockOp.WRITE) else []
            request = BlockRequest(op, offset, length, segments, tag=(op, start), unmap=unmap)
            a = one(disk, mem_a, request)
            raw.submit(request, mem_b)
            raw.drain()
            (b,) = raw.completions()
            assert (a.status, a.transferred) == (b.status, b.transferred), (a, b)
            in_range = 0 <= offset and offset + length <= len(model)
            # GuestMemory refuses even a zero-length segment that does not start in RAM.
            in_ram = all(g < RAM and g + n <= RAM for g, n in segments)
            if op is BlockOp.FLUSH:
                assert a.status is BlockStatus.OK
            elif op in (BlockOp.DISCARD, BlockOp.WRITE_ZEROES):
                assert (a.status is BlockStatus.OK) == in_range
                if in_range:
                    model[offset : offset + length] = bytes(length)
            else:
                assert (a.status is BlockStatus.OK) == (in_range and in_ram)
                if a.status is BlockStatus.OK and op is BlockOp.WRITE:
                    model[offset : offset + length] = mem_a.read(gpa, length)
                if a.status is BlockStatus.OK and op is BlockOp.READ:
                    assert mem_a.read(gpa, length) == bytes(model[offset : offset + length])
            assert mem_a.read(0, RAM) == mem_b.read(0, RAM)
        assert disk.read_at(0, len(model)) == bytes(model)
    assert image.read_bytes() == bytes(model)
