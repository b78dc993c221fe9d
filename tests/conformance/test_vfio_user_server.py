"""vfio-user server conformance: the wire protocol as a (possibly hostile) client sends it.

Each test drives a ``VfioUserServer`` serving a ``PciTestDevice`` through raw messages
(``RawPeer``) and checks the reply the specification (QEMU docs/interop/vfio-user.rst)
requires. Hostile input must get an error reply and leave the server serving.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from devmodels import Bus, GuestMemory
from devmodels.pci import defs as pcidefs
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r
from passthrough.defs import (
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_RESET,
    VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
    VFIO_PCI_ROM_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
    VFIO_USER_DEVICE_GET_INFO,
    VFIO_USER_DEVICE_GET_IRQ_INFO,
    VFIO_USER_DEVICE_GET_REGION_INFO,
    VFIO_USER_DEVICE_RESET,
    VFIO_USER_DEVICE_SET_IRQS,
    VFIO_USER_DMA_MAP,
    VFIO_USER_DMA_READ,
    VFIO_USER_DMA_UNMAP,
    VFIO_USER_F_DMA_REGION_READ,
    VFIO_USER_F_DMA_REGION_WRITE,
    VFIO_USER_F_NO_REPLY,
    VFIO_USER_F_TYPE_REPLY,
    VFIO_USER_REGION_READ,
    VFIO_USER_REGION_WRITE,
    VFIO_USER_VERSION,
)
from passthrough.layouts import (
    vfio_irq_info,
    vfio_irq_set,
    vfio_region_info,
    vfio_user_device_info,
    vfio_user_dma_map,
    vfio_user_dma_region_access,
    vfio_user_dma_unmap,
    vfio_user_header,
    vfio_user_region_access,
    vfio_user_version,
)
from passthrough.user import DmaMemory, VfioUserServer, decode_version
from passthrough.user.testing import RawPeer, ServerThread

RW = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE


class Harness:
    def __init__(self, memory: GuestMemory | None = None, **server_args: int) -> None:
        self.memory = memory if memory is not None else DmaMemory()
        self.device = PciTestDevice(self.memory)
        self.server = VfioUserServer(self.device, self.memory, **server_args)
        self.thread = ServerThread(self.server)
        self.peer = RawPeer(self.thread.start())

    def assert_alive(self) -> None:
        """The server still answers a valid command after whatever came before."""
        reply = self.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(r.ID, 0, 4))
        assert not reply.is_error
        assert reply.payload[16:] == r.TESTDEV_MAGIC.to_bytes(4, "little")

    def close(self) -> None:
        self.peer.close()
        assert self.thread.join()
        assert self.thread.error is None


@pytest.fixture
def h():
    harness = Harness()
    assert not harness.peer.negotiate().is_error
    yield harness
    harness.close()


@pytest.fixture
def raw():
    harness = Harness()
    yield harness
    harness.close()


def expect_error(reply, code: int) -> None:  # type: ignore[no-untyped-def]
    assert reply.is_reply and reply.is_error, reply
    assert reply.error_no == code
    # vfio-user.rst "Header": "If an error occurs, the reply message must only include the reply header."
    assert reply.payload == b""


def memfd(size: int) -> int:
    fd = os.memfd_create("client-ram")
    os.ftruncate(fd, size)
    return fd


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- "Connection Initiation" / "VFIO_USER_VERSION" -----------------------------------------


def test_version_reply_keeps_major_and_lowers_minor(raw: Harness) -> None:
    reply = raw.peer.request(VFIO_USER_VERSION, vfio_user_version.pack(0, 7) + b'{"capabilities":{}}\0')
    assert not reply.is_error
    major, minor, caps = decode_version(reply.payload)
    assert (major, minor) == (0, 1)
    assert caps.max_data_xfer_size == raw.server.caps.max_data_xfer_size
    raw.assert_alive()


def test_version_without_version_data_takes_defaults(raw: Harness) -> None:
    assert not raw.peer.request(VFIO_USER_VERSION, vfio_user_version.pack(0, 0)).is_error
    assert raw.server.client_caps.max_msg_fds == 1
    assert raw.server.client_caps.max_data_xfer_size == 1 << 20


def test_commands_before_version_are_refused(raw: Harness) -> None:
    expect_error(raw.peer.request(VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info.pack(16, 0, 0, 0)), errno.EINVAL)
    assert not raw.peer.negotiate().is_error
    raw.assert_alive()


def test_other_major_version_is_refused_and_the_connection_closed(raw: Harness) -> None:
    expect_error(raw.peer.request(VFIO_USER_VERSION, vfio_user_version.pack(1, 0)), errno.ENOTSUP)
    assert raw.peer.recv() is None


@pytest.mark.parametrize(
    "data",
    [
        b"not json\0",
        b"[1,2]\0",
        b'{"capabilities":[]}\0',
        b'{"capabilities":{"max_msg_fds":-1}}\0',
        b'{"capabilities":{"max_data_xfer_size":true}}\0',
        b'{"capabilities":{"pgsizes":18446744073709551616}}\0',
        b"\xff\xfe\0",
        b"[" * 100_000 + b"]" * 100_000 + b"\0",
        b'{}\0trailing',
    ],
)
def test_malformed_version_data_is_einval(raw: Harness, data: bytes) -> None:
    expect_error(raw.peer.request(VFIO_USER_VERSION, vfio_user_version.pack(0, 1) + data), errno.EINVAL)
    assert not raw.peer.negotiate().is_error
    raw.assert_alive()


def test_version_twice_is_refused(h: Harness) -> None:
    expect_error(h.peer.negotiate(), errno.EINVAL)
    h.assert_alive()


# -- "Header" ---------------------------------------------------------------------------------


def test_message_size_below_header_ends_the_connection_after_an_error(raw: Harness) -> None:
    raw.peer.send_raw(vfio_user_header.pack(7, VFIO_USER_VERSION, 8, 0, 0))
    reply = raw.peer.recv()
    assert reply is not None and reply.msg_id == 7
    expect_error(reply, errno.EINVAL)
    assert raw.peer.recv() is None


def test_oversized_message_ends_the_connection_after_e2big(raw: Harness) -> None:
    raw.peer.send_raw(vfio_user_header.pack(9, VFIO_USER_REGION_WRITE, 0xFFFF_FFFF, 0, 0))
    reply = raw.peer.recv()
    assert reply is not None and reply.msg_id == 9
    expect_error(reply, errno.E2BIG)
    assert raw.peer.recv() is None


def test_server_accepts_a_new_client_after_a_fatal_header() -> None:
    harness = Harness()
    harness.peer.send_raw(vfio_user_header.pack(1, 1, 3, 0, 0))
    harness.peer.recv()
    assert harness.thread.join()
    again = ServerThread(harness.server)
    peer = RawPeer(again.start())
    assert not peer.negotiate().is_error
    peer.close()
    assert again.join()


def test_unknown_command_is_enotsup(h: Harness) -> None:
    expect_error(h.peer.request(99, b"x" * 10), errno.ENOTSUP)
    h.assert_alive()


def test_unknown_message_type_is_einval(h: Harness) -> None:
    expect_error(h.peer.request(VFIO_USER_DEVICE_RESET, flags=5), errno.EINVAL)
    h.assert_alive()


def test_unsolicited_reply_is_ignored(h: Harness) -> None:
    h.peer.send(VFIO_USER_REGION_READ, b"junk", flags=VFIO_USER_F_TYPE_REPLY)
    h.assert_alive()
    assert h.server.rejected == 1


def test_dma_read_from_the_client_is_the_wrong_direction(h: Harness) -> None:
    expect_error(h.peer.request(VFIO_USER_DMA_READ, vfio_user_dma_region_access.pack(0, 4)), errno.EINVAL)


def test_no_reply_commands_are_executed_without_a_reply(h: Harness) -> None:
    payload = vfio_user_region_access.pack(r.SCRATCH, 0, 4) + (0x1234).to_bytes(4, "little")
    h.peer.send(VFIO_USER_REGION_WRITE, payload, flags=VFIO_USER_F_NO_REPLY)
    reply = h.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(r.SCRATCH, 0, 4))
    assert reply.command == VFIO_USER_REGION_READ and reply.payload[16:] == (0x1234).to_bytes(4, "little")


# -- "VFIO_USER_DEVICE_GET_INFO", "GET_REGION_INFO", "GET_IRQ_INFO" -----------------------------


def test_device_info(h: Harness) -> None:
    reply = h.peer.request(VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info.pack(16, 0, 0, 0))
    info = vfio_user_device_info.unpack(reply.payload)
    assert info == (16, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_NUM_REGIONS, VFIO_PCI_NUM_IRQS)


@pytest.mark.parametrize(
    ("command", "layout", "fields"),
    [
        (VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info, (15, 0, 0, 0)),
        (VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info, (31, 0, 0, 0, 0, 0)),
        (VFIO_USER_DEVICE_GET_IRQ_INFO, vfio_irq_info, (0, 0, 0, 0)),
        (VFIO_USER_DEVICE_SET_IRQS, vfio_irq_set, (19, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 0)),
        (VFIO_USER_DMA_MAP, vfio_user_dma_map, (31, RW, 0, 0x1000, 0x1000)),
        (VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap, (23, 0, 0x1000, 0x1000)),
    ],
)
def test_argsz_smaller_than_the_structure_is_einval(h: Harness, command: int, layout, fields) -> None:  # type: ignore[no-untyped-def]
    expect_error(h.peer.request(command, layout.pack(*fields)), errno.EINVAL)
    h.assert_alive()


@pytest.mark.parametrize(
    ("command", "payload"),
    [
        (VFIO_USER_DEVICE_GET_INFO, b"\x10\0\0"),
        (VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info.pack(32, 0, 0, 0, 0, 0)[:20]),
        (VFIO_USER_DEVICE_GET_IRQ_INFO, b""),
        (VFIO_USER_DEVICE_SET_IRQS, b"\x14\0\0\0"),
        (VFIO_USER_DMA_MAP, vfio_user_dma_map.pack(32, RW, 0, 0, 0x1000)[:31]),
        (VFIO_USER_DMA_UNMAP, b"\x18"),
        (VFIO_USER_REGION_READ, b"\0" * 15),
        (VFIO_USER_REGION_WRITE, b"\0" * 12),
    ],
)
def test_truncated_request_is_einval(h: Harness, command: int, payload: bytes) -> None:
    expect_error(h.peer.request(command, payload), errno.EINVAL)
    h.assert_alive()


def test_huge_argsz_in_an_info_request_is_only_a_maximum(h: Harness) -> None:
    reply = h.peer.request(VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info.pack(0xFFFF_FFFF, 0, 0, 0, 0, 0))
    assert len(reply.payload) == vfio_region_info.size
    info = vfio_region_info.unpack(reply.payload)
    assert info.argsz == 32 and info.size == r.BAR0_SIZE
    assert info.flags == VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE


def test_region_info_of_every_region(h: Harness) -> None:
    sizes = {}
    for index in range(VFIO_PCI_NUM_REGIONS):
        info = vfio_region_info.unpack(h.peer.request(VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info.pack(32, 0, index, 0, 0, 0)).payload)
        assert info.index == index
        sizes[index] = info.size
    assert sizes == {0: r.BAR0_SIZE, 1: r.BAR1_SIZE, 2: r.BAR2_SIZE, 3: 0, 4: 0, 5: 0, 6: 0, 7: 256, 8: 0}
    expect_error(h.peer.request(VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info.pack(32, 0, 9, 0, 0, 0)), errno.EINVAL)
    expect_error(
        h.peer.request(VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info.pack(32, 0, 0xFFFF_FFFF, 0, 0, 0)), errno.EINVAL
    )


def test_irq_info(h: Harness) -> None:
    def info(index: int):  # type: ignore[no-untyped-def]
        return vfio_irq_info.unpack(h.peer.request(VFIO_USER_DEVICE_GET_IRQ_INFO, vfio_irq_info.pack(16, 0, index, 0)).payload)

    intx = info(VFIO_PCI_INTX_IRQ_INDEX)
    assert intx.count == 1 and intx.flags == VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED
    assert info(VFIO_PCI_MSI_IRQ_INDEX).count == 1
    assert info(VFIO_PCI_MSIX_IRQ_INDEX).count == r.MSIX_VECTORS
    # vfio-pci's ERR and REQ notifications: one eventfd each (QEMU: "Could not enable error recovery" without ERR).
    assert (info(3).count, info(3).flags) == (1, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE)
    assert (info(4).count, info(4).flags) == (1, VFIO_IRQ_INFO_EVENTFD)
    expect_error(h.peer.request(VFIO_USER_DEVICE_GET_IRQ_INFO, vfio_irq_info.pack(16, 0, 5, 0)), errno.EINVAL)


# -- "VFIO_USER_REGION_READ" / "VFIO_USER_REGION_WRITE" -----------------------------------------


@pytest.mark.parametrize(
    ("offset", "region", "count", "code"),
    [
        ((1 << 64) - 4, 0, 8, errno.EINVAL),  # offset + count wraps
        ((1 << 64) - 1, 0, 0xFFFF_FFFF, errno.E2BIG),
        (0xFFC, 0, 8, errno.EINVAL),  # runs past BAR0
        (0, 9, 4, errno.EINVAL),  # no such region
        (0, 0xFFFF_FFFF, 4, errno.EINVAL),
        (0, VFIO_PCI_ROM_REGION_INDEX, 4, errno.EINVAL),  # absent region
        (0, 0, (1 << 20) + 1, errno.E2BIG),  # above max_data_xfer_size
        (0xFC, VFIO_PCI_CONFIG_REGION_INDEX, 8, errno.EINVAL),
    ],
)
def test_region_read_out_of_bounds(h: Harness, offset: int, region: int, count: int, code: int) -> None:
    expect_error(h.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(offset, region, count)), code)
    h.assert_alive()


def test_region_write_count_must_match_data(h: Harness) -> None:
    payload = vfio_user_region_access.pack(r.SCRATCH, 0, 8) + b"\x01\x02\x03\x04"
    expect_error(h.peer.request(VFIO_USER_REGION_WRITE, payload), errno.EINVAL)
    payload = vfio_user_region_access.pack(r.SCRATCH, 0, 2) + b"\x01\x02\x03\x04"
    expect_error(h.peer.request(VFIO_USER_REGION_WRITE, payload), errno.EINVAL)
    assert h.device.registers["SCRATCH"] == 0


def test_region_read_carrying_data_is_einval(h: Harness) -> None:
    expect_error(h.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(0, 0, 4) + b"xxxx"), errno.EINVAL)


def test_region_accesses_are_split_like_the_bus(h: Harness) -> None:
    payload = vfio_user_region_access.pack(r.SCRATCH, 0, 4) + (0xDDCCBBAA).to_bytes(4, "little")
    reply = h.peer.request(VFIO_USER_REGION_WRITE, payload)
    assert vfio_user_region_access.unpack(reply.payload) == (r.SCRATCH, 0, 4)
    # A 13-byte unaligned read is split into the same naturally aligned pieces the core bus
    # uses (rule 3), so it returns what a guest reading those bytes through a Bus would see.
    reply = h.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(3, 0, 13))
    bus = Bus()
    bus.register(0, r.BAR0_SIZE, h.device.registers)
    assert reply.payload[16:] == bus.read_bytes(3, 13)
    assert reply.payload[17:21] == (0xDDCCBBAA).to_bytes(4, "little")
    reply = h.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(0, VFIO_PCI_CONFIG_REGION_INDEX, 256))
    assert reply.payload[16:20] == struct.pack("<HH", r.TESTDEV_VENDOR_ID, r.TESTDEV_DEVICE_ID)
    assert reply.payload[16:] == bytes(h.device.config.data)


def test_config_writes_to_msi_and_msix_capabilities_are_dropped(h: Harness) -> None:
    cap = h.device.msix.offset  # type: ignore[union-attr]
    payload = vfio_user_region_access.pack(cap, VFIO_PCI_CONFIG_REGION_INDEX, 4) + struct.pack("<I", 0x8000_0000)
    assert not h.peer.request(VFIO_USER_REGION_WRITE, payload).is_error
    assert not h.device.msix_enabled
    # The bytes before the capability in the same access still land (Command here).
    payload = vfio_user_region_access.pack(pcidefs.PCI_COMMAND, VFIO_PCI_CONFIG_REGION_INDEX, 2) + struct.pack("<H", 6)
    h.peer.request(VFIO_USER_REGION_WRITE, payload)
    assert h.device.command == 6


def test_msix_table_writes_by_the_client_are_dropped(h: Harness) -> None:
    payload = vfio_user_region_access.pack(12, 2, 4) + struct.pack("<I", 0)
    assert not h.peer.request(VFIO_USER_REGION_WRITE, payload).is_error
    assert h.device.msix.entry(0)[2] is True  # type: ignore[union-attr]


# -- "VFIO_USER_DEVICE_SET_IRQS" ----------------------------------------------------------------


def set_irqs(h: Harness, index: int, flags: int, start: int, count: int, data: bytes = b"", fds=(), argsz=None):  # type: ignore[no-untyped-def]
    payload = vfio_irq_set.pack(argsz if argsz is not None else 20 + len(data), flags, index, start, count) + data
    return h.peer.request(VFIO_USER_DEVICE_SET_IRQS, payload, fds=fds)


EVENTFD_TRIGGER = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER


@pytest.mark.parametrize(("start", "count"), [(0xFFFF_FFFF, 2), (1, 0xFFFF_FFFF), (2, 1), (0, 3)])
def test_irq_start_plus_count_beyond_the_index_is_einval(h: Harness, start: int, count: int) -> None:
    expect_error(set_irqs(h, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, start, count), errno.EINVAL)
    h.assert_alive()


@pytest.mark.parametrize(
    "flags",
    [
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_IRQ_SET_DATA_NONE,
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_ACTION_UNMASK,
        VFIO_IRQ_SET_ACTION_TRIGGER | 1 << 9,
    ],
)
def test_irq_flags_need_one_data_and_one_action(h: Harness, flags: int) -> None:
    expect_error(set_irqs(h, VFIO_PCI_INTX_IRQ_INDEX, flags, 0, 1), errno.EINVAL)


def test_irq_huge_argsz_is_einval(h: Harness) -> None:
    expect_error(set_irqs(h, VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, b"\1", argsz=0xFFFF_FFFF), errno.EINVAL)


def test_irq_bool_data_must_cover_count(h: Harness) -> None:
    expect_error(set_irqs(h, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 2, b"\1"), errno.EINVAL)


def test_eventfd_count_mismatch_is_einval_and_fds_are_closed(h: Harness) -> None:
    fds = [os.eventfd(0) for _ in range(3)]
    before = open_fd_count()
    expect_error(set_irqs(h, VFIO_PCI_MSIX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 2, fds=fds), errno.EINVAL)
    h.assert_alive()
    assert open_fd_count() == before  # the server closed its received copies
    for fd in fds:
        os.close(fd)


def test_msi_while_msix_is_wired_is_einval(h: Harness) -> None:
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    assert not set_irqs(h, VFIO_PCI_MSIX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 1, fds=[fd]).is_error
    expect_error(set_irqs(h, VFIO_PCI_MSI_IRQ_INDEX, EVENTFD_TRIGGER, 0, 1, fds=[fd]), errno.EINVAL)
    # linux/vfio.h: DATA_NONE|ACTION_TRIGGER with count 0 disables the index.
    assert not set_irqs(h, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0).is_error
    assert not set_irqs(h, VFIO_PCI_MSI_IRQ_INDEX, EVENTFD_TRIGGER, 0, 1, fds=[fd]).is_error
    os.close(fd)


def test_loopback_trigger_and_intx_unmask(h: Harness) -> None:
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    assert not set_irqs(h, VFIO_PCI_INTX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 1, fds=[fd]).is_error
    assert not set_irqs(h, VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, b"\1").is_error
    assert os.eventfd_read(fd) == 1
    # The device raises INTx: one edge, then automasked until UNMASK.
    h.peer.request(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(r.IRQ_RAISE, 0, 4) + b"\1\0\0\0")
    h.peer.request(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(r.IRQ_RAISE, 0, 4) + b"\2\0\0\0")
    assert os.eventfd_read(fd) == 1
    assert not set_irqs(h, VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1).is_error
    assert os.eventfd_read(fd) == 1  # still asserted: fires again on unmask
    os.close(fd)


def test_mask_actions_on_msix_are_refused(h: Harness) -> None:
    expect_error(set_irqs(h, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1), errno.EINVAL)


# -- "VFIO_USER_DMA_MAP" / "VFIO_USER_DMA_UNMAP" ------------------------------------------------


def dma_map(h: Harness, address: int, size: int, *, fd: int | None = None, offset: int = 0, flags: int = RW, argsz: int = 32, fds=None):  # type: ignore[no-untyped-def]
    payload = vfio_user_dma_map.pack(argsz, flags, offset, address, size)
    return h.peer.request(VFIO_USER_DMA_MAP, payload, fds=fds if fds is not None else ([fd] if fd is not None else []))


def test_overlapping_dma_maps_are_eexist(h: Harness) -> None:
    fd = memfd(0x4000)
    assert not dma_map(h, 0x10000, 0x4000, fd=fd).is_error
    expect_error(dma_map(h, 0x12000, 0x4000, fd=fd), errno.EEXIST)
    expect_error(dma_map(h, 0xF000, 0x2000), errno.EEXIST)
    assert not dma_map(h, 0x14000, 0x1000).is_error  # adjacent is fine
    assert len(h.server.dma.windows) == 2
    os.close(fd)


def test_dma_map_checks(h: Harness) -> None:
    fd = memfd(0x2000)
    r_fd, w_fd = os.pipe()
    expect_error(dma_map(h, 0, 0), errno.EINVAL)  # empty
    expect_error(dma_map(h, (1 << 64) - 0x1000, 0x2000), errno.EINVAL)  # wraps
    expect_error(dma_map(h, 0x1000, 0x1000, flags=RW | 0x80), errno.EINVAL)
    expect_error(dma_map(h, 0x1000, 0x4000, fd=fd), errno.EINVAL)  # past the end of the file
    expect_error(dma_map(h, 0x1000, 0x1000, fd=fd, offset=0x800), errno.EINVAL)  # unaligned
    expect_error(dma_map(h, 0x1000, 0x1000, fd=r_fd), errno.EINVAL)  # not a regular file
    expect_error(dma_map(h, 0x1000, 0x1000, fds=[fd, fd]), errno.EINVAL)
    expect_error(dma_map(h, 0x1000, 0x1000, argsz=0xFFFF_FFFF), errno.EINVAL)
    assert h.server.dma.windows == ()
    assert h.device.memory.regions == ()
    for f in (fd, r_fd, w_fd):
        os.close(f)
    h.assert_alive()


def test_dma_map_limit() -> None:
    harness = Harness(max_dma_maps=2)
    harness.peer.negotiate()
    assert not dma_map(harness, 0x1000, 0x1000).is_error
    assert not dma_map(harness, 0x2000, 0x1000).is_error
    expect_error(dma_map(harness, 0x3000, 0x1000), errno.ENOSPC)
    harness.close()


def test_dma_unmap_must_match_exactly_and_echoes_the_entry(h: Harness) -> None:
    fd = memfd(0x2000)
    dma_map(h, 0x10000, 0x2000, fd=fd)
    os.close(fd)
    expect_error(h.peer.request(VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, 0, 0x10000, 0x1000)), errno.ENOENT)
    expect_error(h.peer.request(VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, 4, 0x10000, 0x2000)), errno.EINVAL)
    reply = h.peer.request(VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, 0, 0x10000, 0x2000))
    assert vfio_user_dma_unmap.unpack(reply.payload) == (24, 0, 0x10000, 0x2000)
    assert h.device.memory.regions == ()


def test_device_dma_lands_in_an_fd_window(h: Harness) -> None:
    fd = memfd(0x2000)
    dma_map(h, 0x40000, 0x2000, fd=fd)
    os.pwrite(fd, b"source bytes", 0x100)
    for reg, value, size in ((r.DMA_SRC, 0x40100, 8), (r.DMA_DST, 0x41000, 8), (r.DMA_LEN, 12, 4)):
        h.peer.request(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(reg, 0, size) + value.to_bytes(size, "little"))
    h.peer.request(
        VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(pcidefs.PCI_COMMAND, VFIO_PCI_CONFIG_REGION_INDEX, 2) + b"\x06\x00"
    )
    h.peer.request(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(r.DMA_CMD, 0, 4) + b"\1\0\0\0")
    assert os.pread(fd, 12, 0x1000) == b"source bytes"
    os.close(fd)


def test_client_refusing_dma_read_is_a_device_dma_error(h: Harness) -> None:
    """The device's DMA to an fd-less window goes out as DMA_READ; an error reply is a DMA fault."""
    dma_map(h, 0x8000, 0x1000)
    for reg, value, size in ((r.DMA_SRC, 0x8000, 8), (r.DMA_DST, 0x8800, 8), (r.DMA_LEN, 4, 4)):
        h.peer.request(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(reg, 0, size) + value.to_bytes(size, "little"))
    h.peer.request(
        VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(pcidefs.PCI_COMMAND, VFIO_PCI_CONFIG_REGION_INDEX, 2) + b"\x06\x00"
    )
    h.peer.send(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(r.DMA_CMD, 0, 4) + b"\1\0\0\0")
    request = h.peer.recv()
    assert request is not None and request.command == VFIO_USER_DMA_READ
    assert vfio_user_dma_region_access.unpack(request.payload) == (0x8000, 4)
    h.peer.send(VFIO_USER_DMA_READ, msg_id=request.msg_id, flags=VFIO_USER_F_TYPE_REPLY | 0x20, error_no=errno.EFAULT)
    reply = h.peer.recv()
    assert reply is not None and reply.command == VFIO_USER_REGION_WRITE and not reply.is_error
    status = h.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(r.DMA_STATUS, 0, 4))
    assert status.payload[16:] == r.DMA_STATUS_ERROR.to_bytes(4, "little")


