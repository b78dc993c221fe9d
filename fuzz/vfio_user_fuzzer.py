#!/usr/bin/env python3
"""Fuzz target: the vfio-user server (``passthrough.user.VfioUserServer``) message parser.

Not an op-stream target: the input is what a hostile client writes on the socket
(``fuzz._stream`` format). Byte 0 picks the served function (even: the PCI test device,
odd: the e1000), on a ``DmaMemory`` so that both fd-backed and message-only DMA windows are
reachable. Each chunk is sent with one ``sendmsg`` on a real ``AF_UNIX`` socketpair, its
descriptors as ``SCM_RIGHTS``; the client then shuts its side down and ``serve`` runs to
the end of the stream in this thread (socket buffers are enlarged so replies never block).
The server accepts at most 8 descriptors per message, so the ninth is cut short
(``MSG_CTRUNC``).

Oracles, besides ``Guard``'s (nothing escapes ``serve``, no hang, bounded heap):

- ``protocol``: everything the server sent parses as vfio-user messages, carries no
  descriptors, and is either a reply or a server-to-client DMA_READ/DMA_WRITE command; an
  error reply carries an errno;
- ``reset``: a second client then negotiates and reads the vendor/device ID through
  REGION_READ of config space (the device outlives a disconnect, vfio-user.rst);
- ``fd-leak``: after both sessions every descriptor the input brought is closed
  (disconnect rule 6).

OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    import array
    import socket
    from collections.abc import Callable, Sequence
    from typing import Any

    from devmodels.backends import LoopbackBackend
    from devmodels.e1000 import E1000
    from devmodels.testdev import PciTestDevice
    from devmodels.testdev import regs as t
    from fuzz._execute import Guard
    from fuzz._rig import Finding
    from fuzz._stream import Chunk, Descriptors, check_fd_leak, decode_stream, encode_stream, open_fds, store
    from passthrough import defs as v
    from passthrough.layouts import (
        vfio_device_feature_dma_logging_control,
        vfio_device_feature_dma_logging_report,
        vfio_irq_info,
        vfio_irq_set,
        vfio_region_info,
        vfio_user_device_feature,
        vfio_user_device_info,
        vfio_user_dma_map,
        vfio_user_dma_region_access,
        vfio_user_dma_unmap,
        vfio_user_header,
        vfio_user_mig_data,
        vfio_user_region_access,
        vfio_user_version,
        vfio_user_write_multi_count,
        vfio_user_write_multi_entry,
    )
    from passthrough.user import DmaMemory, MessageSocket, VersionCapabilities, VfioUserFramingError, VfioUserServer, encode_version
    from passthrough.errors import VfioUserDisconnectedError

# Every input is a hostile client, so the server's refusal log (a WARNING per refusal, the
# first few of a kind per connection) would flood stderr; the oracles judge the session.
logging.getLogger("devmodels.passthrough.vfio_user").setLevel(logging.CRITICAL)

_BUFFER = 32 << 20  # SO_SNDBUFFORCE: replies never block the server on the unread client side
_MAX_FDS = 8
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # asm-generic/socket.h; not exported by the socket module


def _socketpair() -> tuple[socket.socket, socket.socket]:
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (client, server):
        for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, _BUFFER)
            except OSError:  # not root: the capped size still fits every seed's replies
                sock.setsockopt(socket.SOL_SOCKET, plain, _BUFFER)
    return client, server


def _send(sock: socket.socket, data: bytes, fds: Sequence[int]) -> None:
    try:
        if fds:
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        elif data:
            sock.sendall(data)
    except OSError:
        pass  # the sender's side of the fuzz input: nothing to test here
    finally:
        for fd in fds:
            os.close(fd)


def _replies(client: socket.socket, what: str) -> list[Any]:
    """Everything the server sent (the ``protocol`` oracle)."""
    client.setblocking(False)
    conn = MessageSocket(client, max_payload=1 << 24, max_fds=16)
    out = []
    while True:
        try:
            message = conn.recv()
        except BlockingIOError:
            break
        except (VfioUserFramingError, VfioUserDisconnectedError) as exc:
            if isinstance(exc, VfioUserDisconnectedError) and isinstance(exc.__cause__, (BlockingIOError, ConnectionResetError)):
                break  # all read; or the server closed with input unread (its right: ECONNRESET here)
            raise Finding("protocol", f"{what}: the server's stream does not parse: {exc}") from exc
        if message is None:
            break
        message.close_fds()
        if message.fds:
            raise Finding("protocol", f"{what}: the server sent {len(message.fds)} descriptors")
        if not message.is_reply and message.command not in (v.VFIO_USER_DMA_READ, v.VFIO_USER_DMA_WRITE):
            raise Finding("protocol", f"{what}: the server sent command {message.command}")
        if message.is_reply and message.is_error and not message.error_no:
            raise Finding("protocol", f"{what}: error reply to command {message.command} without an errno")
        out.append(message)
    return out


def _make(selector: int) -> tuple[Any, DmaMemory, list[Any]]:
    memory = DmaMemory()
    if selector & 1:
        wire, peer = LoopbackBackend.pair(capacity=8)
        return E1000(memory, wire, msi=True), memory, [wire, peer]
    return PciTestDevice(memory), memory, []


def _session(server: VfioUserServer, chunks: Sequence[Chunk], guard: Guard, what: str,
             trace: Callable[[str], None] | None, fds: Descriptors) -> list[Any]:
    """One client: the chunks are all sent first, then the server runs to the end of them.

    RAM stores land before the server reads anything, so a store chunk anywhere in the
    input stands for what the client's guest wrote before the server looked.
    """
    client, server_sock = _socketpair()
    try:
        for index, chunk in enumerate(chunks):
            if chunk.store:
                if trace is not None:
                    trace(f"{index:4d} guest RAM store {chunk.data[:4][::-1].hex()}: {chunk.data[4:36].hex()}")
                fds.store(chunk.data)
                continue
            if trace is not None:
                trace(f"{index:4d} sendmsg {len(chunk.data)} bytes {chunk.data[:48].hex()} fds={list(chunk.fds)}")
            _send(client, chunk.data, [fds.make(kind) for kind in chunk.fds])
        client.shutdown(socket.SHUT_WR)
        guard.call(lambda: server.serve(server_sock), what)
        replies = _replies(client, what)
        if trace is not None:
            for reply in replies:
                kind = "reply" if reply.is_reply else "request"
                trace(f"     {kind} id={reply.msg_id} command={reply.command} errno={reply.error_no} {reply.payload[:32].hex()}")
        return replies
    finally:
        client.close()
        server_sock.close()


def _header(msg_id: int, command: int, payload: bytes, flags: int = v.VFIO_USER_F_TYPE_COMMAND) -> bytes:
    return vfio_user_header.pack(msg_id, command, vfio_user_header.size + len(payload), flags, 0) + payload


def _health(server: VfioUserServer, ids: int, guard: Guard) -> None:
    chunks = [
        Chunk(_header(1, v.VFIO_USER_VERSION, encode_version(v.VFIO_USER_MAJOR, v.VFIO_USER_MINOR, VersionCapabilities()))),
        Chunk(_header(2, v.VFIO_USER_REGION_READ, vfio_user_region_access.pack(0, v.VFIO_PCI_CONFIG_REGION_INDEX, 4))),
    ]
    replies = _session(server, chunks, guard, "a second client after the stream", None, Descriptors())
    read = [r for r in replies if r.msg_id == 2 and r.is_reply]
    if not read or read[0].is_error or read[0].payload[vfio_user_region_access.size :] != ids.to_bytes(4, "little"):
        raise Finding("reset", f"a new client cannot read the device IDs: {read!r}")


def execute_input(
    data: bytes,
    *,
    op_seconds: float = 2.0,
    check_memory: bool = False,
    memory_limit: int = 64 << 20,
    trace: Callable[[str], None] | None = None,
) -> None:
    """Run one input with every oracle (module docstring); raise ``Finding``."""
    selector, chunks = decode_stream(data)
    before = open_fds()
    function, memory, backends = _make(selector)
    ids = function.config_read(0, 4)
    server = VfioUserServer(function, memory, max_msg_fds=_MAX_FDS)
    fds = Descriptors()
    if trace is not None:
        trace(f"serving {'e1000' if selector & 1 else 'testdev'}, {len(chunks)} chunks")
    try:
        with Guard(op_seconds, check_memory, memory_limit) as guard:
            guard.mark_memory()
            _session(server, chunks, guard, "the fuzzed session", trace, fds)
            guard.check_memory("the end of the session")
            _health(server, ids, guard)
    finally:
        fds.close()
        memory.close()
        for backend in backends:
            backend.close()
    check_fd_leak(before, "after both sessions")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    execute_input(data)


# -- seeds ----------------------------------------------------------------------------------

_IDS = iter(range(1, 1 << 16))


def _cmd(command: int, payload: bytes = b"", fds: tuple[int, ...] = (), flags: int = v.VFIO_USER_F_TYPE_COMMAND) -> Chunk:
    return Chunk(_header(next(_IDS) & 0xFFFF, command, payload, flags), fds)


def _version() -> Chunk:
    caps = VersionCapabilities(max_msg_fds=8, max_data_xfer_size=4096)
    return _cmd(v.VFIO_USER_VERSION, encode_version(v.VFIO_USER_MAJOR, v.VFIO_USER_MINOR, caps))


def _region_write(region: int, offset: int, value: int, size: int = 4) -> Chunk:
    return _cmd(v.VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(offset, region, size) + value.to_bytes(size, "little"))


def _region_read(region: int, offset: int, size: int = 4) -> Chunk:
    return _cmd(v.VFIO_USER_REGION_READ, vfio_user_region_access.pack(offset, region, size))


def _dma_map(address: int, size: int, fd_kind: int | None, offset: int = 0) -> Chunk:
    flags = v.VFIO_USER_F_DMA_REGION_READ | v.VFIO_USER_F_DMA_REGION_WRITE
    payload = vfio_user_dma_map.pack(vfio_user_dma_map.size, flags, offset, address, size)
    return _cmd(v.VFIO_USER_DMA_MAP, payload, () if fd_kind is None else (fd_kind,))


def _dma(src: int, dst: int, length: int) -> list[Chunk]:
    return [
        _region_write(v.VFIO_PCI_CONFIG_REGION_INDEX, 4, 0b110, 2),  # memory decode, bus master
        _region_write(0, t.DMA_SRC, src, 8), _region_write(0, t.DMA_DST, dst, 8),
        _region_write(0, t.DMA_LEN, length), _region_write(0, t.DMA_CMD, t.DMA_CMD_START), _region_read(0, t.DMA_STATUS),
    ]


def seeds() -> dict[str, bytes]:
    """The committed seed corpus (``python -m fuzz seeds vfio_user``)."""
    global _IDS
    _IDS = iter(range(1, 1 << 16))
    info = [
        _version(),
        _cmd(v.VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info.pack(vfio_user_device_info.size, 0, 0, 0)),
        *[_cmd(v.VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info.pack(vfio_region_info.size, 0, i, 0, 0, 0)) for i in (0, 2, 7)],
        *[_cmd(v.VFIO_USER_DEVICE_GET_IRQ_INFO, vfio_irq_info.pack(vfio_irq_info.size, 0, i, 0)) for i in (0, 2)],
        _region_read(v.VFIO_PCI_CONFIG_REGION_INDEX, 0, 64),
        _region_write(v.VFIO_PCI_CONFIG_REGION_INDEX, 4, 0b110, 2),
        _region_read(0, t.ID),
    ]
    msix = v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER
    irqs = [
        _cmd(v.VFIO_USER_DEVICE_SET_IRQS, vfio_irq_set.pack(vfio_irq_set.size, msix, v.VFIO_PCI_MSIX_IRQ_INDEX, 0, 2), (2, 2)),
        _cmd(v.VFIO_USER_DEVICE_SET_IRQS, vfio_irq_set.pack(vfio_irq_set.size, msix, v.VFIO_PCI_INTX_IRQ_INDEX, 0, 1), (2,)),
        _region_write(0, t.IRQ_RAISE, 1),
        _cmd(v.VFIO_USER_DEVICE_SET_IRQS, vfio_irq_set.pack(vfio_irq_set.size + 1, v.VFIO_IRQ_SET_DATA_BOOL
                                                              | v.VFIO_IRQ_SET_ACTION_MASK, 0, 0, 1) + b"\1"),
        _cmd(v.VFIO_USER_DEVICE_RESET),
    ]
    # message-only window: the device's DMA goes out as DMA_READ (id 1) and DMA_WRITE (id 2),
    # both answered in-stream after the command that starts it
    read_reply = _header(1, v.VFIO_USER_DMA_READ, vfio_user_dma_region_access.pack(0x200000, 16) + b"R" * 16,
                         v.VFIO_USER_F_TYPE_REPLY)
    write_reply = _header(2, v.VFIO_USER_DMA_WRITE, vfio_user_dma_region_access.pack(0x200100, 16),
                          v.VFIO_USER_F_TYPE_REPLY)
    remote = [_dma_map(0x200000, 0x1000, None), *_dma(0x200000, 0x200100, 16)[:5], Chunk(read_reply),
              Chunk(write_reply), _region_read(0, t.DMA_STATUS)]
    migrate = [
        _cmd(v.VFIO_USER_DEVICE_FEATURE, vfio_user_device_feature.pack(16, v.VFIO_DEVICE_FEATURE_GET
                                                                          | v.VFIO_DEVICE_FEATURE_MIGRATION) + bytes(8)),
        _cmd(v.VFIO_USER_DEVICE_FEATURE, vfio_user_device_feature.pack(16, v.VFIO_DEVICE_FEATURE_SET
                                                                          | v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
             + (v.VFIO_DEVICE_STATE_STOP).to_bytes(4, "little") + bytes(4)),
        _cmd(v.VFIO_USER_DEVICE_FEATURE, vfio_user_device_feature.pack(16, v.VFIO_DEVICE_FEATURE_SET
                                                                          | v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
             + (v.VFIO_DEVICE_STATE_STOP_COPY).to_bytes(4, "little") + bytes(4)),
        _cmd(v.VFIO_USER_MIG_DATA_READ, vfio_user_mig_data.pack(vfio_user_mig_data.size + 4096, 4096)),
    ]
    # QEMU 11.1's proposal (write_multiple), its ERR notifier, then DMA logging of every
    # window, a device DMA, a report, WRITE_MULTI and DMA_UNMAP ALL.
    qemu_version = _cmd(v.VFIO_USER_VERSION, vfio_user_version.pack(0, 0) + b'{"capabilities":{"pgsizes":4096,'
                        b'"max_msg_fds":16,"max_dma_maps":65535,"max_data_xfer_size":1048576,"write_multiple":true}}\0')
    logging_start = vfio_user_device_feature.pack(24, v.VFIO_DEVICE_FEATURE_SET | v.VFIO_DEVICE_FEATURE_DMA_LOGGING_START)
    logging_report = vfio_user_device_feature.pack(40, v.VFIO_DEVICE_FEATURE_GET | v.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT)
    multi = vfio_user_write_multi_count.pack(2) + vfio_user_write_multi_entry.pack(t.SCRATCH, 0, 4, bytes(8)) + (
        vfio_user_write_multi_entry.pack(t.DMA_SRC, 0, 8, (0x100).to_bytes(8, "little")))
    qemu = [
        qemu_version,
        _cmd(v.VFIO_USER_DEVICE_SET_IRQS, vfio_irq_set.pack(vfio_irq_set.size, msix, v.VFIO_PCI_ERR_IRQ_INDEX, 0, 1), (2,)),
        _dma_map(0, 1 << 16, 0),
        _cmd(v.VFIO_USER_DEVICE_FEATURE, logging_start + vfio_device_feature_dma_logging_control.pack(4096, 0)),
        *_dma(0x100, 0x2000, 64),
        _cmd(v.VFIO_USER_DEVICE_FEATURE, logging_report + vfio_device_feature_dma_logging_report.pack(0, 1 << 16, 4096)),
        _cmd(v.VFIO_USER_REGION_WRITE_MULTI, multi),
        _cmd(v.VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, v.VFIO_DMA_UNMAP_FLAG_ALL, 0, 0)),
    ]
    hostile = [
        _cmd(v.VFIO_USER_REGION_READ, vfio_user_region_access.pack(0, 0, 4)),  # before VERSION
        _version(),
        _version(),  # twice
        _cmd(v.VFIO_USER_DEVICE_GET_INFO, b"", (2, 3)),  # stray fds
        _cmd(v.VFIO_USER_DMA_READ, bytes(16)),  # wrong direction
        _cmd(77, b"x", flags=v.VFIO_USER_F_TYPE_REPLY),  # unsolicited reply
        _cmd(v.VFIO_USER_DMA_MAP, bytes(32), (0, 1, 2, 3, 4, 0, 1, 2, 3)),  # nine fds: cut short
        _cmd(v.VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(vfio_user_dma_unmap.size, 0, 0, 1 << 16)),
        Chunk(vfio_user_header.pack(9, v.VFIO_USER_REGION_READ, 8, 0, 0)),  # msg_size below the header
    ]
    return {
        "testdev-info": encode_stream(0, info),
        "testdev-dma-fd-window": encode_stream(0, [*info[:1], _dma_map(0, 1 << 16, 0), store(0x100, b"DMA!" * 16),
                                                   *_dma(0x100, 0x2000, 64),
                                                   _cmd(v.VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(24, 0, 0, 1 << 16))]),
        "testdev-dma-message-window": encode_stream(0, [info[0], *remote]),
        "testdev-irqs": encode_stream(0, [info[0], *irqs]),
        "testdev-migration": encode_stream(0, [info[0], *migrate]),
        "testdev-qemu-logging-multi": encode_stream(0, qemu),
        "hostile": encode_stream(0, hostile),
        "e1000-info-regions": encode_stream(1, [*info[:-1], _region_read(0, 0x8), _region_write(0, 0xD0, 0x9D),
                                               _dma_map(0, 1 << 20, 5), _region_write(1, 0, 0x8), _region_read(1, 4)]),
    }


if __name__ == "__main__":
    fuzz_main(TestOneInput)
