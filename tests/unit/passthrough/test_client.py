"""VfioUserClient against scripted (and hostile) servers."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Callable

import pytest

from devmodels import MemoryRegion
from passthrough.caps import build_chain, sparse_mmap_body
from passthrough.defs import (
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_SET,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_USER_DEVICE_FEATURE,
    VFIO_USER_DEVICE_GET_IRQ_INFO,
    VFIO_USER_DEVICE_GET_REGION_INFO,
    VFIO_USER_DEVICE_SET_IRQS,
    VFIO_USER_DMA_READ,
    VFIO_USER_DMA_WRITE,
    VFIO_USER_F_ERROR,
    VFIO_USER_F_TYPE_REPLY,
    VFIO_USER_MIG_DATA_READ,
    VFIO_USER_MIG_DATA_WRITE,
    VFIO_USER_REGION_READ,
    VFIO_USER_VERSION,
)
from passthrough.errors import VfioUserDisconnectedError, VfioUserError, VfioUserProtocolError
from passthrough.layouts import (
    vfio_device_feature_dma_logging_control,
    vfio_device_feature_dma_logging_range,
    vfio_irq_info,
    vfio_irq_set,
    vfio_region_info,
    vfio_user_device_feature,
    vfio_user_device_info,
    vfio_user_dma_region_access,
    vfio_user_mig_data,
    vfio_user_region_access,
    vfio_user_version,
)
from passthrough.user import VfioUserClient
from passthrough.user.framing import Message
from passthrough.user.negotiate import VersionCapabilities, decode_version, encode_version
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


# -- issue 13: "Message sizes", migration data forms, negotiation, DMA logging --------------------


def _libvfio_user_region_info(shared: int) -> Handler:
    """libvfio-user's answer: a short reply says only argsz (no CAPS flag, no fd)."""

    def handler(peer: RawPeer, m: Message) -> None:
        request = vfio_region_info.unpack(m.payload)
        body = sparse_mmap_body([(0, 0x1000), (0x2000, 0x1000)])
        full, first = build_chain(bytes(32), [(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, body)])
        flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP
        if request.argsz < len(full):
            reply(peer, m, vfio_region_info.pack(len(full), flags, request.index, 0, 0x4000, 0))
        else:
            fixed = vfio_region_info.pack(len(full), flags | VFIO_REGION_INFO_FLAG_CAPS, request.index, first, 0x4000, 0)
            reply(peer, m, fixed + full[32:], fds=[shared])

    return handler


def test_region_info_is_asked_again_whenever_the_reply_needs_more() -> None:
    shared = os.memfd_create("bar1")
    os.ftruncate(shared, 0x4000)
    server = Scripted(_libvfio_user_region_info(shared))
    client = server.client()
    info = client.region_info(1)
    assert info.mmap_areas() == ((0, 0x1000), (0x2000, 0x1000))
    assert [vfio_region_info.unpack(m.payload).argsz for m in server.seen if m.command == VFIO_USER_DEVICE_GET_REGION_INFO] == [32, 0x50]
    mapped = client.region_mmap(1, 0x2000, 0x1000)
    assert mapped is not None  # the region's fd was kept
    mapped.close()
    client.close()
    os.close(shared)
    server.join()


@pytest.mark.parametrize("argsz", [1 << 20, "grows"])
def test_region_info_retry_is_bounded(argsz: int | str) -> None:
    asked: list[int] = []

    def handler(peer: RawPeer, m: Message) -> None:
        request = vfio_region_info.unpack(m.payload)
        asked.append(request.argsz)
        needed = argsz if isinstance(argsz, int) else request.argsz + 8
        reply(peer, m, vfio_region_info.pack(needed, 0, request.index, 0, 0x1000, 0))

    server = Scripted(handler)
    client = server.client()
    with pytest.raises(VfioUserProtocolError):
        client.region_info(0)
    assert len(asked) <= 2
    client.close()
    server.join()


def test_irq_and_device_info_are_asked_again_too() -> None:
    def handler(peer: RawPeer, m: Message) -> None:
        argsz = int.from_bytes(m.payload[:4], "little")
        if m.command == VFIO_USER_DEVICE_GET_IRQ_INFO:
            body = vfio_irq_info.pack(24, 1, 3, 1) + bytes(8)
        else:
            body = vfio_user_device_info.pack(24, 3, 9, 5) + bytes(8)
        reply(peer, m, body if argsz >= 24 else body[:16])

    server = Scripted(handler)
    client = server.client()
    assert client.irq_info(3).count == 1
    assert client.device_info().num_irqs == 5
    assert [int.from_bytes(m.payload[:4], "little") for m in server.seen if m.command != VFIO_USER_VERSION] == [16, 24, 16, 24]
    client.close()
    server.join()


