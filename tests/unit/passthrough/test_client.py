"""VfioUserClient against scripted (and hostile) servers."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable

import pytest

from devmodels import MemoryRegion
from passthrough.caps import build_chain, sparse_mmap_body
from passthrough.defs import (
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_USER_DEVICE_GET_REGION_INFO,
    VFIO_USER_DEVICE_SET_IRQS,
    VFIO_USER_DMA_READ,
    VFIO_USER_DMA_WRITE,
    VFIO_USER_F_ERROR,
    VFIO_USER_F_TYPE_REPLY,
    VFIO_USER_REGION_READ,
    VFIO_USER_VERSION,
)
from passthrough.errors import VfioUserDisconnectedError, VfioUserError, VfioUserProtocolError
from passthrough.layouts import vfio_irq_set, vfio_region_info, vfio_user_dma_region_access, vfio_user_region_access
from passthrough.user import VfioUserClient
from passthrough.user.framing import Message
from passthrough.user.negotiate import VersionCapabilities, encode_version
from passthrough.user.testing import RawPeer

REPLY = VFIO_USER_F_TYPE_REPLY
Handler = Callable[[RawPeer, Message], None]


class Scripted:
    def __init__(self, handler: Handler, version: bytes | None = None) -> None:
        client_sock, server_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.peer = RawPeer(server_sock)
        self.handler = handler
        self.version = version if version is not None else encode_version(0, 1, VersionCapabilities(max_msg_fds=2, max_data_xfer_size=64))
        self.seen: list[Message] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.client_sock = client_sock

    def _run(self) -> None:
        try:
            while True:
                message = self.peer.recv()
                if message is None:
                    return
                self.seen.append(message)
                if message.command == VFIO_USER_VERSION:
                    self.peer.send(VFIO_USER_VERSION, self.version, msg_id=message.msg_id, flags=REPLY)
                    continue
                self.handler(self.peer, message)
        except Exception:
            return
        finally:
            self.peer.close()

    def client(self) -> VfioUserClient:
        return VfioUserClient(self.client_sock, timeout=10)

    def join(self) -> None:
        self.thread.join(10)


def reply(peer: RawPeer, message: Message, payload: bytes = b"", *, error: int = 0, fds=()) -> None:  # type: ignore[no-untyped-def]
    flags = REPLY | (VFIO_USER_F_ERROR if error else 0)
    peer.send(message.command, payload, msg_id=message.msg_id, flags=flags, error_no=error, fds=fds)


@pytest.mark.parametrize(
    "version",
    [
        encode_version(1, 0, VersionCapabilities()),
        encode_version(0, 9, VersionCapabilities()),
        encode_version(0, 1, VersionCapabilities(twin_socket=True)),
        encode_version(0, 1, VersionCapabilities(max_data_xfer_size=0)),
        b"\0",
        encode_version(0, 1, VersionCapabilities())[:4] + b"{bad json",
    ],
)
def test_bad_version_replies_are_refused(version: bytes) -> None:
    server = Scripted(lambda peer, m: None, version)
    with pytest.raises(VfioUserProtocolError):
        server.client()
    server.client_sock.close()
    server.join()


def test_error_reply_becomes_vfio_user_error() -> None:
    server = Scripted(lambda peer, m: reply(peer, m, error=errno.EFAULT))
    client = server.client()
    with pytest.raises(VfioUserError) as info:
        client.region_read(0, 0, 4)
    assert info.value.errno == errno.EFAULT and "REGION_READ" in str(info.value)
    client.close()
    server.join()


@pytest.mark.parametrize(
    "payload",
    [
        vfio_user_region_access.pack(4, 0, 4) + b"abcd",  # wrong offset echoed
        vfio_user_region_access.pack(0, 1, 4) + b"abcd",  # wrong region
        vfio_user_region_access.pack(0, 0, 4) + b"ab",  # short data
        vfio_user_region_access.pack(0, 0, 4) + b"abcdef",  # extra data
        b"\0" * 8,  # truncated
    ],
)
def test_mismatched_region_read_replies_are_protocol_errors(payload: bytes) -> None:
    server = Scripted(lambda peer, m: reply(peer, m, payload))
    client = server.client()
    with pytest.raises(VfioUserProtocolError):
        client.region_read(0, 0, 4)
    client.close()
    server.join()


def test_transfers_are_split_at_the_server_limit() -> None:
    def handler(peer: RawPeer, m: Message) -> None:
        access = vfio_user_region_access.unpack(m.payload)
        reply(peer, m, m.payload[:16] + bytes([access.offset & 0xFF]) * access.count)

    server = Scripted(handler)
    client = server.client()
    data = client.region_read(0, 0, 150)
    assert data == bytes([0]) * 64 + bytes([64]) * 64 + bytes([128]) * 22
    client.close()
    server.join()


def test_eventfds_are_split_at_max_msg_fds() -> None:
    server = Scripted(lambda peer, m: (m.close_fds(), reply(peer, m)))
    client = server.client()
    fds = [os.eventfd(0) for _ in range(5)]
    client.set_irqs(2, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 5, fds=fds)
    calls = [m for m in server.seen if m.command == VFIO_USER_DEVICE_SET_IRQS]
    assert [(vfio_irq_set.unpack(m.payload).start, vfio_irq_set.unpack(m.payload).count, len(m.fds)) for m in calls] == [
        (0, 2, 2), (2, 2, 2), (4, 1, 1)
    ]
    for fd in fds:
        os.close(fd)
    client.close()
    server.join()


def test_region_info_with_sparse_mmap_and_fd() -> None:
    shared = os.memfd_create("bar")
    os.ftruncate(shared, 0x4000)
    os.pwrite(shared, b"MMAP", 0x3000)

    def handler(peer: RawPeer, m: Message) -> None:
        request = vfio_region_info.unpack(m.payload)
        flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS
        body = sparse_mmap_body([(0x3000, 0x1000)])
        full, first = build_chain(bytes(32), [(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, body)])
        fixed = vfio_region_info.pack(len(full), flags, request.index, first, 0x4000, 0)
        if request.argsz < len(full):
            reply(peer, m, fixed)  # argsz tells the client to ask again
        else:
            reply(peer, m, fixed + full[32:], fds=[shared])

    server = Scripted(handler)
    client = server.client()
    info = client.region_info(0)
    assert info.mmap_areas() == ((0x3000, 0x1000),)
    assert [vfio_region_info.unpack(m.payload).argsz for m in server.seen if m.command == VFIO_USER_DEVICE_GET_REGION_INFO] == [32, 64]
    mapped = client.region_mmap(0, 0x3000, 0x1000)
    assert mapped is not None and mapped[:4] == b"MMAP"
    mapped.close()
    assert client.region_mmap(0, 0x3000, 0x2000) is None  # past the region
    client.close()
    os.close(shared)
    server.join()


def test_region_info_with_looping_caps_is_refused() -> None:
    def handler(peer: RawPeer, m: Message) -> None:
        fixed = vfio_region_info.pack(40, VFIO_REGION_INFO_FLAG_CAPS, 0, 32, 0x1000, 0)
        reply(peer, m, fixed + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (32).to_bytes(4, "little"))

    server = Scripted(handler)
    client = server.client()
    with pytest.raises(VfioUserProtocolError, match="loops"):
        client.region_info(0)
    client.close()
    server.join()


def test_server_dma_is_confined_to_mapped_windows() -> None:
    results: dict[str, Message] = {}

    def handler(peer: RawPeer, m: Message) -> None:
        if m.command != VFIO_USER_REGION_READ:
            m.close_fds()
            reply(peer, m)
            return
        # While the client waits for this reply, DMA into and around its windows.
        probes = {
            "read_ok": (VFIO_USER_DMA_READ, vfio_user_dma_region_access.pack(0x10004, 4)),
            "write_ok": (VFIO_USER_DMA_WRITE, vfio_user_dma_region_access.pack(0x10008, 2) + b"hi"),
            "outside": (VFIO_USER_DMA_READ, vfio_user_dma_region_access.pack(0x20000, 4)),
            "straddle": (VFIO_USER_DMA_READ, vfio_user_dma_region_access.pack(0x10FFE, 4)),
            "read_only": (VFIO_USER_DMA_WRITE, vfio_user_dma_region_access.pack(0x30000, 1) + b"x"),
            "too_big": (VFIO_USER_DMA_READ, vfio_user_dma_region_access.pack(0x10000, 1 << 30)),
            "wrong_len": (VFIO_USER_DMA_WRITE, vfio_user_dma_region_access.pack(0x10000, 4) + b"x"),
            "bad_cmd": (VFIO_USER_REGION_READ, b""),
        }
        for name, (command, payload) in probes.items():
            peer.send(command, payload)
            answer = peer.recv()
            assert answer is not None
            results[name] = answer
        reply(peer, m, m.payload + b"done")

    server = Scripted(handler)
    client = server.client()
    ram = MemoryRegion.memfd(0x10000, 0x1000)
    ram.buffer[4:8] = b"DATA"
    rom = MemoryRegion.from_bytearray(0x30000, 0x1000)
    client.dma_map(ram, 0x10000)
    client.dma_map(rom, 0x30000, writable=False)
    assert client.region_read(0, 0, 4) == b"done"
    assert results["read_ok"].payload[16:] == b"DATA" and not results["read_ok"].is_error
    assert bytes(ram.buffer[8:10]) == b"hi"
    assert {name: results[name].error_no for name in ("outside", "straddle", "read_only", "too_big", "wrong_len", "bad_cmd")} == {
        "outside": errno.EFAULT,
        "straddle": errno.EFAULT,
        "read_only": errno.EPERM,
        "too_big": errno.E2BIG,
        "wrong_len": errno.EINVAL,
        "bad_cmd": errno.EINVAL,
    }
    client.close()
    ram.close()
    server.join()


def test_service_serves_dma_between_requests() -> None:
    def handler(peer: RawPeer, m: Message) -> None:
        m.close_fds()
        if not m.is_reply:
            reply(peer, m)

    server = Scripted(handler)
    client = server.client()
    ram = MemoryRegion.from_bytearray(0, 0x1000)
    client.dma_map(ram, 0)
    assert client.service() == 0
    server.peer.send(VFIO_USER_DMA_WRITE, vfio_user_dma_region_access.pack(0x10, 3) + b"abc")
    assert client.service() == 1  # a socketpair delivers at send time; service() never blocks
    assert bytes(ram.buffer[0x10:0x13]) == b"abc"
    client.close()
    server.join()
    assert any(m.is_reply and m.command == VFIO_USER_DMA_WRITE and not m.is_error for m in server.seen)


def test_server_closing_raises_disconnected() -> None:
    def handler(peer: RawPeer, m: Message) -> None:
        peer.sock.shutdown(socket.SHUT_RDWR)

    server = Scripted(handler)
    client = server.client()
    with pytest.raises(VfioUserDisconnectedError):
        client.region_read(0, 0, 4)
    client.close()
    server.join()
