"""VfioUserServer against vfio-user.rst as QEMU 11.1 and libvfio-user use it (issue 13).

Negotiation and its enforcement, refusals logged, the ERR/REQ interrupts, DMA_UNMAP ALL,
REGION_WRITE_MULTI, accesses of every size, reset, and a second client after the first.
"""

from __future__ import annotations

import errno
import logging
import os
import struct

import pytest

from devmodels import Bus, GuestMemoryError
from devmodels.pci import defs as pcidefs
from devmodels.testdev import regs as r
from passthrough.defs import (
    VFIO_DEVICE_STATE_RESUMING,
    VFIO_DEVICE_STATE_STOP,
    VFIO_DEVICE_STATE_STOP_COPY,
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_USER_DEVICE_FEATURE,
    VFIO_USER_DEVICE_GET_INFO,
    VFIO_USER_DEVICE_GET_IRQ_INFO,
    VFIO_USER_DEVICE_RESET,
    VFIO_USER_DMA_UNMAP,
    VFIO_USER_F_NO_REPLY,
    VFIO_USER_MIG_DATA_READ,
    VFIO_USER_MIG_DATA_WRITE,
    VFIO_USER_REGION_READ,
    VFIO_USER_REGION_WRITE,
    VFIO_USER_REGION_WRITE_MULTI,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_SET,
)
from passthrough.layouts import (
    vfio_device_feature_mig_state,
    vfio_irq_info,
    vfio_user_device_feature,
    vfio_user_device_info,
    vfio_user_dma_unmap,
    vfio_user_mig_data,
    vfio_user_region_access,
    vfio_user_write_multi_count,
    vfio_user_write_multi_entry,
)
from passthrough.user import decode_version
from passthrough.user.framing import Message
from tests.unit.passthrough._served import Served, expect_error, memfd

@pytest.fixture
def s():  # type: ignore[no-untyped-def]
    served = Served()
    assert not served.version().is_error
    yield served
    served.close()


# -- VERSION (item 1) --------------------------------------------------------------------------


def test_qemu_proposal_gets_minimums_and_only_proposed_names() -> None:
    served = Served()  # max_msg_fds 64 offered
    reply = served.version()
    major, minor, caps = decode_version(reply.payload)
    assert (major, minor) == (0, 0)
    assert caps.names == {"max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes", "write_multiple"}
    assert (caps.max_msg_fds, caps.max_dma_maps, caps.pgsizes) == (16, 1024, 4096) and caps.write_multiple
    assert served.server.limits.max_msg_fds == 16
    served.close()


def test_libvfio_user_client_proposal_gets_no_other_name() -> None:
    served = Served()
    reply = served.version(b'{"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}}\0', minor=1)
    assert reply.payload[4:] == b'{"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}}\0'
    served.close()


def test_negotiated_max_msg_fds_is_enforced() -> None:
    served = Served()  # offers 64
    served.version(b'{"capabilities":{"max_msg_fds":1}}\0')
    fds = [os.eventfd(0) for _ in range(2)]
    flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
    # Two vectors with two eventfds is a valid SET_IRQS, but not with one fd per message.
    expect_error(served.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, flags, 0, 2, fds=fds), errno.EINVAL)
    assert not served.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, flags, 0, 1, fds=fds[:1]).is_error
    assert not served.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, flags, 1, 1, fds=fds[1:]).is_error
    for fd in fds:
        os.close(fd)
    served.close()


def test_negotiated_max_data_xfer_size_and_max_dma_maps_are_enforced() -> None:
    served = Served()
    served.version(b'{"capabilities":{"max_data_xfer_size":16,"max_dma_maps":1}}\0')
    assert len(served.read(0, 16)) == 16
    expect_error(served.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(0, 0, 17)), errno.E2BIG)
    assert not served.map(0x10000, 0x1000).is_error
    expect_error(served.map(0x20000, 0x1000), errno.ENOSPC)
    served.close()


def test_dma_windows_are_whole_negotiated_pages() -> None:
    served = Served()
    served.version(b'{"capabilities":{"pgsizes":2097152}}\0')  # 2 MiB pages only
    expect_error(served.map(0x200000, 0x1000), errno.EINVAL)
    expect_error(served.map(0x1000, 0x200000), errno.EINVAL)
    assert not served.map(0x200000, 0x400000).is_error
    served.close()
    served.connect()
    served.version()  # QEMU's 4 KiB
    expect_error(served.map(0x800, 0x1000), errno.EINVAL)
    assert not served.map(0x1000, 0x1000).is_error
    served.close()


