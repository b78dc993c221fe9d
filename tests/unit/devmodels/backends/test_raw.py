from __future__ import annotations

import errno
import os
import threading

import pytest

from devmodels import GuestMemory, HostError, MemoryRegion, UsageError
from devmodels.backends import BlockCompletion, BlockOp, BlockRequest, BlockStatus
from devmodels.backends.block import BOUNCE_SIZE, RawFileBackend
from devmodels.backends.block import _raw

MIB = 1 << 20
RAM = 8 * MIB
RO_BASE = 0x1000_0000


@pytest.fixture
def memory():
    mem = GuestMemory([MemoryRegion.memfd(0, RAM)])
    ro_fd = os.memfd_create("ro")
    os.ftruncate(ro_fd, 4096)
    ro = MemoryRegion.from_fd(RO_BASE, 4096, ro_fd, readonly=True)
    mem.add_region(ro)
    yield mem
    mem.close()
    os.close(ro_fd)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 * MIB)
    return path


def run(backend: RawFileBackend, memory: GuestMemory, *requests: BlockRequest) -> list[BlockCompletion]:
    for request in requests:
        backend.submit(request, memory)
    backend.drain()
    completions = backend.completions()
    assert len(completions) == len(requests)
    return completions


def one(backend, memory, request) -> BlockCompletion:
    (completion,) = run(backend, memory, request)
    return completion


def open_backend(image, direct: bool, **kwargs) -> RawFileBackend:
    try:
        return RawFileBackend(image, direct=direct, **kwargs)
    except HostError as exc:
        if direct:
            pytest.skip(f"O_DIRECT unavailable here: {exc}")
        raise


@pytest.fixture(params=[False, True], ids=["buffered", "direct"])
def backend(request, image):
    b = open_backend(image, request.param)
    yield b
    b.close()


def test_properties(backend):
    assert backend.capacity == 4 * MIB
    assert backend.logical_block_size == 512
    assert not backend.readonly
    assert "RawFileBackend" in repr(backend)


def test_round_trip_through_guest_memory(backend, memory, image):
    data = os.urandom(3 * 4096)
    memory.write(0x10000, data)
    # Scattered, unaligned guest segments (the direct path must bounce these).
    segments = [(0x10000, 4096), (0x11000, 4096), (0x12000, 4096)]
    c = one(backend, memory, BlockRequest(BlockOp.WRITE, 8192, len(data), segments, tag="w"))
    assert (c.status, c.transferred) == (BlockStatus.OK, len(data))
    c = one(backend, memory, BlockRequest(BlockOp.READ, 8192, len(data), [(0x20001, 5000), (0x30003, 7288)], tag="r"))
    assert (c.status, c.transferred) == (BlockStatus.OK, len(data))
    assert memory.read(0x20001, 5000) + memory.read(0x30003, 7288) == data
    with open(image, "rb") as f:
        f.seek(8192)
        assert f.read(len(data)) == data


def test_request_larger_than_bounce_buffer(backend, memory):
    size = BOUNCE_SIZE * 2 + 4096
    data = os.urandom(size)
    memory.write(0x100001, data)  # unaligned: forces the bounce path under O_DIRECT
    assert one(backend, memory, BlockRequest(BlockOp.WRITE, 0, size, [(0x100001, size)])).status is BlockStatus.OK
    memory.fill(0x100001, size, 0)
    c = one(backend, memory, BlockRequest(BlockOp.READ, 0, size, [(0x400000, size)]))
    assert c.status is BlockStatus.OK and memory.read(0x400000, size) == data


def test_segment_spanning_two_regions(image):
    mem = GuestMemory([MemoryRegion.memfd(0, 8192), MemoryRegion.memfd(8192, 8192)])
    with RawFileBackend(image) as b:
        data = os.urandom(8192)
        mem.write(4096, data)
        assert one(b, mem, BlockRequest(BlockOp.WRITE, 0, 8192, [(4096, 8192)])).status is BlockStatus.OK
        assert one(b, mem, BlockRequest(BlockOp.READ, 0, 8192, [(0, 8192)])).status is BlockStatus.OK
        assert mem.read(0, 8192) == data
    mem.close()


def test_many_segments_exceed_iov_max(image, memory):
    count = 3000  # > IOV_MAX (1024): the transfer is issued in batches
    data = os.urandom(512 * count)
    segments = [(i * 1024, 512) for i in range(count)]  # every other 512-byte piece
    for i, (gpa, _) in enumerate(segments):
        memory.write(gpa, data[i * 512 : (i + 1) * 512])
    with RawFileBackend(image) as b:
        assert one(b, memory, BlockRequest(BlockOp.WRITE, 0, len(data), segments)).status is BlockStatus.OK
        c = one(b, memory, BlockRequest(BlockOp.READ, 0, len(data), [(0x600000, len(data))]))
        assert c.status is BlockStatus.OK and memory.read(0x600000, len(data)) == data


