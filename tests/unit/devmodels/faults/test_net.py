"""``FaultyNetBackend``: frame faults on a loopback wire (``devmodels.faults.net``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devmodels.backends import LoopbackBackend, NetOffloads
from devmodels.faults import (
    CorruptFrame,
    FaultEngine,
    FaultyNetBackend,
    FrameCorrupt,
    FrameDrop,
    FrameDuplicate,
    FrameReorder,
    LinkDown,
)

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def frame(n: int, size: int = 80) -> bytes:
    return b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + bytes([n]) * (size - 14)


class Wire:
    def __init__(self, seed: int = 5, offloads: NetOffloads | None = None) -> None:
        self.clock = Clock()
        self.engine = FaultEngine(seed, clock=self.clock)
        self.peer, ours = LoopbackBackend.pair(capacity=4096, offloads=offloads)
        self.nic = FaultyNetBackend(ours, self.engine)

    def rx(self, frames: list[bytes]) -> list[bytes]:
        for f in frames:
            self.peer.send(f)
        out: list[bytes] = []
        while True:
            got = self.nic.receive(4)
            if not got:
                return out
            out.extend(got)

    def tx(self, frames: list[bytes]) -> list[bytes]:
        for f in frames:
            assert self.nic.send(f)
        return self.peer.receive(4096)


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.nic.close()
    w.peer.close()


FRAMES = [frame(i) for i in range(1, 201)]


def test_no_faults_no_change(wire: Wire) -> None:
    assert wire.rx(FRAMES) == FRAMES and wire.tx(FRAMES) == FRAMES


def test_drop_by_direction_and_rate(wire: Wire) -> None:
    wire.engine.add(FrameDrop(direction="rx", rate=0.25))
    got = wire.rx(FRAMES)
    assert 20 < len(FRAMES) - len(got) < 80 and all(f in FRAMES for f in got)
    assert wire.tx(FRAMES) == FRAMES
    assert wire.nic.stats.dropped == len(FRAMES) - len(got)


def test_the_same_seed_drops_the_same_frames() -> None:
    runs = []
    for _ in range(2):
        w = Wire(seed=9)
        w.engine.add(FrameDrop(rate=0.5))
        runs.append(w.tx(FRAMES))
    assert runs[0] == runs[1]
    other = Wire(seed=10)
    other.engine.add(FrameDrop(rate=0.5))
    assert other.tx(FRAMES) != runs[0]


def test_corrupt_flips_one_bit_after_the_header(wire: Wire) -> None:
    wire.engine.add(FrameCorrupt(count=3))
    got = wire.rx(FRAMES[:5])
    assert [isinstance(f, CorruptFrame) for f in got] == [True, True, True, False, False]
    for before, after in zip(FRAMES, got[:3], strict=False):
        diff = [i for i in range(len(before)) if before[i] != after[i]]
        assert len(diff) == 1 and diff[0] >= 14 and bin(before[diff[0]] ^ after[diff[0]]).count("1") == 1


def test_corrupt_leaves_unfinished_checksums_alone_and_clears_data_valid() -> None:
    w = Wire(offloads=NetOffloads(csum=True))
    w.nic.set_vnet_hdr(True)
    w.peer.set_vnet_hdr(True)
    w.engine.add(FrameCorrupt(direction="tx"))
    partial = bytes([1, 0]) + bytes(10) + frame(1)  # NEEDS_CSUM
    valid = bytes([2, 0]) + bytes(10) + frame(2)  # DATA_VALID
    got = w.tx([partial, valid])
    assert got[0] == partial
    assert got[1][0] == 0 and got[1] != valid
    assert w.nic.stats.corrupt_skipped == 1 and w.nic.stats.corrupted == 1


def test_duplicate_and_reorder(wire: Wire) -> None:
    wire.engine.add(FrameDuplicate(count=1, skip=1))
    assert wire.rx(FRAMES[:3]) == [FRAMES[0], FRAMES[1], FRAMES[1], FRAMES[2]]
    wire.engine.clear()
    wire.engine.add(FrameReorder(count=1))
    assert wire.tx(FRAMES[:3]) == [FRAMES[1], FRAMES[0], FRAMES[2]]


def test_a_held_frame_goes_out_when_the_fault_is_removed(wire: Wire) -> None:
    fid = wire.engine.add(FrameReorder(direction="tx", count=1))
    assert wire.tx(FRAMES[:1]) == []
    wire.engine.remove(fid)
    assert wire.peer.receive() == FRAMES[:1]


def test_link_down_loses_everything_and_flushes_at_link_up(wire: Wire) -> None:
    wire.engine.add(LinkDown(for_ms=10))
    assert wire.tx(FRAMES[:3]) == []
    for f in FRAMES[:4]:
        wire.peer.send(f)  # piles up while nobody reads
    wire.clock.now = 10 * MS
    wire.engine.tick()
    assert wire.nic.receive() == []  # gone with the cable
    assert wire.nic.stats.flushed == 4 and wire.nic.stats.link_dropped == 3
    assert wire.rx(FRAMES[:2]) == FRAMES[:2]