def test_refused_negotiation_is_logged_and_the_client_may_try_again(caplog: pytest.LogCaptureFixture) -> None:
    served = Served()
    with caplog.at_level(logging.WARNING, "devmodels.passthrough.vfio_user"):
        expect_error(served.version(b'{"capabilities":{"pgsizes":512}}\0'), errno.EINVAL)
    assert "refused VERSION" in caplog.text and "no common DMA page size" in caplog.text
    assert not served.version().is_error
    served.close()


def test_refusals_are_logged_then_counted_never_silent(caplog: pytest.LogCaptureFixture) -> None:
    served = Served()
    with caplog.at_level(logging.WARNING, "devmodels.passthrough.vfio_user"):
        served.version()
        for _ in range(20):
            expect_error(served.peer.request(VFIO_USER_DEVICE_GET_INFO, b"\1"), errno.EINVAL)
        served.close()
    refusals = [rec for rec in caplog.records if "refused DEVICE_GET_INFO" in rec.getMessage()]
    assert len(refusals) == 8 and "counted, not logged" in refusals[-1].getMessage()
    assert any("12 more refusals" in rec.getMessage() and "DEVICE_GET_INFO/EINVAL x20" in rec.getMessage() for rec in caplog.records)


def test_a_broken_stream_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    served = Served()
    with caplog.at_level(logging.WARNING, "devmodels.passthrough.vfio_user"):
        served.peer.send_raw(struct.pack("=HHIII", 1, 1, 4, 0, 0))
        assert served.peer.recv() is not None
        assert served.thread.join()
    assert "closing the connection" in caplog.text


# -- interrupts (item 2) -----------------------------------------------------------------------


def test_err_and_req_are_reported_as_vfio_pci_does(s: Served) -> None:
    def info(index: int):  # type: ignore[no-untyped-def]
        return vfio_irq_info.unpack(s.peer.request(VFIO_USER_DEVICE_GET_IRQ_INFO, vfio_irq_info.pack(16, 0, index, 0)).payload)

    assert info(VFIO_PCI_ERR_IRQ_INDEX) == (16, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, VFIO_PCI_ERR_IRQ_INDEX, 1)
    assert info(VFIO_PCI_REQ_IRQ_INDEX) == (16, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_REQ_IRQ_INDEX, 1)


def test_err_eventfd_is_kept_beside_msix_and_signalled_on_a_device_failure(s: Served) -> None:
    err, vec = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    trigger = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
    assert not s.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, trigger, 0, 1, fds=[vec]).is_error
    assert not s.set_irqs(VFIO_PCI_ERR_IRQ_INDEX, trigger, 0, 1, fds=[err]).is_error  # QEMU's vfio_register_err_notifier
    assert s.server.irqs.active == VFIO_PCI_MSIX_IRQ_INDEX

    def broken(*args: object) -> int:
        raise RuntimeError("model bug")

    s.device.bar_read = broken  # type: ignore[method-assign]
    expect_error(s.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(0, 0, 4)), errno.EIO)
    assert os.eventfd_read(err) == 1
    expect_error(s.set_irqs(VFIO_PCI_ERR_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, 0, 1), errno.EINVAL)
    # Loopback trigger, then unwire with count 0.
    assert not s.set_irqs(VFIO_PCI_ERR_IRQ_INDEX, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, b"\1").is_error
    assert os.eventfd_read(err) == 1
    assert not s.set_irqs(VFIO_PCI_ERR_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0).is_error
    assert s.server.report_error("test") is False
    os.close(err)
    os.close(vec)


def test_req_asks_the_client_to_release_the_device(s: Served) -> None:
    req = os.eventfd(0, os.EFD_NONBLOCK)
    assert s.server.request_release() is False
    assert not s.set_irqs(VFIO_PCI_REQ_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[req]).is_error
    assert s.server.request_release() is True
    assert os.eventfd_read(req) == 1
    os.close(req)


# -- DMA, accesses, reset (item 3) -------------------------------------------------------------


def test_dma_map_with_an_fd_offset_reaches_that_part_of_the_file(s: Served) -> None:
    fd = memfd(0x10000)
    os.pwrite(fd, b"at offset 0x8000", 0x8000)
    assert not s.map(0x100000, 0x4000, fd, offset=0x8000).is_error
    assert s.memory.read(0x100000, 16) == b"at offset 0x8000"
    os.close(fd)


