"""DMA dirty-page logging: ``DirtyLog``, ``DmaMemory``'s write observer and DEVICE_FEATURE.

vfio-user.rst "VFIO_DEVICE_FEATURE_DMA_LOGGING_START / _STOP" and "..._REPORT".
"""

from __future__ import annotations

import errno
import os
import struct
import time

import pytest

from devmodels import Access
from devmodels.pci import defs as pcidefs
from devmodels.testdev import regs as r
from passthrough.defs import (
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_USER_DEVICE_FEATURE,
    VFIO_USER_DMA_UNMAP,
)
from passthrough.errors import VfioUserReject
from passthrough.layouts import (
    vfio_device_feature_dma_logging_control,
    vfio_device_feature_dma_logging_range,
    vfio_device_feature_dma_logging_report,
    vfio_user_device_feature,
    vfio_user_dma_unmap,
)
from passthrough.user import DmaMemory, VfioUserServer
from passthrough.user.dirty import DirtyLog
from passthrough.user.framing import Message
from tests.unit.passthrough._served import Served, expect_error, memfd

PAGE = 4096


def bits(bitmap: bytes) -> list[int]:
    """The set bit numbers of a little-endian u64 bitmap."""
    value = int.from_bytes(bitmap, "little")
    return [i for i in range(len(bitmap) * 8) if value >> i & 1]


# -- DirtyLog ---------------------------------------------------------------------------------


def test_marks_are_reported_once_per_page_then_cleared() -> None:
    log = DirtyLog([(0x10000, 16 * PAGE)], PAGE, max_bitmap_bytes=1 << 20)
    log.mark(0x10000 + 5, 1)
    log.mark(0x10000 + 3 * PAGE - 1, 2)  # straddles pages 2 and 3
    log.mark(0x0, 0x100)  # outside: not recorded
    bitmap = log.report(0x10000, 16 * PAGE, PAGE)
    assert len(bitmap) == 8 and bits(bitmap) == [0, 2, 3]
    assert bits(log.report(0x10000, 16 * PAGE, PAGE)) == []  # read and clear


