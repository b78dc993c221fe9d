"""``RawFileBackend`` rule 5: small page-cache hits read inline with ``RWF_NOWAIT``,
everything else on the workers, with the same outcomes either way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devmodels import GuestMemory, MemoryRegion
from devmodels.backends import BlockOp, BlockRequest, BlockStatus
from devmodels.backends.block import RawFileBackend
from devmodels.backends.block._raw import INLINE_READ_MAX

pytestmark = pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="no RWF_NOWAIT on this platform")

SIZE = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SIZE))  # just written: in the page cache
    return path


@pytest.fixture
def memory() -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])


def _backend(image: Path, **kwargs: object) -> tuple[RawFileBackend, list[int]]:
    notes: list[int] = []
    backend = RawFileBackend(image, workers=1, **kwargs)  # type: ignore[arg-type]
    backend.set_notify(lambda: notes.append(1))
    return backend, notes


def _wait_all(backend: RawFileBackend, count: int) -> list:
    done: list = []
    while len(done) < count:
        backend.drain()
        done += backend.completions()
    return done


def test_cached_read_completes_inside_submit(image: Path, memory: GuestMemory) -> None:
    backend, notes = _backend(image)
    try:
        assert backend.reads_inline
        backend.submit(BlockRequest(BlockOp.READ, 4096, 8192, [(0x1000, 4096), (0x8000, 4096)], tag=7), memory)
        assert backend.inline_reads == 1 and notes == [1]
        [done] = backend.completions()  # no drain: it is already there
        assert (done.tag, done.status, done.transferred) == (7, BlockStatus.OK, 8192)
        data = image.read_bytes()[4096:12288]
        assert memory.read(0x1000, 4096) + memory.read(0x8000, 4096) == data
        assert backend.completions() == []  # handed out once
    finally:
        backend.close()


def test_notify_only_when_the_ready_list_becomes_non_empty(image: Path, memory: GuestMemory) -> None:
    backend, notes = _backend(image)
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
    backend, _ = _backend(image)
    try:
        backend.submit(BlockRequest(BlockOp.READ, 65536, 4096, [(0, 4096)], tag=1), memory)
        [done] = _wait_all(backend, 1)
        assert done.status is BlockStatus.OK
        assert memory.read(0, 4096) == image.read_bytes()[65536:69632]
        assert backend.inline_reads + backend.delegated_reads == 1  # the kernel may have kept the page
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
def test_bad_reads_get_the_same_errors(image: Path, memory: GuestMemory, request_: BlockRequest, why: str) -> None:
    for inline in (True, False):
        backend, _ = _backend(image, inline_reads=inline)
        try:
            backend.submit(request_, memory)
            [done] = _wait_all(backend, 1)
            assert done.status is BlockStatus.IO_ERROR, why
            assert backend.inline_reads == 0
        finally:
            backend.close()


def test_large_reads_and_writes_stay_on_the_workers_and_share_the_page_cache(image: Path, memory: GuestMemory) -> None:
    backend, _ = _backend(image)
    try:
        length = INLINE_READ_MAX + 512
        backend.submit(BlockRequest(BlockOp.READ, 0, length, [(0, length)], tag=1), memory)
        memory.write(0x80000, b"\x5a" * 512)
        backend.submit(BlockRequest(BlockOp.WRITE, 0, 512, [(0x80000, 512)], tag=2), memory)
        assert sorted(c.tag for c in _wait_all(backend, 2)) == [1, 2]
        assert backend.inline_reads == 0 and backend.delegated_reads == 0
        backend.submit(BlockRequest(BlockOp.READ, 0, 512, [(0x90000, 512)], tag=3), memory)
        assert backend.inline_reads == 1 and memory.read(0x90000, 512) == b"\x5a" * 512
    finally:
        backend.close()


def test_off_when_asked_or_direct(image: Path, memory: GuestMemory) -> None:
    backend, _ = _backend(image, inline_reads=False)
    try:
        assert not backend.reads_inline
        backend.submit(BlockRequest(BlockOp.READ, 0, 512, [(0, 512)], tag=1), memory)
        [done] = _wait_all(backend, 1)
        assert done.status is BlockStatus.OK and backend.inline_reads == backend.delegated_reads == 0
    finally:
        backend.close()
    try:
        direct = RawFileBackend(image, direct=True, workers=1)
    except Exception:  # noqa: BLE001 - a filesystem without O_DIRECT: nothing more to check
        return
    try:
        assert not direct.reads_inline  # inline reads would go through the host cache
    finally:
        direct.close()