def test_short_transfers_are_continued(image, memory, monkeypatch):
    real_preadv, real_pwritev = os.preadv, os.pwritev

    def dribble(real):
        def call(fd, buffers, offset):
            first = memoryview(buffers[0])[:100]
            try:
                return real(fd, [first], offset)
            finally:
                first.release()

        return call

    monkeypatch.setattr(os, "preadv", dribble(real_preadv))
    monkeypatch.setattr(os, "pwritev", dribble(real_pwritev))
    data = os.urandom(4096)
    memory.write(0, data)
    with RawFileBackend(image, inline_reads=False) as b:  # the workers' continuation loop
        assert one(b, memory, BlockRequest(BlockOp.WRITE, 512, 4096, [(0, 1000), (1000, 3096)])).status is BlockStatus.OK
        c = one(b, memory, BlockRequest(BlockOp.READ, 512, 4096, [(0x8000, 333), (0x9000, 3763)]))
        assert (c.status, c.transferred) == (BlockStatus.OK, 4096)
        assert memory.read(0x8000, 333) + memory.read(0x9000, 3763) == data


def test_read_past_end_of_file_is_io_error(backend, memory, image):
    memory.fill(0, 8192, 0xAA)
    os.truncate(image, 4096)  # the image shrank under the backend: capacity is stale
    c = one(backend, memory, BlockRequest(BlockOp.READ, 0, 8192, [(0, 8192)]))
    assert c.status is BlockStatus.IO_ERROR
    assert c.transferred == 4096 and "short" in c.error


def test_range_past_capacity_is_io_error(backend, memory):
    c = one(backend, memory, BlockRequest(BlockOp.READ, 4 * MIB - 512, 1024, [(0, 1024)]))
    assert c.status is BlockStatus.IO_ERROR and "capacity" in c.error


def test_guest_segments_outside_ram_are_io_error(backend, memory, image):
    before = image.read_bytes()
    for segments in ([(RAM - 256, 512)], [(0, 256), (1 << 40, 256)], [((1 << 64) - 256, 512)]):
        c = one(backend, memory, BlockRequest(BlockOp.WRITE, 0, 512, segments))
        assert c.status is BlockStatus.IO_ERROR and "guest memory" in c.error
    assert image.read_bytes() == before  # nothing was written
    c = one(backend, memory, BlockRequest(BlockOp.READ, 0, 512, [(RO_BASE, 512)]))
    assert c.status is BlockStatus.IO_ERROR  # DMA into read-only guest memory


def test_readonly_refuses_modifications(image, memory):
    image.write_bytes(b"\x5a" * (1 * MIB))
    with RawFileBackend(image, readonly=True) as b:
        assert b.readonly and not b.supports_discard
        memory.write(0, b"\x11" * 512)
        for request in (
            BlockRequest(BlockOp.WRITE, 0, 512, [(0, 512)]),
            BlockRequest(BlockOp.DISCARD, 0, 4096),
            BlockRequest(BlockOp.WRITE_ZEROES, 0, 4096),
        ):
            c = one(b, memory, request)
            assert c.status is BlockStatus.IO_ERROR and "read-only" in c.error
        assert one(b, memory, BlockRequest(BlockOp.FLUSH, 0, 0)).status is BlockStatus.OK
        assert one(b, memory, BlockRequest(BlockOp.READ, 0, 512, [(0, 512)])).status is BlockStatus.OK
        assert memory.read(0, 512) == b"\x5a" * 512
    assert image.read_bytes() == b"\x5a" * MIB


def _allocated(path) -> int:
    return os.stat(path).st_blocks


def test_discard_punches_holes(image, memory):
    data = os.urandom(MIB)
    image.write_bytes(data + bytes(3 * MIB))
    with RawFileBackend(image) as b:
        if not b.supports_discard:
            pytest.skip("the test directory's filesystem cannot punch holes")
        one(b, memory, BlockRequest(BlockOp.FLUSH, 0, 0))
        before = _allocated(image)
        c = one(b, memory, BlockRequest(BlockOp.DISCARD, 0, MIB, tag="d"))
        assert (c.status, c.transferred) == (BlockStatus.OK, MIB)
        assert _allocated(image) < before
        assert os.path.getsize(image) == 4 * MIB  # KEEP_SIZE
        c = one(b, memory, BlockRequest(BlockOp.READ, 0, 8192, [(0, 8192)]))
        assert c.status is BlockStatus.OK and memory.read(0, 8192) == bytes(8192)


@pytest.mark.parametrize("unmap", [False, True])
def test_write_zeroes(image, memory, unmap):
    image.write_bytes(b"\xff" * (4 * MIB))
    with RawFileBackend(image) as b:
        c = one(b, memory, BlockRequest(BlockOp.WRITE_ZEROES, 4096, 2 * MIB, unmap=unmap))
        assert (c.status, c.transferred) == (BlockStatus.OK, 2 * MIB)
    content = image.read_bytes()
    assert content[:4096] == b"\xff" * 4096
    assert content[4096 : 4096 + 2 * MIB] == bytes(2 * MIB)
    assert content[4096 + 2 * MIB :] == b"\xff" * (len(content) - 4096 - 2 * MIB)


