#!/usr/bin/env python3
"""Fuzz target: the vhost-user back-end protocol (``virtio.vhost_user``), sans-IO part.

Not an op-stream target: the input is what a hostile front-end sends (``fuzz._stream``
format). Byte 0 picks the device (even: virtio-blk on a 1 MiB memory disk, odd: the echo
device). Each chunk is one ``recvmsg`` fed to ``MessageReader.feed`` with real descriptors
(memfds become the memory table, eventfds kick/call/err descriptors); every message goes
to ``VhostUserSession.handle``. A chunk flagged ``0x80`` is followed by what the event loop
does when kick eventfds fire: ``kick`` every running ring, ``run_busy``, ``poll``, backend
completions, ``flush_calls``. Guest RAM store chunks write into the first memfd (the shared
guest RAM), which is how an input lays out rings and requests. A fatal ``ProtocolError``
ends the connection, as the server does.

Oracles, besides ``Guard``'s: ``protocol`` (a reply answers the request it follows, has
the reply flag and version 1, and its size field matches), ``reset`` (after the session
closes, a new session on the same device answers GET_FEATURES with the offered set) and
``fd-leak`` (every descriptor the input brought is closed once the session is).

OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    import functools
    import struct
    from collections.abc import Callable
    from typing import Any

    from devmodels import GuestMemory
    from devmodels.fds import close_fds
    from devmodels.backends import MemoryDiskBackend
    from fuzz._echo import make_echo
    from fuzz._execute import Guard
    from fuzz._rig import Finding
    from fuzz._stream import Chunk, Descriptors, check_fd_held, check_fd_leak, decode_stream, encode_stream, open_fds, store
    from virtio.blk import VirtioBlkDevice
    from virtio.defs import VIRTIO_F_VERSION_1
    from virtio.testing import RingLayout
    from virtio.vhost_user import (
        MessageReader,
        ProtocolError,
        Region,
        SessionTransport,
        VhostUserSession,
        encode_config,
        encode_inflight,
        encode_log,
        encode_memory,
        encode_u64,
        encode_vring_addr,
        encode_vring_state,
    )
    from virtio.vhost_user import defs as h
    from virtio.vhost_user.layouts import HEADER

_USER = 0x7F00_0000_0000  # the front-end's user address of guest RAM in the seeds
_HDR = struct.Struct("<IIQ")


class _Backend:
    """The device, its transport and the current session."""

    def __init__(self, selector: int) -> None:
        self.memory = GuestMemory()
        self.disk: Any = None
        if selector & 1:
            self.device: Any = make_echo(self.memory)
        else:
            self.disk = MemoryDiskBackend(1 << 20)
            self.device = VirtioBlkDevice(self.memory, self.disk, num_queues=2, queue_size=64)
        self.transport = SessionTransport()
        self.device.attach(self.transport)
        self.session = self.open()
        self.reader = MessageReader()

    def open(self) -> VhostUserSession:
        session = VhostUserSession(self.device)
        self.transport.session = session
        return session

    def events(self) -> None:
        """What the event loop does when kick descriptors fire."""
        session = self.session
        for index in list(session.watched().values()):
            session.kick(index)
        session.run_busy()
        session.poll()
        process = getattr(self.device, "process_completions", None)
        if callable(process):
            process()
        session.flush_calls()

    def close(self) -> None:
        self.reader.close()
        self.session.close()
        if self.disk is not None:
            self.disk.close()


def _check_reply(request: int, reply: bytes | None) -> None:
    if reply is None:
        return
    if len(reply) < HEADER.size:
        raise Finding("protocol", f"request {request}: reply {reply.hex()} is shorter than a header")
    answered, flags, size = HEADER.unpack_from(reply)
    if answered != request or flags & h.VHOST_USER_VERSION_MASK != h.VHOST_USER_VERSION \
            or not flags & h.VHOST_USER_REPLY_MASK or len(reply) != HEADER.size + size:
        raise Finding("protocol", f"request {request}: malformed reply {reply.hex()}")


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
    backend = _Backend(selector)
    fds = Descriptors()
    ended: list[str] = []
    if trace is not None:
        trace(f"serving {'echo' if selector & 1 else 'virtio-blk'}, {len(chunks)} chunks")
    try:
        with Guard(op_seconds, check_memory, memory_limit) as guard:
            guard.mark_memory()
            for index, chunk in enumerate(chunks):
                if chunk.store:
                    if trace is not None:
                        trace(f"{index:4d} guest RAM store {chunk.data[:4][::-1].hex()}: {chunk.data[4:36].hex()}")
                    fds.store(chunk.data)
                    continue
                sent = [fds.make(kind) for kind in chunk.fds]
                if trace is not None:
                    trace(f"{index:4d} recvmsg {len(chunk.data)} bytes {chunk.data[:48].hex()} fds={list(chunk.fds)}")
                if not _chunk(backend, chunk, sent, guard, index, trace, ended):
                    break
                if chunk.truncated:
                    guard.call(backend.events, f"chunk {index} (kicks)")
                guard.check_memory(f"chunk {index}")
                if sent:
                    check_fd_held(before, f"chunk {index}")
            guard.call(backend.session.close, "closing the session")
            session = backend.open()
            reply = guard.call(functools.partial(_get_features, session), "GET_FEATURES on a new session")
            if reply != session.offered_features:
                raise Finding("reset", f"a new session answers GET_FEATURES with {reply}")
    finally:
        backend.close()
        fds.close()
    check_fd_leak(before, "after closing the session")


def _get_features(session: VhostUserSession) -> int | None:
    reader = MessageReader()
    (message,) = reader.feed(HEADER.pack(h.VHOST_USER_GET_FEATURES, h.VHOST_USER_VERSION, 0))
    reply = session.handle(message)
    return None if reply is None or len(reply) != HEADER.size + 8 else int.from_bytes(reply[HEADER.size :], "little")


def _chunk(backend: _Backend, chunk: Chunk, sent: list[int], guard: Guard, index: int,
           trace: Callable[[str], None] | None, ended: list[str]) -> bool:
    """Feed one chunk; ``False`` once the connection ended (a fatal protocol error)."""
    ended[:] = ["feed"]
    messages: list[Any] = []
    try:
        messages = guard.call(functools.partial(backend.reader.feed, chunk.data, sent), f"chunk {index} (feed)")
        ended[:] = ["handle"]
        while messages:
            message = messages.pop(0)
            if trace is not None:
                trace(f"     message {message.name} flags={message.flags:#x} payload={message.payload[:32].hex()} fds={len(message.fds)}")
            reply = guard.call(functools.partial(backend.session.handle, message), f"chunk {index} {message.name}")
            close_fds(backend.session.take_reply_fds())  # as the server does once it sent them
            if trace is not None:
                trace(f"     reply {reply.hex() if reply is not None else None}")
            _check_reply(message.request, reply)
    except Finding as finding:
        if isinstance(finding.__cause__, ProtocolError) and finding.__cause__.fatal:
            if trace is not None:
                trace(f"     fatal: {finding.__cause__}; connection closed")
            # As VhostUserBackend does: messages framed after the fatal one are never
            # handled, and their descriptors are the connection's to close.
            for later in messages:
                later.close_fds()
            return False
        raise
    return True


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    execute_input(data)


# -- seeds ----------------------------------------------------------------------------------


def _msg(request: int, payload: bytes = b"", fds: tuple[int, ...] = (), *, need_reply: bool = False,
         kick: bool = False) -> Chunk:
    flags = h.VHOST_USER_VERSION | (h.VHOST_USER_NEED_REPLY_MASK if need_reply else 0)
    return Chunk(HEADER.pack(request, flags, len(payload)) + payload, fds, truncated=kick)


def _desc(addr: int, length: int, flags: int, next_: int) -> bytes:
    return struct.pack("<QIHH", addr, length, flags, next_)


def _bring_up(features: int, protocol: int) -> list[Chunk]:
    layout = RingLayout.at(0x1000, 8, False)
    return [
        _msg(h.VHOST_USER_SET_OWNER),
        _msg(h.VHOST_USER_GET_FEATURES),
        _msg(h.VHOST_USER_GET_PROTOCOL_FEATURES),
        _msg(h.VHOST_USER_SET_PROTOCOL_FEATURES, encode_u64(protocol)),
        _msg(h.VHOST_USER_SET_FEATURES, encode_u64(features | 1 << VIRTIO_F_VERSION_1), need_reply=True),
        _msg(h.VHOST_USER_SET_MEM_TABLE, encode_memory([Region(0, 1 << 16, _USER, 0)]), (0,), need_reply=True),
        _msg(h.VHOST_USER_GET_QUEUE_NUM),
        _msg(h.VHOST_USER_SET_VRING_NUM, encode_vring_state(0, 8)),
        _msg(h.VHOST_USER_SET_VRING_BASE, encode_vring_state(0, 0)),
        _msg(h.VHOST_USER_SET_VRING_ADDR,
             encode_vring_addr(0, _USER + layout.desc_addr, _USER + layout.device_addr, _USER + layout.driver_addr)),
        _msg(h.VHOST_USER_SET_VRING_CALL, encode_u64(0), (2,)),
        _msg(h.VHOST_USER_SET_VRING_ERR, encode_u64(0), (2,)),
        _msg(h.VHOST_USER_SET_VRING_KICK, encode_u64(0), (2,)),
        _msg(h.VHOST_USER_SET_VRING_ENABLE, encode_vring_state(0, 1)),
    ]


def _ring_with(chains: list[list[tuple[int, int, int]]]) -> list[Chunk]:
    """Guest RAM stores that lay out ``chains`` ((addr, len, flags) each) in the ring of ``_bring_up``."""
    layout = RingLayout.at(0x1000, 8, False)
    out, index = [], 0
    heads = []
    for chain in chains:
        heads.append(index)
        for k, (addr, length, flags) in enumerate(chain):
            more = k + 1 < len(chain)
            out.append(store(layout.desc_addr + 16 * index, _desc(addr, length, flags | (1 if more else 0), index + 1 if more else 0)))
            index += 1
    out.append(store(layout.driver_addr, struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", i) for i in heads)))
    return out


def seeds() -> dict[str, bytes]:
    """The committed seed corpus (``python -m fuzz seeds vhost_user``)."""
    ack = 1 << h.VHOST_USER_PROTOCOL_F_REPLY_ACK | 1 << h.VHOST_USER_PROTOCOL_F_CONFIG
    slots = ack | 1 << h.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS | 1 << h.VHOST_USER_PROTOCOL_F_RESET_DEVICE
    blk_read = _ring_with([[(0x8000, 16, 0), (0x9000, 512, 2), (0x9400, 1, 2)]])
    blk_write = [store(0x8000, _HDR.pack(1, 0, 4)), store(0x9000, b"W" * 512)] + _ring_with(
        [[(0x8000, 16, 0), (0x9000, 512, 0), (0x9400, 1, 2)], [(0x8100, 16, 0), (0x9800, 20, 2), (0x9900, 1, 2)]])
    echo = [store(0x9000, b"echo me")] + _ring_with([[(0x9000, 7, 0), (0xA000, 16, 2)]])
    stop = [_msg(h.VHOST_USER_GET_VRING_BASE, encode_vring_state(0, 0)),
            _msg(h.VHOST_USER_GET_CONFIG, encode_config(0, bytes(16))),
            _msg(h.VHOST_USER_SET_CONFIG, encode_config(32, b"\0"), need_reply=True)]
    hostile = [
        _msg(h.VHOST_USER_SET_MEM_TABLE, encode_memory([Region(0, 1 << 16, _USER, 0)]), (3,)),
        _msg(h.VHOST_USER_SET_VRING_KICK, encode_u64(0), (4,)),
        _msg(h.VHOST_USER_SET_VRING_ADDR, encode_vring_addr(0, 1, 2, 3)),
        _msg(h.VHOST_USER_SET_VRING_NUM, encode_vring_state(9, 8)),
        _msg(99, b"", need_reply=True),
        Chunk(HEADER.pack(h.VHOST_USER_GET_FEATURES, 0, 0)),  # version 0: fatal
    ]
    blk_features = 1 << 9  # VIRTIO_BLK_F_FLUSH
    # Inflight tracking: a buffer from GET_INFLIGHT_FD, one handed back (a 4 KiB memfd: one
    # queue of 8 entries), requests taken and returned, a buffer refused while the ring
    # runs, the ring stopped and started again with a new buffer.
    inflight = ack | 1 << h.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD
    inflight_setup = [
        _msg(h.VHOST_USER_GET_INFLIGHT_FD, encode_inflight(0, 0, 1, 8)),
        _msg(h.VHOST_USER_SET_INFLIGHT_FD, encode_inflight(320, 0, 1, 8), (1,), need_reply=True),
    ]
    bring_up = _bring_up(blk_features, inflight)
    restart = [_msg(h.VHOST_USER_GET_VRING_BASE, encode_vring_state(0, 0))] + inflight_setup[1:] + bring_up[7:]
    # Dirty logging: a 4 KiB log, LOG_ALL, the ring's log flag at its used ring's address.
    logged = ack | 1 << h.VHOST_USER_PROTOCOL_F_LOG_SHMFD
    layout = RingLayout.at(0x1000, 8, False)
    log_on = [
        _msg(h.VHOST_USER_SET_LOG_BASE, encode_log(4096, 0), (1,)),
        _msg(h.VHOST_USER_SET_FEATURES, encode_u64(blk_features | 1 << VIRTIO_F_VERSION_1 | 1 << h.VHOST_F_LOG_ALL),
             need_reply=True),
        _msg(h.VHOST_USER_SET_VRING_ADDR, encode_vring_addr(
            0, _USER + layout.desc_addr, _USER + layout.device_addr, _USER + layout.driver_addr,
            flags=1 << h.VHOST_VRING_F_LOG, log=layout.device_addr), need_reply=True),
    ]
    return {
        "inflight": encode_stream(0, bring_up[:6] + inflight_setup + bring_up[6:] + [store(0x8000, _HDR.pack(0, 0, 1))]
                                  + blk_read + [Chunk(b"", truncated=True)] + inflight_setup[1:] + restart
                                  + [Chunk(b"", truncated=True)]),
        "dirty-log": encode_stream(0, _bring_up(blk_features, logged) + log_on + [store(0x8000, _HDR.pack(0, 0, 1))]
                                   + blk_read + [Chunk(b"", truncated=True),
                                                 _msg(h.VHOST_USER_GET_VRING_BASE, encode_vring_state(0, 0))]),
        "blk-read": encode_stream(0, _bring_up(blk_features, ack) + [store(0x8000, _HDR.pack(0, 0, 1))] + blk_read
                                  + [Chunk(b"", truncated=True), _msg(h.VHOST_USER_GET_VRING_BASE, encode_vring_state(0, 0))]),
        "blk-write-getid": encode_stream(0, _bring_up(blk_features, ack) + [store(0x8100, _HDR.pack(8, 0, 0))] + blk_write
                                         + [Chunk(b"", truncated=True)] + stop),
        "echo": encode_stream(1, _bring_up(0, slots) + echo + [Chunk(b"", truncated=True), _msg(h.VHOST_USER_RESET_DEVICE)]),
        "mem-slots": encode_stream(1, _bring_up(0, slots)[:5] + [
            _msg(h.VHOST_USER_GET_MAX_MEM_SLOTS),
            _msg(h.VHOST_USER_ADD_MEM_REG, bytes(8) + struct.pack("<QQQQ", 1 << 20, 1 << 20, _USER + (1 << 20), 0), (5,)),
            _msg(h.VHOST_USER_REM_MEM_REG, bytes(8) + struct.pack("<QQQQ", 1 << 20, 1 << 20, _USER + (1 << 20), 0)),
        ]),
        "hostile": encode_stream(0, _bring_up(0, ack)[:5] + hostile),
    }


if __name__ == "__main__":
    fuzz_main(TestOneInput)