def test_dma_unmap_all_as_qemu_sends_it(s: Served) -> None:
    fd = memfd(0x4000)
    s.map(0x0, 0x2000, fd)
    s.map(0x2000, 0x2000, fd, offset=0x2000)
    s.map(0x10000, 0x1000)
    expect_error(s.peer.request(VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0x1000)), errno.EINVAL)
    reply = s.peer.request(VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0))
    assert vfio_user_dma_unmap.unpack(reply.payload) == (24, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0)
    assert s.server.dma.windows == () and s.memory.regions == ()
    os.close(fd)


def test_dma_unmap_get_dirty_bitmap_is_not_supported(s: Served) -> None:
    s.map(0x0, 0x1000)
    payload = vfio_user_dma_unmap.pack(24, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 0, 0x1000)
    expect_error(s.peer.request(VFIO_USER_DMA_UNMAP, payload), errno.ENOTSUP)


@pytest.mark.parametrize("region", [0, VFIO_PCI_CONFIG_REGION_INDEX])
def test_reads_of_every_size_and_alignment_match_the_bus(s: Served, region: int) -> None:
    s.write(r.SCRATCH, (0x44332211).to_bytes(4, "little"))
    bus = Bus()
    if region == 0:
        bus.register(0, r.BAR0_SIZE, s.device.registers)
    for offset in range(0, 12):
        for count in (1, 2, 3, 4, 5, 7, 8, 9, 16):
            data = s.read(offset, count, region)
            assert len(data) == count
            if region == 0:
                assert data == bus.read_bytes(offset, count), (offset, count)
            else:
                assert data == bytes(s.device.config.data[offset : offset + count])


def test_writes_of_every_size_and_alignment_reach_the_device(s: Served) -> None:
    # DMA_SRC is a 64-bit register that takes partial accesses; each write lands byte-exact.
    for offset in range(8):
        for size in range(1, 9 - offset):
            s.write(r.DMA_SRC, bytes(8))
            data = bytes(range(0x10 + offset, 0x10 + offset + size))
            assert not s.write(r.DMA_SRC + offset, data).is_error
            assert s.read(r.DMA_SRC, 8) == bytes(offset) + data + bytes(8 - offset - size), (offset, size)


def test_region_write_multi_applies_each_write_in_order(s: Served) -> None:
    entries = [(r.SCRATCH, 0, 4, (7).to_bytes(4, "little")), (r.DMA_SRC, 0, 8, (0x1122334455667788).to_bytes(8, "little")),
               (r.SCRATCH, 0, 2, (9).to_bytes(2, "little"))]
    payload = vfio_user_write_multi_count.pack(len(entries)) + b"".join(
        vfio_user_write_multi_entry.pack(o, reg, c, d.ljust(8, b"\0")) for o, reg, c, d in entries
    )
    reply = s.peer.request(VFIO_USER_REGION_WRITE_MULTI, payload)
    assert not reply.is_error and reply.payload == vfio_user_write_multi_count.pack(3)
    assert s.read(r.DMA_SRC, 8) == (0x1122334455667788).to_bytes(8, "little")
    bad = vfio_user_write_multi_count.pack(2) + vfio_user_write_multi_entry.pack(r.SCRATCH, 0, 9, bytes(8))
    expect_error(s.peer.request(VFIO_USER_REGION_WRITE_MULTI, bad), errno.EINVAL)  # wr_cnt says 2, one sent
    bad = vfio_user_write_multi_count.pack(1) + vfio_user_write_multi_entry.pack(r.SCRATCH, 0, 9, bytes(8))
    expect_error(s.peer.request(VFIO_USER_REGION_WRITE_MULTI, bad), errno.EINVAL)  # more than 8 bytes


def test_region_write_multi_needs_write_multiple() -> None:
    served = Served()
    served.version(b'{"capabilities":{}}\0')
    payload = vfio_user_write_multi_count.pack(1) + vfio_user_write_multi_entry.pack(r.SCRATCH, 0, 4, bytes(8))
    expect_error(served.peer.request(VFIO_USER_REGION_WRITE_MULTI, payload), errno.ENOTSUP)
    served.close()


def test_posted_writes_as_qemu_sends_them(s: Served) -> None:
    for value in range(50):
        s.peer.send(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(r.SCRATCH, 0, 4) + value.to_bytes(4, "little"),
                    flags=VFIO_USER_F_NO_REPLY)
    assert s.read(r.SCRATCH, 4) == (49).to_bytes(4, "little")