def test_report_at_other_page_sizes() -> None:
    log = DirtyLog([(0, 64 * PAGE)], PAGE, max_bitmap_bytes=1 << 20)
    log.mark(5 * PAGE, 1)
    # A finer report replicates the tracked page's bit; a coarser one ORs pages together.
    assert bits(log.report(4 * PAGE, 2 * PAGE, PAGE // 4)) == [4, 5, 6, 7]
    log.mark(5 * PAGE, 1)
    assert bits(log.report(0, 64 * PAGE, 4 * PAGE)) == [1]
    # A tracked page straddling the end of a report stays dirty for the next one.
    log.mark(5 * PAGE, 1)
    assert bits(log.report(4 * PAGE, PAGE + PAGE // 2, PAGE // 2)) == [2]
    assert bits(log.report(5 * PAGE, PAGE, PAGE)) == [0]


def test_tracking_page_size_is_at_least_4k_and_a_power_of_two() -> None:
    assert DirtyLog([(0, PAGE)], 512, max_bitmap_bytes=64).page_size == PAGE
    assert DirtyLog([(0, 1 << 21)], 1 << 21, max_bitmap_bytes=64).page_size == 1 << 21
    for bad in (0, 3000):
        with pytest.raises(VfioUserReject):
            DirtyLog([(0, PAGE)], bad, max_bitmap_bytes=64)


@pytest.mark.parametrize(
    ("ranges", "code"),
    [
        ([(0, 0)], errno.EINVAL),
        ([((1 << 64) - PAGE, 2 * PAGE)], errno.EINVAL),
        ([(0, 2 * PAGE), (PAGE, PAGE)], errno.EINVAL),
        ([(0, 1 << 40)], errno.E2BIG),  # 32 MiB of bitmap at 4 KiB pages, above the bound
        ([(i * PAGE, PAGE) for i in range(257)], errno.E2BIG),
    ],
)
def test_absurd_ranges_are_refused(ranges: list[tuple[int, int]], code: int) -> None:
    with pytest.raises(VfioUserReject) as info:
        DirtyLog(ranges, PAGE, max_bitmap_bytes=1 << 20)
    assert info.value.errno == code


def test_reports_outside_the_log_are_refused() -> None:
    log = DirtyLog([(0, PAGE), (PAGE, PAGE), (4 * PAGE, PAGE)], PAGE, max_bitmap_bytes=64)
    assert log.report(0, 2 * PAGE, PAGE) == bytes(8)  # adjacent ranges cover it
    for iova, length, page in ((0, 3 * PAGE, PAGE), (0, 0, PAGE), (0, PAGE, 3)):
        with pytest.raises(VfioUserReject):
            log.report(iova, length, page)


def test_dma_memory_records_every_write_path_only_while_logging() -> None:
    memory = DmaMemory()
    from devmodels import MemoryRegion

    memory.add_region(MemoryRegion.anonymous(0, 16 * PAGE))
    memory.write(0, b"x")  # no log: nothing to record, nothing breaks
    memory.dirty = log = DirtyLog([(0, 16 * PAGE)], PAGE, max_bitmap_bytes=64)
    memory.write(1 * PAGE, b"abc")
    memory.fill(2 * PAGE, 3)
    memory.store_u32(3 * PAGE, 7)
    memory.write_struct(struct.Struct("<Q"), 4 * PAGE, 9)
    memory.view(5 * PAGE, 8, Access.WRITE)
    memory.views([(6 * PAGE, 8), (7 * PAGE, 8)], Access.READ | Access.WRITE)
    memory.read(8 * PAGE, 8)
    memory.view(9 * PAGE, 8, Access.READ)
    assert bits(log.report(0, 16 * PAGE, PAGE)) == [1, 2, 3, 4, 5, 6, 7]


# -- DEVICE_FEATURE DMA_LOGGING_* through the server --------------------------------------------


def feature(s: Served, flags: int, data: bytes = b"", argsz: int | None = None) -> Message:
    size = argsz if argsz is not None else vfio_user_device_feature.size + len(data)
    return s.peer.request(VFIO_USER_DEVICE_FEATURE, vfio_user_device_feature.pack(size, flags) + data)


def start(s: Served, ranges: list[tuple[int, int]], page: int = PAGE) -> Message:
    data = vfio_device_feature_dma_logging_control.pack(page, len(ranges))
    data += b"".join(vfio_device_feature_dma_logging_range.pack(*rng) for rng in ranges)
    return feature(s, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, data)


def report(s: Served, iova: int, length: int, page: int = PAGE) -> Message:
    data = vfio_device_feature_dma_logging_report.pack(iova, length, page)
    pages = -(-length // page)
    return feature(s, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, data, 8 + 24 + -(-pages // 64) * 8)


def device_dma(s: Served, src: int, dst: int, length: int) -> None:
    s.write(pcidefs.PCI_COMMAND, b"\x06\x00", VFIO_PCI_CONFIG_REGION_INDEX)
    for reg, value, size in ((r.DMA_SRC, src, 8), (r.DMA_DST, dst, 8), (r.DMA_LEN, length, 4), (r.DMA_CMD, 1, 4)):
        s.write(reg, value.to_bytes(size, "little"))


@pytest.fixture
def s():  # type: ignore[no-untyped-def]
    served = Served()
    assert not served.version().is_error
    yield served
    served.close()


def test_probe_start_report_stop(s: Served) -> None:
    for op in (VFIO_DEVICE_FEATURE_SET, VFIO_DEVICE_FEATURE_GET):
        kind = VFIO_DEVICE_FEATURE_DMA_LOGGING_START if op == VFIO_DEVICE_FEATURE_SET else VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
        probe = feature(s, VFIO_DEVICE_FEATURE_PROBE | op | kind)
        assert not probe.is_error and probe.payload == vfio_user_device_feature.pack(8, VFIO_DEVICE_FEATURE_PROBE | op | kind)
    expect_error(feature(s, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START), errno.ENOTSUP)
    fd = memfd(0x10000)
    s.map(0x100000, 0x10000, fd)
    expect_error(report(s, 0x100000, 0x10000), errno.EINVAL)  # not started
    reply = start(s, [(0x100000, 0x10000)], 512)
    assert vfio_device_feature_dma_logging_control.unpack(reply.payload, 8).page_size == PAGE  # the size chosen
    os.pwrite(fd, b"source", 0x3000)
    device_dma(s, 0x103000, 0x105800, 6)  # the device writes page 5 of the window
    assert os.pread(fd, 6, 0x5800) == b"source"
    reply = report(s, 0x100000, 0x10000)
    assert reply.payload[:32] == vfio_user_device_feature.pack(40, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT) + (
        vfio_device_feature_dma_logging_report.pack(0x100000, 0x10000, PAGE)
    )
    assert bits(reply.payload[32:]) == [5]
    assert bits(report(s, 0x100000, 0x10000).payload[32:]) == []
    expect_error(report(s, 0x100000, 0x20000), errno.EINVAL)  # beyond the logged range
    stop = feature(s, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP)
    assert not stop.is_error
    assert s.memory.dirty is None
    os.close(fd)


def test_num_ranges_zero_logs_every_window_also_those_mapped_later(s: Served) -> None:
    fd = memfd(0x4000)
    s.map(0x0, 0x2000, fd)
    assert not start(s, []).is_error
    s.map(0x8000, 0x2000, fd, offset=0x2000)
    device_dma(s, 0x0, 0x9000, 16)
    assert bits(report(s, 0x8000, 0x2000).payload[32:]) == [1]
    assert not s.peer.request(VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, 0, 0x8000, 0x2000)).is_error
    expect_error(report(s, 0x8000, 0x2000), errno.EINVAL)  # its window is gone
    os.close(fd)


def test_report_bounds_and_sizes(s: Served) -> None:
    assert not start(s, [(0, 1 << 30)]).is_error
    pages = (1 << 30) // PAGE
    expect_error(report(s, 0, 1 << 30, 1), errno.E2BIG)  # a 128 MiB bitmap
    small = feature(
        s, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
        vfio_device_feature_dma_logging_report.pack(0, 1 << 30, PAGE), 8 + 24,
    )
    expect_error(small, errno.EINVAL)  # argsz leaves no room for the bitmap
    assert len(report(s, 0, 1 << 30).payload) == 8 + 24 + pages // 8
    expect_error(start(s, [(i * PAGE, PAGE) for i in range(300)]), errno.E2BIG)
    truncated = vfio_device_feature_dma_logging_control.pack(PAGE, 3) + vfio_device_feature_dma_logging_range.pack(0, PAGE)
    expect_error(feature(s, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, truncated), errno.EINVAL)


def test_logging_ends_with_the_client() -> None:
    served = Served()
    served.version()
    assert not start(served, []).is_error
    assert served.memory.dirty is not None
    served.close()
    assert served.memory.dirty is None and served.server.features.log is None


def test_a_plain_guest_memory_offers_no_dma_logging() -> None:
    from devmodels import GuestMemory
    from devmodels.testdev import PciTestDevice
    from passthrough.user.testing import RawPeer, ServerThread

    memory = GuestMemory()
    thread = ServerThread(VfioUserServer(PciTestDevice(memory), memory))
    peer = RawPeer(thread.start())
    peer.negotiate()
    flags = VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START
    expect_error(peer.request(VFIO_USER_DEVICE_FEATURE, vfio_user_device_feature.pack(8, flags)), errno.ENOTSUP)
    peer.close()
    assert thread.join()


def test_a_fine_report_of_a_coarse_dirty_page_costs_its_bitmap_not_a_loop_per_bit() -> None:
    # A client tracks at 1 GiB pages (its hint) and reports at 1-byte pages: one dirty
    # tracked page sets every bit of the largest bitmap a report may have (2**28 bits). Bit
    # by bit that took the server's loop ~25 s per REPORT; the bound is for a hang.
    from passthrough.user.features import MAX_REPORT_BYTES

    log = DirtyLog([(0, 1 << 30)], 1 << 30, max_bitmap_bytes=64)
    log.mark(0, 1)
    began = time.monotonic()
    bitmap = log.report(0, MAX_REPORT_BYTES * 8, 1)
    assert time.monotonic() - began < 5.0, "REPORT hung the server"
    assert bitmap == b"\xff" * MAX_REPORT_BYTES
    # Not wholly inside that report, the tracked page stays dirty for the next one.
    assert log.report(1 << 29, 1 << 29, PAGE) == b"\xff" * ((1 << 29) // PAGE // 8)