# -- stray descriptors, reset ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "payload"),
    [
        (VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info.pack(16, 0, 0, 0)),
        (VFIO_USER_REGION_READ, vfio_user_region_access.pack(0, 0, 4)),
        (VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, 0, 0, 0x1000)),
        (VFIO_USER_DEVICE_RESET, b""),
        (VFIO_USER_DEVICE_SET_IRQS, vfio_irq_set.pack(20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 1)),
    ],
)
def test_stray_fds_are_einval_and_closed(h: Harness, command: int, payload: bytes) -> None:
    fd = os.eventfd(0)
    before = open_fd_count()
    expect_error(h.peer.request(command, payload, fds=[fd]), errno.EINVAL)
    h.assert_alive()
    assert open_fd_count() == before
    os.close(fd)


def test_more_fds_than_max_msg_fds_is_einval() -> None:
    harness = Harness(max_msg_fds=2)
    harness.peer.negotiate()
    fds = [os.eventfd(0) for _ in range(3)]
    expect_error(set_irqs(harness, VFIO_PCI_MSIX_IRQ_INDEX, EVENTFD_TRIGGER, 0, 2, fds=fds[:3]), errno.EINVAL)
    harness.assert_alive()
    for fd in fds:
        os.close(fd)
    harness.close()


def test_device_reset_resets_the_device(h: Harness) -> None:
    h.peer.request(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(r.SCRATCH, 0, 4) + b"\x09\0\0\0")
    assert not h.peer.request(VFIO_USER_DEVICE_RESET).is_error
    assert h.device.registers["SCRATCH"] == 0
    expect_error(h.peer.request(VFIO_USER_DEVICE_RESET, b"x"), errno.EINVAL)


def test_socket_closed_mid_message_is_survived() -> None:
    harness = Harness()
    harness.peer.negotiate()
    harness.peer.send_raw(vfio_user_header.pack(1, VFIO_USER_REGION_WRITE, 64, 0, 0) + b"partial")
    harness.peer.sock.shutdown(socket.SHUT_WR)
    assert harness.peer.recv() is None
    harness.close()