def test_reset_resets_the_device_and_keeps_windows_and_eventfds(s: Served) -> None:
    fd, vec = memfd(0x1000), os.eventfd(0, os.EFD_NONBLOCK)
    s.map(0x0, 0x1000, fd)
    s.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[vec])
    s.write(r.SCRATCH, b"\x05\0\0\0")
    assert not s.peer.request(VFIO_USER_DEVICE_RESET).is_error
    assert s.read(r.SCRATCH, 4) == bytes(4)
    assert len(s.server.dma.windows) == 1 and s.device.msix_enabled  # re-applied after the reset
    os.close(fd)
    os.close(vec)


# -- disconnect and reconnect (item 3) ---------------------------------------------------------


def test_a_second_client_finds_the_device_but_not_the_first_ones_windows() -> None:
    served = Served()
    served.version()
    fd, err = memfd(0x2000), os.eventfd(0, os.EFD_NONBLOCK)
    served.map(0x40000, 0x2000, fd)
    served.set_irqs(VFIO_PCI_ERR_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[err])
    served.write(r.SCRATCH, b"\x2a\0\0\0")
    served.write(pcidefs.PCI_COMMAND, b"\x06\x00", VFIO_PCI_CONFIG_REGION_INDEX)
    served.close()  # the first client goes away
    assert served.server.dma.windows == () and served.memory.regions == ()
    with pytest.raises(GuestMemoryError):
        served.memory.read(0x40000, 4)  # a device DMA now faults
    assert served.server.report_error("after the client left") is False  # its ERR eventfd is gone
    served.connect()
    # A fresh VERSION is required, and the device state is still there.
    expect_error(served.peer.request(VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info.pack(16, 0, 0, 0)), errno.EINVAL)
    assert not served.version(b'{"capabilities":{"max_msg_fds":4}}\0').is_error
    assert served.server.limits.max_msg_fds == 4
    assert served.read(r.SCRATCH, 4) == b"\x2a\0\0\0"
    assert served.read(pcidefs.PCI_COMMAND, 2, VFIO_PCI_CONFIG_REGION_INDEX) == b"\x06\x00"
    assert not served.map(0x40000, 0x2000, fd).is_error  # the same window can be mapped again
    os.close(fd)
    os.close(err)
    served.close()


def test_a_migration_session_is_abandoned_with_its_client() -> None:
    served = Served()
    served.version()

    def state(value: int) -> Message:
        payload = vfio_user_device_feature.pack(16, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
        return served.peer.request(VFIO_USER_DEVICE_FEATURE, payload + vfio_device_feature_mig_state.pack(value, -1))

    assert not state(VFIO_DEVICE_STATE_RESUMING).is_error
    assert not served.peer.request(VFIO_USER_MIG_DATA_WRITE, vfio_user_mig_data.pack(8, 3) + b"abc").is_error
    served.close()
    assert served.server.migration.state == VFIO_DEVICE_STATE_STOP
    served.connect()
    served.version()
    assert not state(VFIO_DEVICE_STATE_STOP_COPY).is_error  # nothing of the old session is left
    served.close()


# -- migration data forms (item 5) -------------------------------------------------------------


def test_mig_data_read_is_padded_to_the_size_asked_and_write_takes_both_argsz_forms(s: Served) -> None:
    def state(value: int) -> None:
        payload = vfio_user_device_feature.pack(16, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
        assert not s.peer.request(VFIO_USER_DEVICE_FEATURE, payload + vfio_device_feature_mig_state.pack(value, -1)).is_error

    state(VFIO_DEVICE_STATE_STOP_COPY)
    document = bytearray()
    while True:
        reply = s.peer.request(VFIO_USER_MIG_DATA_READ, vfio_user_mig_data.pack(8 + 512, 512))
        argsz, size = vfio_user_mig_data.unpack(reply.payload)
        # libvfio-user's client takes any reply but 8 + 512 bytes for a broken connection.
        assert len(reply.payload) == 8 + 512 and argsz == 8 + size
        assert reply.payload[8 + size :] == bytes(512 - size)
        document += reply.payload[8 : 8 + size]
        if size < 512:
            break
    state(VFIO_DEVICE_STATE_STOP)
    state(VFIO_DEVICE_STATE_RESUMING)
    half = len(document) // 2
    assert not s.peer.request(VFIO_USER_MIG_DATA_WRITE, vfio_user_mig_data.pack(8, half) + document[:half]).is_error  # the spec's form
    rest = bytes(document[half:])
    assert not s.peer.request(VFIO_USER_MIG_DATA_WRITE, vfio_user_mig_data.pack(8 + len(rest), len(rest)) + rest).is_error  # libvfio-user's
    state(VFIO_DEVICE_STATE_STOP)  # restores the device from the document
