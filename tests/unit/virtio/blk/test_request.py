"""virtio-blk request parsing (virtio.blk.request) on hand-made chains."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from devmodels import GuestMemory, MemoryRegion
from devmodels.backends import BlockOp
from virtio.blk.defs import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from virtio.blk.request import BlkLimits, cut_segments, last_byte, parse_request

LIMITS = BlkLimits(capacity=2048, discard=True, write_zeroes=True, max_discard_sectors=64, max_discard_seg=2,
                   max_write_zeroes_sectors=64, max_write_zeroes_seg=2)


@dataclass
class Chain:
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)
    head: int = 0

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)


@pytest.fixture
def memory():
    mem = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    yield mem
    mem.close()


def test_cut_segments_and_last_byte():
    segs = [(0x1000, 10), (0x2000, 0), (0x3000, 6)]
    assert cut_segments(segs, 0, 16) == [(0x1000, 10), (0x3000, 6)]
    assert cut_segments(segs, 8, 4) == [(0x1008, 2), (0x3000, 2)]
    assert cut_segments(segs, 16, 4) == []
    assert last_byte(segs) == 0x3005
    assert last_byte([(0x1000, 4), (0x5000, 0)]) == 0x1003
    assert last_byte([(0x1000, 0)]) is None


def test_header_split_across_three_segments(memory):
    memory.write(0x100, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 7)[:3])
    memory.write(0x200, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 7)[3:9])
    memory.write(0x300, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 7)[9:] + bytes(512))
    chain = Chain([(0x100, 3), (0x200, 6), (0x300, 7 + 512)], [(0x900, 1)])
    request = parse_request(chain, memory, LIMITS)
    assert request.status is None and request.sector == 7 and request.status_gpa == 0x900
    (op,) = request.ops
    assert (op.op, op.offset, op.length, list(op.segments)) == (BlockOp.WRITE, 7 * 512, 512, [(0x307, 512)])


def test_read_data_and_status_in_one_segment(memory):
    memory.write(0x100, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 1))
    request = parse_request(Chain([(0x100, 16)], [(0x1000, 1025)]), memory, LIMITS)
    assert request.written == 1024 and request.status_gpa == 0x1000 + 1024
    assert list(request.ops[0].segments) == [(0x1000, 1024)]


@pytest.mark.parametrize(
    "kind, segments, status",
    [
        (VIRTIO_BLK_T_DISCARD, [(0, 8, 0), (8, 8, 0), (16, 8, 0)], VIRTIO_BLK_S_IOERR),  # max_discard_seg 2
        (VIRTIO_BLK_T_DISCARD, [(0, 65, 0)], VIRTIO_BLK_S_IOERR),  # max_discard_sectors 64
        (VIRTIO_BLK_T_WRITE_ZEROES, [(0, 8, 1 << 5)], VIRTIO_BLK_S_UNSUPP),  # reserved flag
        (VIRTIO_BLK_T_WRITE_ZEROES, [(2040, 9, 0)], VIRTIO_BLK_S_IOERR),  # past capacity
        (VIRTIO_BLK_T_WRITE_ZEROES, [(2040, 8, 1), (0, 0, 0)], None),  # OK; the empty range is skipped
    ],
)
def test_discard_write_zeroes_limits(memory, kind, segments, status):
    data = b"".join(struct.pack("<QII", *s) for s in segments)
    memory.write(0x100, struct.pack("<IIQ", kind, 0, 0) + data)
    request = parse_request(Chain([(0x100, 16 + len(data))], [(0x900, 1)]), memory, LIMITS)
    assert request.status == status
    if status is None:
        assert [(o.offset, o.length, o.unmap) for o in request.ops] == [(2040 * 512, 8 * 512, True)]


def test_readonly_refuses_writes_and_dwz(memory):
    limits = BlkLimits(capacity=2048, readonly=True, write_zeroes=True, max_write_zeroes_seg=1,
                       max_write_zeroes_sectors=8)
    for kind in (VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES):
        memory.write(0x100, struct.pack("<IIQ", kind, 0, 0) + struct.pack("<QII", 0, 1, 0))
        request = parse_request(Chain([(0x100, 32)], [(0x900, 1)]), memory, limits)
        assert request.status == VIRTIO_BLK_S_IOERR and request.ops == []
