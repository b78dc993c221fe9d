"""virtio-blk device (VIRTIO 1.2 §5.2) against the driver simulator, both ring layouts and
both ring implementations."""

from __future__ import annotations

import os
from typing import Any

import pytest

from devmodels import GuestMemory, MemoryRegion, UsageError
from devmodels.backends import BlockOp, MemoryDiskBackend, RawFileBackend
from devmodels._trace import RecordingSink
from virtio.blk import VirtioBlkDevice, virtio_blk_config
from virtio.blk.defs import (
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from virtio.blk.layouts import VIRTIO_BLK_DWZ_SEG
from virtio.blk.testing import BlkDriver
from virtio.defs import DEVICE_NEEDS_RESET, VIRTIO_F_RING_PACKED
from virtio.device import RecordingTransport

PATTERN = bytes(range(256)) * 16  # 4 KiB


def make(memory: GuestMemory, backend: Any, queue_factory: Any, packed: bool, **kwargs: Any) -> tuple[VirtioBlkDevice, BlkDriver]:
    device = VirtioBlkDevice(memory, backend, queue_size=64, queue_factory=queue_factory, **kwargs)
    device.attach(RecordingTransport())
    accept = device.features.offered
    if not packed:
        accept &= ~(1 << VIRTIO_F_RING_PACKED)
    return device, BlkDriver(device, accept=accept)


def dwz(*segments: tuple[int, int, int]) -> bytes:
    return b"".join(VIRTIO_BLK_DWZ_SEG.pack(*s) for s in segments)


@pytest.mark.parametrize(
    "framing",
    [
        {},
        {"header_split": [5, 3, 8]},
        {"data_split": 512},
        {"data_split": 1000},
        {"indirect": True},
        {"status_with_data": True},
    ],
    ids=["plain", "header-split", "data-512", "data-odd", "indirect", "status-merged"],
)
def test_write_then_read_any_framing(memory, disk, queue_factory, packed, framing):
    device, driver = make(memory, disk, queue_factory, packed)
    write_framing = {k: v for k, v in framing.items() if k != "status_with_data"}
    assert driver.write(16, PATTERN, **write_framing).status == VIRTIO_BLK_S_OK
    result = driver.read(16, 8, **framing)
    assert result.status == VIRTIO_BLK_S_OK
    assert result.data == PATTERN
    assert result.used_len == len(PATTERN) + 1
    assert disk.inner.read_at(16 * 512, len(PATTERN)) == PATTERN
    assert device.stats.reads == 1 and device.stats.writes == 1


def test_config_space_layout(memory, disk, queue_factory):
    device = VirtioBlkDevice(memory, disk, num_queues=2, queue_size=128, queue_factory=queue_factory)
    fields = virtio_blk_config.parse(bytes(device.config))
    assert fields.capacity == (1 << 20) // 512
    assert fields.seg_max == 126
    assert fields.blk_size == 512
    assert fields.num_queues == 2
    assert fields.writeback == 1
    assert fields.unused0 == 0 and fields.unused1 == bytes(3)
    offered = device.features.offered
    for bit in (VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_WRITE_ZEROES):
        assert offered >> bit & 1
    assert not offered >> VIRTIO_BLK_F_RO & 1


def test_read_past_capacity_is_ioerr_without_backend(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed)
    last = device.capacity - 1
    assert driver.read(last, 1).status == VIRTIO_BLK_S_OK
    before = len(disk.submitted)
    result = driver.read(last, 2)
    assert result.status == VIRTIO_BLK_S_IOERR
    assert result.used_len == 1
    assert len(disk.submitted) == before
    assert driver.read(2**64 - 1, 1).status == VIRTIO_BLK_S_IOERR


def test_data_not_sector_multiple_is_ioerr(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    assert driver.submit(VIRTIO_BLK_T_IN, 0, read_len=100).status == VIRTIO_BLK_S_IOERR
    assert driver.submit(VIRTIO_BLK_T_OUT, 0, data=b"x" * 513).status == VIRTIO_BLK_S_IOERR
    assert disk.submitted == []


def test_no_status_byte_returns_chain_with_length_zero(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    result = driver.submit(VIRTIO_BLK_T_OUT, 0, data=PATTERN[:512], status_len=0)
    assert result.used_len == 0 and result.status is None
    assert disk.submitted == []


def test_short_header_is_ioerr(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    result = driver.submit(0, raw_readable=[b"\x01" * 10], raw_writable=[1])
    assert result.status == VIRTIO_BLK_S_IOERR and result.used_len == 1
    assert disk.submitted == []


def test_header_outside_ram_is_ioerr(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    result = driver.submit(0, raw_readable=[(memory.size + 0x1000, 16)], raw_writable=[1])
    assert result.status == VIRTIO_BLK_S_IOERR


def test_data_outside_ram_is_ioerr_without_backend(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    from virtio.blk.layouts import VIRTIO_BLK_REQ_HDR

    header = VIRTIO_BLK_REQ_HDR.pack(VIRTIO_BLK_T_IN, 0, 0)
    result = driver.submit(0, raw_readable=[header], raw_writable=[(memory.size - 256, 512), 1])
    assert result.status == VIRTIO_BLK_S_IOERR
    assert disk.submitted == []


def test_status_byte_outside_ram_returns_length_zero(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed)
    from virtio.blk.layouts import VIRTIO_BLK_REQ_HDR

    header = VIRTIO_BLK_REQ_HDR.pack(VIRTIO_BLK_T_FLUSH, 0, 0)
    driver.request(0, raw_readable=[header], raw_writable=[(memory.size + 4096, 1)])
    driver.kick()
    (result,) = driver.complete()
    assert result.used_len == 0
    assert not device.status & DEVICE_NEEDS_RESET


def test_unknown_type_is_unsupp(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    for kind in (2, 10, 14, 15, 0xFFFF_FFFF):
        assert driver.submit(kind, 0, read_len=512).status == VIRTIO_BLK_S_UNSUPP
    assert disk.submitted == []


def test_get_id(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed, serial="0123456789abcdefghij")
    result = driver.submit(VIRTIO_BLK_T_GET_ID, read_len=20)
    assert result.status == VIRTIO_BLK_S_OK and result.data == b"0123456789abcdefghij"
    assert result.used_len == 21
    with pytest.raises(UsageError):
        VirtioBlkDevice(memory, disk, serial="x" * 21)


def test_spec_5_2_6_2_readonly_write_is_ioerr(memory, queue_factory, packed):
    inner = MemoryDiskBackend(1 << 20, readonly=True)
    device, driver = make(memory, inner, queue_factory, packed)
    assert device.has_feature(VIRTIO_BLK_F_RO)
    assert not device.features.offered >> VIRTIO_BLK_F_WRITE_ZEROES & 1
    assert driver.write(0, PATTERN[:512]).status == VIRTIO_BLK_S_IOERR
    assert inner.read_at(0, 512) == bytes(512)
    assert driver.read(0, 1).status == VIRTIO_BLK_S_OK


def test_flush_ok(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    assert driver.submit(VIRTIO_BLK_T_FLUSH).status == VIRTIO_BLK_S_OK
    assert [r.op for r in disk.submitted] == [BlockOp.FLUSH]


def test_spec_5_2_6_2_writethrough_writes_are_flushed(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed)
    device.write_config(32, 1, 0)  # writeback = 0 with CONFIG_WCE negotiated
    assert not device.writeback
    assert driver.write(0, PATTERN[:512]).status == VIRTIO_BLK_S_OK
    assert [r.op for r in disk.submitted] == [BlockOp.WRITE, BlockOp.FLUSH]
    device.write_config(32, 1, 1)
    assert driver.write(0, PATTERN[:512]).status == VIRTIO_BLK_S_OK
    assert [r.op for r in disk.submitted][2:] == [BlockOp.WRITE]
    device.write_config(32, 1, 7)  # only 0 and 1 are modes
    assert device.writeback


def test_spec_5_2_6_2_no_flush_negotiated_means_writethrough(memory, disk, queue_factory):
    device = VirtioBlkDevice(memory, disk, queue_size=64, queue_factory=queue_factory)
    device.attach(RecordingTransport())
    accept = device.features.offered & ~(1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_CONFIG_WCE)
    driver = BlkDriver(device, accept=accept)
    assert driver.write(0, PATTERN[:512]).status == VIRTIO_BLK_S_OK
    assert [r.op for r in disk.submitted] == [BlockOp.WRITE, BlockOp.FLUSH]


def test_wce_without_flush_starts_writethrough(memory, disk, queue_factory):
    device = VirtioBlkDevice(memory, disk, queue_size=64, queue_factory=queue_factory)
    accept = device.features.offered & ~(1 << VIRTIO_BLK_F_FLUSH)
    BlkDriver(device, accept=accept)
    assert not device.writeback


def test_write_zeroes_multi_range(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    driver.write(0, PATTERN * 2)
    result = driver.submit(VIRTIO_BLK_T_WRITE_ZEROES, data=dwz((1, 2, 0), (10, 3, 1)))
    assert result.status == VIRTIO_BLK_S_OK
    content = disk.inner.read_at(0, 8192)
    expected = bytearray(PATTERN * 2)
    expected[512:1536] = bytes(1024)
    expected[5120:6656] = bytes(1536)
    assert content == bytes(expected)
    ops = [r for r in disk.submitted if r.op is BlockOp.WRITE_ZEROES]
    assert [(r.offset, r.length, r.unmap) for r in ops] == [(512, 1024, False), (5120, 1536, True)]


@pytest.mark.parametrize(
    "segments, status",
    [
        ([(0, 1, 1)], VIRTIO_BLK_S_UNSUPP),  # §5.2.6.2: unmap set on a discard
        ([(0, 1, 2)], VIRTIO_BLK_S_UNSUPP),  # unknown flag
        ([(2047, 2, 0)], VIRTIO_BLK_S_IOERR),  # past capacity
        ([(0, 1, 0)] * 17, VIRTIO_BLK_S_IOERR),  # more than max_discard_seg
        ([(0, (1 << 22) + 1, 0)], VIRTIO_BLK_S_IOERR),  # more than max_discard_sectors
    ],
    ids=["unmap", "unknown-flag", "past-capacity", "too-many", "too-long"],
)
def test_spec_5_2_6_2_bad_discard(memory, disk, queue_factory, packed, segments, status):
    device, driver = make(memory, disk, queue_factory, packed)
    assert device.has_feature(VIRTIO_BLK_F_DISCARD) == disk.supports_discard
    if not disk.supports_discard:
        pytest.skip("backend has no discard")
    assert driver.submit(VIRTIO_BLK_T_DISCARD, data=dwz(*segments)).status == status
    assert disk.submitted == []


def test_discard_data_not_segment_multiple(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    assert driver.submit(VIRTIO_BLK_T_WRITE_ZEROES, data=b"\0" * 20).status == VIRTIO_BLK_S_IOERR
    assert driver.submit(VIRTIO_BLK_T_WRITE_ZEROES, data=b"").status == VIRTIO_BLK_S_IOERR


def test_discard_not_negotiated_is_unsupp(memory, disk, queue_factory):
    device = VirtioBlkDevice(memory, disk, queue_size=64, queue_factory=queue_factory)
    driver = BlkDriver(device, accept=device.features.offered & ~(1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES))
    assert driver.submit(VIRTIO_BLK_T_DISCARD, data=dwz((0, 1, 0))).status == VIRTIO_BLK_S_UNSUPP
    assert driver.submit(VIRTIO_BLK_T_WRITE_ZEROES, data=dwz((0, 1, 0))).status == VIRTIO_BLK_S_UNSUPP


def test_backend_error_is_ioerr(memory, disk, queue_factory, packed):
    _, driver = make(memory, disk, queue_factory, packed)
    disk.fail_ops = {BlockOp.READ}
    result = driver.read(0, 1)
    assert result.status == VIRTIO_BLK_S_IOERR and result.used_len == 1


def test_asynchronous_completion(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed)
    disk.hold = True
    tokens = [driver.request(VIRTIO_BLK_T_OUT, 8 * i, data=PATTERN) for i in range(4)]
    driver.kick()
    assert driver.reap() == [] and device.in_flight == 4
    disk.release()
    assert device.process_completions() == 4
    results = driver.reap()
    assert sorted(r.token for r in results) == tokens
    assert all(r.status == VIRTIO_BLK_S_OK for r in results)


def test_reset_drains_writes_and_writes_nothing_afterwards(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed)
    disk.hold = True
    driver.request(VIRTIO_BLK_T_OUT, 0, data=PATTERN)
    driver.kick()
    assert device.in_flight == 1
    status_gpa = driver.rings[0].outstanding[next(iter(driver.rings[0].outstanding))].writable[-1][0]
    memory.store_u8(status_gpa, 0xAA)
    device.write_status(0)  # driver resets the device
    assert device.in_flight == 0
    assert disk.inner.read_at(0, len(PATTERN)) == PATTERN  # the write was not lost
    assert memory.load_u8(status_gpa) == 0xAA  # nothing written into the old rings
    assert driver.reap() == []


def test_queue_reset_drains(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed)
    disk.hold = True
    driver.request(VIRTIO_BLK_T_OUT, 0, data=PATTERN)
    driver.kick()
    device.reset_queue(0)
    assert device.in_flight == 0
    assert disk.inner.read_at(0, len(PATTERN)) == PATTERN


def test_multiqueue(memory, disk, queue_factory, packed):
    device = VirtioBlkDevice(memory, disk, num_queues=2, queue_size=32, queue_factory=queue_factory)
    accept = device.features.offered & ~(0 if packed else 1 << VIRTIO_F_RING_PACKED)
    driver = BlkDriver(device, accept=accept, data_size=1 << 18)
    assert device.has_feature(VIRTIO_BLK_F_MQ)
    assert driver.write(0, PATTERN, queue=1).status == VIRTIO_BLK_S_OK
    assert driver.read(0, 8, queue=0).data == PATTERN


def test_raw_file_backend_end_to_end(tmp_path, memory, queue_factory, packed):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    backend = RawFileBackend(image, workers=2)
    try:
        device, driver = make(memory, backend, queue_factory, packed)
        for i in range(8):
            driver.request(VIRTIO_BLK_T_OUT, 8 * i, data=bytes([i]) * 4096)
        driver.kick()
        results = driver.complete()
        assert len(results) == 8 and all(r.status == VIRTIO_BLK_S_OK for r in results)
        assert driver.submit(VIRTIO_BLK_T_FLUSH).status == VIRTIO_BLK_S_OK
    finally:
        backend.close()
    with open(image, "rb") as f:
        data = f.read()
    for i in range(8):
        assert data[4096 * i : 4096 * (i + 1)] == bytes([i]) * 4096


def test_snapshot_roundtrip(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed)
    device.write_config(32, 1, 0)
    driver.write(0, PATTERN[:512])
    state = device.state()
    other = VirtioBlkDevice(memory, disk, queue_size=64, queue_factory=queue_factory)
    other.restore(state)
    assert not other.writeback and other.state() == state
    disk.hold = True
    driver.request(VIRTIO_BLK_T_OUT, 0, data=PATTERN[:512])
    driver.kick()
    with pytest.raises(UsageError):
        device.state()
    device.drain()
    device.state()


def test_rejections_are_traced(memory, disk, queue_factory):
    _, driver = make(memory, disk, queue_factory, False)
    with RecordingSink("virtio.blk.*") as sink:
        driver.submit(77, read_len=512)
    assert sink.names() == ["virtio.blk.reject"]


def test_bad_arguments(memory, disk):
    with pytest.raises(UsageError):
        VirtioBlkDevice(memory, disk, num_queues=0)
    with pytest.raises(UsageError):
        VirtioBlkDevice(memory, disk, queue_size=2)
    with pytest.raises(UsageError):
        VirtioBlkDevice(memory, disk, size_max=0)


def test_many_requests_in_one_notification(memory, disk, queue_factory, packed):
    device, driver = make(memory, disk, queue_factory, packed)
    data = os.urandom(512 * 40)
    for i in range(40):
        driver.request(VIRTIO_BLK_T_OUT, i, data=data[512 * i : 512 * (i + 1)], indirect=True)
    driver.kick()
    results = driver.complete()
    assert len(results) == 40
    assert driver.read(0, 40).data == data
    assert device.stats.writes == 40


def test_bigger_memory_region_layout(queue_factory, packed, disk):
    # Guest RAM in two regions with a hole: buffers on either side work.
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 4 << 20), MemoryRegion.from_bytearray(8 << 20, 4 << 20)])
    _, driver = make(memory, disk, queue_factory, packed)
    assert driver.write(0, PATTERN).status == VIRTIO_BLK_S_OK
    assert driver.read(0, 8).data == PATTERN
