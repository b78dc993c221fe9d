"""A testdev served over vfio-user on a socketpair, driven by raw messages (shared by tests)."""

from __future__ import annotations

import os

from devmodels.testdev import PciTestDevice
from passthrough.defs import (
    VFIO_USER_DEVICE_SET_IRQS,
    VFIO_USER_DMA_MAP,
    VFIO_USER_F_DMA_REGION_READ,
    VFIO_USER_F_DMA_REGION_WRITE,
    VFIO_USER_REGION_READ,
    VFIO_USER_REGION_WRITE,
    VFIO_USER_VERSION,
)
from passthrough.layouts import vfio_irq_set, vfio_user_dma_map, vfio_user_region_access, vfio_user_version
from passthrough.user import DmaMemory, VfioUserServer
from passthrough.user.framing import Message
from passthrough.user.testing import RawPeer, ServerThread

__all__ = ["QEMU_PROPOSAL", "RW", "Served", "expect_error", "memfd"]

RW = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE
QEMU_PROPOSAL = (
    b'{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, '
    b'"migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}\0'
)


class Served:
    """A testdev served on a socketpair, with the raw client end."""

    def __init__(self, **server_args: int) -> None:
        self.memory = DmaMemory()
        self.device = PciTestDevice(self.memory)
        self.server = VfioUserServer(self.device, self.memory, **server_args)
        self.connect()

    def connect(self) -> None:
        self.thread = ServerThread(self.server)
        self.peer = RawPeer(self.thread.start())

    def version(self, data: bytes = QEMU_PROPOSAL, minor: int = 0) -> Message:
        return self.peer.request(VFIO_USER_VERSION, vfio_user_version.pack(0, minor) + data)

    def write(self, offset: int, data: bytes, region: int = 0) -> Message:
        return self.peer.request(VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(offset, region, len(data)) + data)

    def read(self, offset: int, count: int, region: int = 0) -> bytes:
        reply = self.peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(offset, region, count))
        assert not reply.is_error, reply
        return reply.payload[vfio_user_region_access.size :]

    def map(self, address: int, size: int, fd: int | None = None, offset: int = 0) -> Message:
        payload = vfio_user_dma_map.pack(32, RW, offset, address, size)
        return self.peer.request(VFIO_USER_DMA_MAP, payload, fds=[fd] if fd is not None else [])

    def set_irqs(self, index: int, flags: int, start: int, count: int, data: bytes = b"", fds=()) -> Message:  # type: ignore[no-untyped-def]
        return self.peer.request(VFIO_USER_DEVICE_SET_IRQS, vfio_irq_set.pack(20 + len(data), flags, index, start, count) + data, fds=fds)

    def close(self) -> None:
        self.peer.close()
        assert self.thread.join()
        assert self.thread.error is None


def expect_error(reply: Message, code: int) -> None:
    assert reply.is_reply and reply.is_error and reply.error_no == code, reply
    assert reply.payload == b""


def memfd(size: int) -> int:
    fd = os.memfd_create("client-ram")
    os.ftruncate(fd, size)
    return fd
