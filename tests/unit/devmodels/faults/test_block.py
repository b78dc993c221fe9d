"""``FaultyBlockBackend``: the disk faults on real backends (``devmodels.faults.block``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmodels import GuestMemory, MemoryRegion
from devmodels.backends import BlockCompletion, BlockOp, BlockRequest, BlockStatus, MemoryDiskBackend, RawFileBackend
from devmodels.faults import FaultEngine, FaultyBlockBackend, MediaError, SlowIo, StuckIo, TornWrite

MS = 1_000_000
SECTOR = 512
DISK = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def pattern(sector: int) -> bytes:
    return sector.to_bytes(4, "little") * (SECTOR // 4)


class Rig:
    def __init__(self, inner: object | None = None) -> None:
        self.clock = Clock()
        self.engine = FaultEngine(3, clock=self.clock)
        self.inner = inner or MemoryDiskBackend(DISK, data=b"".join(pattern(s) for s in range(DISK // SECTOR)))
        self.disk = FaultyBlockBackend(self.inner, self.engine)  # type: ignore[arg-type]
        self.memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
        self.notified = 0
        self.disk.set_notify(self._notify)
        self.done: dict[object, BlockCompletion] = {}

    def _notify(self) -> None:
        self.notified += 1

    def submit(self, op: BlockOp, sector: int, count: int, tag: object, gpa: int = 0x1000) -> None:
        segments = [(gpa, count * SECTOR)] if op in (BlockOp.READ, BlockOp.WRITE) else []
        self.disk.submit(BlockRequest(op, sector * SECTOR, count * SECTOR, segments, tag), self.memory)

    def collect(self) -> dict[object, BlockCompletion]:
        for completion in self.disk.completions():
            self.done[completion.tag] = completion
        return self.done

    def read(self, sector: int, count: int, gpa: int = 0x1000) -> tuple[BlockCompletion, bytes]:
        tag = object()
        self.submit(BlockOp.READ, sector, count, tag, gpa)
        self.disk.drain()
        return self.collect()[tag], self.memory.read(gpa, count * SECTOR)

    def write(self, sector: int, data: bytes, gpa: int = 0x80000) -> BlockCompletion:
        self.memory.write(gpa, data)
        tag = object()
        self.submit(BlockOp.WRITE, sector, len(data) // SECTOR, tag, gpa)
        self.disk.drain()
        return self.collect()[tag]


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.disk.close()


class TestMediaError:
    def test_transfers_up_to_the_bad_sector_and_names_it(self, rig: Rig) -> None:
        rig.engine.add(MediaError(lba=105, sectors=2))
        completion, data = rig.read(100, 16)
        assert completion.status is BlockStatus.IO_ERROR
        assert completion.transferred == 5 * SECTOR
        assert "LBA 105" in completion.error
        assert data[: 5 * SECTOR] == b"".join(pattern(s) for s in range(100, 105))

    def test_other_sectors_and_writes_are_untouched(self, rig: Rig) -> None:
        rig.engine.add(MediaError(lba=105, sectors=2))
        assert rig.read(90, 15)[0].status is BlockStatus.OK  # ends just before
        assert rig.read(107, 8)[0].status is BlockStatus.OK  # starts just after
        completion, _ = rig.read(106, 1)
        assert completion.status is BlockStatus.IO_ERROR and completion.transferred == 0
        assert rig.write(105, bytes(SECTOR)).status is BlockStatus.OK  # op is read

    def test_count_limits_it(self, rig: Rig) -> None:
        rig.engine.add(MediaError(lba=105, count=1))
        assert rig.read(105, 1)[0].status is BlockStatus.IO_ERROR
        assert rig.read(105, 1)[0].status is BlockStatus.OK

    def test_write_errors(self, rig: Rig) -> None:
        rig.engine.add(MediaError(lba=20, op="write"))
        completion = rig.write(18, b"\xee" * 4 * SECTOR)
        assert completion.status is BlockStatus.IO_ERROR and completion.transferred == 2 * SECTOR
        assert rig.inner.read_at(18 * SECTOR, 2 * SECTOR) == b"\xee" * 2 * SECTOR  # type: ignore[attr-defined]
        assert rig.inner.read_at(20 * SECTOR, SECTOR) == pattern(20)  # type: ignore[attr-defined]


class TestSlow:
    def test_completion_waits_for_its_time(self, rig: Rig) -> None:
        rig.engine.add(SlowIo(delay_ms=30, op="read"))
        tag = object()
        rig.submit(BlockOp.READ, 0, 1, tag)
        assert rig.collect() == {}
        deadline = rig.engine.next_deadline()
        assert deadline == 30 * MS
        before = rig.notified
        rig.clock.now = 29 * MS
        rig.engine.tick()
        assert rig.collect() == {}
        rig.clock.now = 30 * MS
        rig.engine.tick()
        assert rig.notified > before
        assert rig.collect()[tag].status is BlockStatus.OK

    def test_drain_does_not_wait_out_the_delay(self, rig: Rig) -> None:
        rig.engine.add(SlowIo(delay_ms=60_000))
        completion, data = rig.read(3, 1)
        assert completion.status is BlockStatus.OK and data == pattern(3)


class TestStuck:
    def test_held_until_the_drive_is_reset(self, rig: Rig) -> None:
        rig.engine.add(StuckIo(lba=8, sectors=1, count=1))
        tag = object()
        rig.submit(BlockOp.READ, 8, 1, tag)
        assert rig.collect() == {} and rig.disk.stuck == 1
        assert rig.disk.abandon() == 1
        completion = rig.collect()[tag]
        assert completion.status is BlockStatus.IO_ERROR and "reset" in completion.error
        assert rig.read(8, 1)[0].status is BlockStatus.OK  # count=1: the retry goes through

    def test_removing_the_fault_lets_it_run(self, rig: Rig) -> None:
        fid = rig.engine.add(StuckIo())
        tag = object()
        rig.submit(BlockOp.READ, 1, 1, tag)
        assert rig.collect() == {}
        rig.engine.remove(fid)
        assert rig.collect()[tag].status is BlockStatus.OK
        assert rig.memory.read(0x1000, SECTOR) == pattern(1)

    def test_a_whole_disk_hang_holds_flushes(self, rig: Rig) -> None:
        rig.engine.add(StuckIo())
        tag = object()
        rig.disk.submit(BlockRequest(BlockOp.FLUSH, 0, 0, (), tag), rig.memory)
        assert rig.disk.stuck == 1
        rig.disk.drain()  # a reset: abandoned
        assert rig.collect()[tag].status is BlockStatus.IO_ERROR


class TestTornWrite:
    def test_acknowledged_reads_back_and_is_torn_on_a_crash(self, rig: Rig) -> None:
        rig.engine.add(TornWrite(keep_sectors=2))
        new = b"\xab" * 8 * SECTOR
        assert rig.write(40, new).status is BlockStatus.OK
        assert rig.read(38, 12)[1][2 * SECTOR : 10 * SECTOR] == new  # the guest sees its write
        image = rig.inner.read_at(40 * SECTOR, 8 * SECTOR)  # type: ignore[attr-defined]
        assert image[: 2 * SECTOR] == new[: 2 * SECTOR]
        assert image[2 * SECTOR :] == b"".join(pattern(s) for s in range(42, 48))
        rig.disk.crash()
        assert rig.read(40, 8)[1][2 * SECTOR :] == image[2 * SECTOR :]

    def test_a_clean_close_persists(self) -> None:
        rig = Rig()
        rig.engine.add(TornWrite())
        rig.write(3, b"\x11" * 4 * SECTOR)
        inner = rig.inner
        rig.disk._persist(None)
        rig.disk.drain()
        assert inner.read_at(3 * SECTOR, 4 * SECTOR) == b"\x11" * 4 * SECTOR  # type: ignore[attr-defined]

    def test_persist_ms_writes_the_tail_out(self, rig: Rig) -> None:
        rig.engine.add(TornWrite(keep_sectors=1, persist_ms=50))
        rig.write(10, b"\x22" * 3 * SECTOR)
        assert rig.inner.read_at(11 * SECTOR, SECTOR) == pattern(11)  # type: ignore[attr-defined]
        rig.clock.now = 50 * MS
        rig.engine.tick()
        rig.collect()
        assert rig.inner.read_at(10 * SECTOR, 3 * SECTOR) == b"\x22" * 3 * SECTOR  # type: ignore[attr-defined]
        assert not rig.disk.torn.held

    def test_a_whole_disk_discard_costs_what_is_held(self, rig: Rig) -> None:
        rig.engine.add(TornWrite(keep_sectors=1))
        rig.write(70, b"\x03" * 2 * SECTOR)
        start = time.monotonic()
        for op in (BlockOp.DISCARD, BlockOp.READ):  # past capacity: the inner backend refuses them
            rig.disk.submit(BlockRequest(op, 0, 1 << 50, [(0x1000, 1 << 50)] if op is BlockOp.READ else (), op), rig.memory)
        assert time.monotonic() - start < 1.0
        assert {rig.collect()[op].status for op in (BlockOp.DISCARD, BlockOp.READ)} == {BlockStatus.IO_ERROR}
        assert len(rig.disk.torn.held) == 1  # a refused discard supersedes nothing
        rig.disk.submit(BlockRequest(BlockOp.DISCARD, 0, DISK, (), "all"), rig.memory)
        assert rig.collect()["all"].status is BlockStatus.OK and not rig.disk.torn.held

    def test_a_newer_write_wins_over_a_held_tail(self, rig: Rig) -> None:
        fid = rig.engine.add(TornWrite(persist_ms=50))
        rig.write(60, b"\x01" * 4 * SECTOR)
        rig.engine.remove(fid)
        rig.write(61, b"\x02" * SECTOR)  # not torn: straight to the image, drops the held copy
        rig.clock.now = 50 * MS
        rig.engine.tick()
        rig.collect()
        assert rig.read(60, 4)[1] == b"\x01" * SECTOR + b"\x02" * SECTOR + b"\x01" * 2 * SECTOR


@pytest.mark.parametrize("request_", [
    BlockRequest(BlockOp.READ, -512, 512, [(0x1000, 512)], "neg"),
    BlockRequest(BlockOp.READ, 105 * SECTOR, 512, [("x", 512)], "seg"),  # type: ignore[list-item]
    BlockRequest(BlockOp.READ, 105 * SECTOR, 512, 5, "notalist"),  # type: ignore[arg-type]
    BlockRequest(BlockOp.READ, 105.0, 512, [(0x1000, 512)], "float"),  # type: ignore[arg-type]
])
def test_malformed_requests_go_to_the_inner_backend_which_refuses_them(rig: Rig, request_: BlockRequest) -> None:
    rig.engine.add(MediaError(lba=105))
    rig.disk.submit(request_, rig.memory)
    completion = rig.collect()[request_.tag]
    assert completion.status is BlockStatus.IO_ERROR and "media error" not in completion.error


def test_on_a_raw_file_with_workers(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(pattern(s) for s in range(256)))
    rig = Rig(RawFileBackend(path, workers=2, inline_reads=False))
    try:
        rig.engine.add(MediaError(lba=130))
        tag = object()
        rig.submit(BlockOp.READ, 128, 8, tag)
        deadline = time.monotonic() + 10
        while tag not in rig.collect() and time.monotonic() < deadline:
            time.sleep(0.001)
        completion = rig.done[tag]
        assert completion.status is BlockStatus.IO_ERROR and completion.transferred == 2 * SECTOR
        assert rig.memory.read(0x1000, 2 * SECTOR) == pattern(128) + pattern(129)
    finally:
        rig.disk.close()


def test_a_torn_write_stays_torn_when_the_process_dies(tmp_path: Path) -> None:
    """The real thing: the process is killed after the acknowledgement."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"\x00" * 64 * SECTOR)
    script = textwrap.dedent(f"""
        import os, signal, time
        from devmodels import GuestMemory, MemoryRegion
        from devmodels.backends import BlockOp, BlockRequest, BlockStatus, RawFileBackend
        from devmodels.faults import FaultEngine, FaultyBlockBackend, TornWrite
        engine = FaultEngine()
        disk = FaultyBlockBackend(RawFileBackend({str(image)!r}, inline_reads=False), engine)
        engine.add(TornWrite(keep_sectors=3))
        memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 16)])
        memory.write(0, b"\\x5a" * 8 * 512)
        disk.submit(BlockRequest(BlockOp.WRITE, 16 * 512, 8 * 512, [(0, 8 * 512)], "w"), memory)
        while True:
            done = disk.completions()
            if done:
                break
            time.sleep(0.001)
        assert done[0].status is BlockStatus.OK, done
        print("ACKED", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[4]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == -9 and "ACKED" in proc.stdout, proc.stderr
    data = image.read_bytes()[16 * SECTOR : 24 * SECTOR]
    assert data == b"\x5a" * 3 * SECTOR + b"\x00" * 5 * SECTOR