def _migration_server(state: bytes, writes: list[bytes]) -> Handler:
    """A libvfio-user-like migration peer: padded reads, writes need argsz >= 8 + size."""
    sent = [0]

    def handler(peer: RawPeer, m: Message) -> None:
        if m.command == VFIO_USER_DEVICE_FEATURE:
            reply(peer, m, m.payload)
        elif m.command == VFIO_USER_MIG_DATA_READ:
            argsz, size = vfio_user_mig_data.unpack(m.payload)
            chunk = state[sent[0] : sent[0] + size]
            sent[0] += len(chunk)
            reply(peer, m, vfio_user_mig_data.pack(8 + len(chunk), len(chunk)) + chunk + bytes(size - len(chunk)))
        elif m.command == VFIO_USER_MIG_DATA_WRITE:
            argsz, size = vfio_user_mig_data.unpack(m.payload)
            if argsz < 8 + size:
                reply(peer, m, error=errno.EINVAL)  # libvfio-user: "argsz too small"
                return
            writes.append(m.payload[8:])
            reply(peer, m)

    return handler


def test_save_and_load_work_with_libvfio_user_data_forms() -> None:
    state = bytes(range(256)) * 3
    writes: list[bytes] = []
    server = Scripted(_migration_server(state, writes))
    client = server.client()  # max_data_xfer_size 64
    assert client.save_device_state() == state  # padded replies read by their size field
    client.load_device_state(state)
    assert b"".join(writes) == state
    client.close()
    server.join()


@pytest.mark.parametrize(
    "payload",
    [
        vfio_user_mig_data.pack(8 + 65, 65) + bytes(65),  # more than asked
        vfio_user_mig_data.pack(8 + 10, 10) + bytes(4),  # size beyond the data sent
        vfio_user_mig_data.pack(8 + 4, 4) + bytes(100),  # padding beyond the size asked
    ],
)
def test_bad_migration_data_replies_are_refused(payload: bytes) -> None:
    def handler(peer: RawPeer, m: Message) -> None:
        reply(peer, m, m.payload if m.command == VFIO_USER_DEVICE_FEATURE else payload)

    server = Scripted(handler)
    client = server.client()
    with pytest.raises(VfioUserProtocolError):
        client.save_device_state()
    client.close()
    server.join()


def test_proposal_carries_only_what_the_client_supports_and_extra_reply_names_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    version = vfio_user_version.pack(0, 1) + b'{"capabilities":{"max_msg_fds":8,"migration":{"pgsize":4096}}}\0'
    server = Scripted(lambda peer, m: None, version)
    with caplog.at_level(logging.WARNING, "devmodels.passthrough.vfio_user"):
        client = server.client()
    assert "not proposed" in caplog.text and "migration" in caplog.text
    proposal = decode_version(server.seen[0].payload)[2]
    assert proposal.names == {"max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes"}
    assert client.server_caps.max_msg_fds == 8
    client.close()
    server.join()


def test_dma_logging_requests() -> None:
    def handler(peer: RawPeer, m: Message) -> None:
        argsz, flags = vfio_user_device_feature.unpack(m.payload)
        data = m.payload[8:]
        if flags & VFIO_DEVICE_FEATURE_GET:
            reply(peer, m, vfio_user_device_feature.pack(8 + 24 + 8, flags) + data + (0b101).to_bytes(8, "little"))
        else:
            reply(peer, m, m.payload)

    server = Scripted(handler)
    client = server.client()
    assert client.dma_logging_start([(0x1000, 0x4000)], 4096) == 4096
    assert client.dma_logging_report(0x1000, 0x4000) == (0b101).to_bytes(8, "little")
    client.dma_logging_stop()
    start, report, stop = (m for m in server.seen if m.command == VFIO_USER_DEVICE_FEATURE)
    assert start.payload == vfio_user_device_feature.pack(40, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START) + (
        vfio_device_feature_dma_logging_control.pack(4096, 1) + vfio_device_feature_dma_logging_range.pack(0x1000, 0x4000)
    )
    assert vfio_user_device_feature.unpack(report.payload).argsz == 8 + 24 + 8
    assert vfio_user_device_feature.unpack(stop.payload).flags == VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
    client.close()
    server.join()
