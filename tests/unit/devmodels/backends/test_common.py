from __future__ import annotations

import errno
import os

import pytest

from devmodels import UsageError
from devmodels.backends import BlockOp, BlockRequest, BlockStatus
from devmodels.backends.block._common import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    check_block_size,
    check_request,
    fallocate,
)

CAP = 1 << 20


def judge(request: BlockRequest, readonly: bool = False):
    return check_request(request, capacity=CAP, block_size=512, readonly=readonly)


def test_valid_requests_pass():
    assert judge(BlockRequest(BlockOp.READ, 0, 1024, [(0, 512), (4096, 512)])) is None
    assert judge(BlockRequest(BlockOp.WRITE, CAP - 512, 512, [(0, 512)])) is None
    assert judge(BlockRequest(BlockOp.FLUSH, 0, 0)) is None
    assert judge(BlockRequest(BlockOp.DISCARD, 0, CAP)) is None
    assert judge(BlockRequest(BlockOp.WRITE_ZEROES, 512, 512, unmap=True)) is None
    assert judge(BlockRequest(BlockOp.READ, 0, 0)) is None


@pytest.mark.parametrize(
    "request_, reason",
    [
        (BlockRequest(BlockOp.READ, CAP, 512, [(0, 512)]), "capacity"),
        (BlockRequest(BlockOp.READ, CAP - 512, 1024, [(0, 1024)]), "capacity"),
        (BlockRequest(BlockOp.READ, 100, 512, [(0, 512)]), "aligned"),
        (BlockRequest(BlockOp.READ, 0, 100, [(0, 100)]), "aligned"),
        (BlockRequest(BlockOp.READ, -512, 512, [(0, 512)]), "offset"),
        (BlockRequest(BlockOp.READ, 0, 1024, [(0, 512)]), "add up"),
        (BlockRequest(BlockOp.WRITE, 0, 512, [(-1, 512)]), "segment"),
        (BlockRequest(BlockOp.WRITE, 0, 512, [(0, 512, 3)]), "pairs"),  # type: ignore[list-item]
        (BlockRequest(BlockOp.WRITE, 0, 512, [("x", 512)]), "segment"),  # type: ignore[list-item]
        (BlockRequest(BlockOp.DISCARD, 0, CAP + 512), "capacity"),
        (BlockRequest(BlockOp.WRITE_ZEROES, 1, 512), "aligned"),
        (BlockRequest(BlockOp.READ, 1 << 70, 512, [(0, 512)]), "capacity"),
        (BlockRequest(BlockOp.READ, True, 512, [(0, 512)]), "offset"),
    ],
)
def test_bad_requests_complete_io_error(request_, reason):
    request_.tag = "t"
    completion = judge(request_)
    assert completion is not None
    assert completion.status is BlockStatus.IO_ERROR
    assert completion.tag == "t"
    assert reason in completion.error


@pytest.mark.parametrize("op", [BlockOp.WRITE, BlockOp.DISCARD, BlockOp.WRITE_ZEROES])
def test_readonly_refuses_modifications(op):
    segments = [(0, 512)] if op is BlockOp.WRITE else []
    completion = judge(BlockRequest(op, 0, 512, segments), readonly=True)
    assert completion is not None and "read-only" in completion.error


def test_readonly_allows_read_and_flush():
    assert judge(BlockRequest(BlockOp.READ, 0, 512, [(0, 512)]), readonly=True) is None
    assert judge(BlockRequest(BlockOp.FLUSH, 0, 0), readonly=True) is None


def test_misuse_raises_usage_error():
    with pytest.raises(UsageError):
        judge("not a request")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        judge(BlockRequest("read", 0, 0))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 256, 513, 1 << 17, True, "512"])
def test_bad_block_sizes(size):
    with pytest.raises(UsageError):
        check_block_size(size)  # type: ignore[arg-type]


def test_fallocate_reports_errno(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as info:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
        assert info.value.errno == errno.EBADF  # not open for writing
    finally:
        os.close(fd)