def test_filesystem_without_fallocate(image, memory, monkeypatch):
    def refuse(fd, mode, offset, length):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(_raw, "fallocate", refuse)
    image.write_bytes(b"\xff" * (4 * MIB))
    with RawFileBackend(image) as b:
        assert not b.supports_discard  # the probe failed
        c = one(b, memory, BlockRequest(BlockOp.DISCARD, 0, 4096))
        assert c.status is BlockStatus.UNSUPPORTED
        # Zeros are written by hand, in bounded chunks, past one bounce buffer.
        size = BOUNCE_SIZE * 2 + 512
        c = one(b, memory, BlockRequest(BlockOp.WRITE_ZEROES, 512, size, unmap=True))
        assert c.status is BlockStatus.OK
    content = image.read_bytes()
    assert content[:512] == b"\xff" * 512 and content[512 : 512 + size] == bytes(size)
    assert content[512 + size :] == b"\xff" * (len(content) - 512 - size)


def test_discard_refused_later_turns_unsupported(image, memory, monkeypatch):
    with RawFileBackend(image) as b:
        if not b.supports_discard:
            pytest.skip("the test directory's filesystem cannot punch holes")

        def refuse(fd, mode, offset, length):
            raise OSError(errno.EOPNOTSUPP, "not supported")

        monkeypatch.setattr(_raw, "fallocate", refuse)
        assert one(b, memory, BlockRequest(BlockOp.DISCARD, 0, 4096)).status is BlockStatus.UNSUPPORTED
        assert not b.supports_discard


def test_host_io_error_becomes_io_error(image, memory, monkeypatch):
    def failing(fd, buffers, offset):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(os, "pwritev", failing)
    with RawFileBackend(image) as b:
        c = one(b, memory, BlockRequest(BlockOp.WRITE, 0, 512, [(0, 512)]))
        assert c.status is BlockStatus.IO_ERROR and "disk on fire" in c.error


def test_flush_completes_after_earlier_writes(image, memory, monkeypatch):
    synced: list[int] = []
    real = os.fdatasync
    backend = RawFileBackend(image, workers=4)

    def fdatasync(fd: int) -> None:
        synced.append(backend.in_flight)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    memory.write(0, os.urandom(64 * 4096))
    requests = [BlockRequest(BlockOp.WRITE, i * 4096, 4096, [(i * 4096, 4096)], tag=i) for i in range(64)]
    flush = BlockRequest(BlockOp.FLUSH, 0, 0, tag="flush")
    for r in requests:
        backend.submit(r, memory)
    backend.submit(flush, memory)
    backend.drain()
    order = [c.tag for c in backend.completions()]
    backend.close()
    assert order[-1] == "flush" and sorted(order[:-1]) == list(range(64))
    assert synced == [1]  # only the flush itself was in flight when it synced


def test_notify_called_from_worker(image, memory):
    ready = threading.Event()
    threads: list[str] = []

    def hook() -> None:
        threads.append(threading.current_thread().name)
        ready.set()

    with RawFileBackend(image, inline_reads=False) as b:  # inline reads notify on the caller's thread
        b.set_notify(hook)
        b.submit(BlockRequest(BlockOp.READ, 0, 512, [(0, 512)], tag=1), memory)
        assert ready.wait(30)
        assert [c.tag for c in b.completions()] == [1]
    assert threads[0].startswith("devmodels-raw")


def test_open_errors(tmp_path):
    with pytest.raises(HostError, match="cannot open"):
        RawFileBackend(tmp_path / "missing.img")
    with pytest.raises(HostError, match="regular file"):
        RawFileBackend("/dev/null")
    with pytest.raises(UsageError):
        RawFileBackend(tmp_path / "x", logical_block_size=1000)


def test_use_after_close(image, memory):
    b = RawFileBackend(image)
    b.close()
    b.close()
    with pytest.raises(UsageError):
        b.submit(BlockRequest(BlockOp.READ, 0, 512, [(0, 512)]), memory)


def test_zero_copy_used_for_aligned_direct_io(image, memory, monkeypatch):
    b = open_backend(image, direct=True)
    bounced = []
    real = b._bounced
    monkeypatch.setattr(b, "_bounced", lambda *a, **k: bounced.append(1) or real(*a, **k))
    try:
        memory.write(0x4000, os.urandom(8192))
        assert one(b, memory, BlockRequest(BlockOp.WRITE, 0, 8192, [(0x4000, 8192)])).status is BlockStatus.OK
        assert bounced == []
        assert one(b, memory, BlockRequest(BlockOp.READ, 0, 1024, [(0x4100, 1000), (0x5000, 24)])).status is BlockStatus.OK
        assert bounced == [1]
    finally:
        b.close()
