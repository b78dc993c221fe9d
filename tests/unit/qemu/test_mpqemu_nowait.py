"""``NowaitReads``: page-cache hits inline with ``RWF_NOWAIT``, everything else to the workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devmodels import GuestMemory, HostError, MemoryRegion
from devmodels.backends import BlockOp, BlockRequest, BlockStatus
from devmodels.backends.block import RawFileBackend
from devmodels.qemu.mpqemu.nowait import MAX_INLINE, NowaitReads

pytestmark = pytest.mark.skipif(not NowaitReads.available(), reason="no RWF_NOWAIT on this platform")

SIZE = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SIZE))  # just written: in the page cache
    return path


@pytest.fixture
def memory() -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])


def _wrapped(image: Path) -> tuple[NowaitReads, list[int]]:
    notes: list[int] = []
    backend = NowaitReads(RawFileBackend(image, workers=1), image)
    backend.set_notify(lambda: notes.append(1))
    return backend, notes


def _wait_all(backend: NowaitReads, count: int) -> list:
    done: list = []
    while len(done) < count:
        backend.drain()
        done += backend.completions()
    return done


def test_cached_read_completes_inside_submit(image: Path, memory: GuestMemory) -> None:
    backend, notes = _wrapped(image)
    try:
        backend.submit(BlockRequest(BlockOp.READ, 4096, 8192, [(0x1000, 4096), (0x8000, 4096)], tag=7), memory)
        assert backend.inline == 1 and notes == [1]
        [done] = backend.completions()
        assert (done.tag, done.status, done.transferred) == (7, BlockStatus.OK, 8192)
        data = image.read_bytes()[4096:12288]
        assert memory.read(0x1000, 4096) + memory.read(0x8000, 4096) == data
        assert backend.completions() == []  # handed out once
    finally:
        backend.close()


def test_notify_only_when_the_ready_list_becomes_non_empty(image: Path, memory: GuestMemory) -> None:
    backend, notes = _wrapped(image)
    try:
        for tag in range(3):
            backend.submit(BlockRequest(BlockOp.READ, 0, 512, [(0, 512)], tag=tag), memory)
        assert notes == [1] and [c.tag for c in backend.completions()] == [0, 1, 2]
    finally:
        backend.close()


def test_uncached_read_goes_to_the_workers(image: Path, memory: GuestMemory) -> None:
    fd = os.open(image, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop it from the page cache
    finally:
        os.close(fd)
    backend, _ = _wrapped(image)
    try:
        backend.submit(BlockRequest(BlockOp.READ, 65536, 4096, [(0, 4096)], tag=1), memory)
        [done] = _wait_all(backend, 1)
        assert done.status is BlockStatus.OK
        assert memory.read(0, 4096) == image.read_bytes()[65536:69632]
        assert backend.inline + backend.delegated == 1  # the kernel may have kept the page anyway
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (BlockRequest(BlockOp.READ, SIZE - 512, 1024, [(0, 1024)], tag=1), "past the end"),
        (BlockRequest(BlockOp.READ, 100, 512, [(0, 512)], tag=1), "unaligned"),
        (BlockRequest(BlockOp.READ, 0, 1024, [(0, 512)], tag=1), "segments short"),
        (BlockRequest(BlockOp.READ, 0, 512, [(2 << 20, 512)], tag=1), "not RAM"),
    ],
)
def test_bad_reads_get_the_wrapped_backends_error(
    image: Path, memory: GuestMemory, request_: BlockRequest, why: str
) -> None:
    backend, _ = _wrapped(image)
    try:
        backend.submit(request_, memory)
        [done] = _wait_all(backend, 1)
        assert done.status is BlockStatus.IO_ERROR, why
        assert backend.inline == 0
    finally:
        backend.close()


def test_large_reads_and_writes_stay_on_the_workers(image: Path, memory: GuestMemory) -> None:
    backend, _ = _wrapped(image)
    try:
        backend.submit(BlockRequest(BlockOp.READ, 0, MAX_INLINE + 512, [(0, MAX_INLINE + 512)], tag=1), memory)
        memory.write(0x80000, b"\x5a" * 512)
        backend.submit(BlockRequest(BlockOp.WRITE, 0, 512, [(0x80000, 512)], tag=2), memory)
        assert sorted(c.tag for c in _wait_all(backend, 2)) == [1, 2]
        assert backend.inline == 0 and backend.delegated == 0
        backend.submit(BlockRequest(BlockOp.READ, 0, 512, [(0x90000, 512)], tag=3), memory)
        assert backend.inline == 1 and memory.read(0x90000, 512) == b"\x5a" * 512  # one page cache
    finally:
        backend.close()


def test_properties_follow_the_wrapped_backend_and_close_is_idempotent(image: Path) -> None:
    inner = RawFileBackend(image, readonly=True, workers=1)
    backend = NowaitReads(inner, image)
    assert (backend.capacity, backend.readonly, backend.logical_block_size) == (SIZE, True, 512)
    assert backend.supports_discard == inner.supports_discard
    backend.close()
    backend.close()
    with pytest.raises(ValueError):  # UsageError from the closed wrapped backend
        backend.submit(BlockRequest(BlockOp.READ, 0, 512, [(0, 512)]), GuestMemory())


def test_missing_image_is_a_host_error(tmp_path: Path, image: Path) -> None:
    inner = RawFileBackend(image, workers=1)
    try:
        with pytest.raises(HostError):
            NowaitReads(inner, tmp_path / "gone.img")
    finally:
        inner.close()
