#!/usr/bin/env python3
"""Fuzz target: the QEMU 7.2 multi-process proxy protocol (mpqemu) server side.

Not an op-stream target: the input is what a hostile proxy writes on the socket
(``fuzz._stream`` format). Byte 0 picks the served function (even: the PCI test device,
odd: the e1000); each chunk is one ``recvmsg`` fed to ``MessageFramer.feed`` with real
descriptors of the kinds the chunk names (memfds become guest RAM through SYNC_SYSMEM,
eventfds become the INTx irqfd pair, the rest must be refused and closed). Every framed
message goes to ``RemotePciEndpoint.handle``. A ``FramingError`` ends the connection, as
the server does.

Oracles, besides ``Guard``'s (nothing escapes ``feed``/``handle``, no hang, bounded heap):

- ``protocol``: a reply is sent exactly for the commands the proxy waits on
  (``RemotePciEndpoint.expects_reply``) and is a well-formed RET (no data or one u64);
- ``reset``: after the stream, DEVICE_RESET and a config read of the vendor/device ID
  still work on the same endpoint;
- ``fd-leak``: once the endpoint and the framer are closed, every descriptor the input
  brought is closed.

OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    import functools
    from collections.abc import Callable
    from typing import Any

    from devmodels import GuestMemory
    from devmodels.backends import LoopbackBackend
    from devmodels.e1000 import E1000
    from devmodels.pci import defs as pcidefs
    from mpqemu import FramingError, MessageFramer, RemotePciEndpoint
    from mpqemu import defs as m
    from mpqemu.layouts import (
        MSG_HEADER,
        RET_DATA,
        encode_message,
        pack_bar_access,
        pack_pci_conf_data,
        pack_sync_sysmem,
    )
    from devmodels.testdev import PciTestDevice
    from devmodels.testdev import regs as t
    from fuzz._execute import Guard
    from fuzz._rig import Finding
    from fuzz._stream import Chunk, Descriptors, check_fd_held, check_fd_leak, decode_stream, encode_stream, open_fds, store

_BAR0 = 0xC000_0000  # where the seeds program BAR0 (the proxy forwards absolute addresses)
_BAR1 = 0xC000  # I/O BAR


class _Session:
    """One connection: the served function, its endpoint and the framer."""

    def __init__(self, selector: int) -> None:
        self.memory = GuestMemory()
        self.backends: list[Any] = []
        if selector & 1:
            wire, peer = LoopbackBackend.pair(capacity=8)
            self.backends = [wire, peer]
            function: Any = E1000(self.memory, wire)
        else:
            function = PciTestDevice(self.memory)
        self.ids = function.config_read(0, 4)
        self.endpoint = RemotePciEndpoint(function, self.memory)
        self.framer = MessageFramer()
        self.fds = Descriptors()

    def close(self) -> None:
        self.framer.close()
        self.endpoint.close()
        self.fds.close()
        for backend in self.backends:
            backend.close()


def _check_reply(cmd: int, reply: bytes | None) -> None:
    wanted = RemotePciEndpoint.expects_reply(cmd) and cmd != m.MPQEMU_CMD_RET
    if (reply is not None) != wanted:
        raise Finding("protocol", f"command {cmd}: reply {reply!r}, but the proxy {'waits' if wanted else 'does not wait'}")
    if reply is None:
        return
    if len(reply) < MSG_HEADER.size:
        raise Finding("protocol", f"command {cmd}: reply {reply.hex()} is shorter than a header")
    ret, size = MSG_HEADER.unpack_from(reply)
    if ret != m.MPQEMU_CMD_RET or size not in (0, RET_DATA.size) or len(reply) != MSG_HEADER.size + size:
        raise Finding("protocol", f"command {cmd}: reply {reply.hex()} is not a RET with no data or one u64")


def _health(session: _Session, guard: Guard) -> None:
    endpoint = session.endpoint
    reset = guard.call(lambda: endpoint.handle(m.MPQEMU_CMD_DEVICE_RESET, b""), "DEVICE_RESET after the stream")
    if reset != MSG_HEADER.pack(m.MPQEMU_CMD_RET, 0):
        raise Finding("reset", f"DEVICE_RESET after the stream answered {reset!r}")
    reply = guard.call(
        lambda: endpoint.handle(m.MPQEMU_CMD_PCI_CFGREAD, pack_pci_conf_data(0, 0, 4)), "config read after reset"
    )
    if reply is None or RET_DATA.unpack_from(reply, MSG_HEADER.size)[0] != session.ids:
        raise Finding("reset", f"vendor/device ID after reset read {reply!r}, expected {session.ids:#x}")


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
    session = _Session(selector)
    if trace is not None:
        trace(f"serving {'e1000' if selector & 1 else 'testdev'}, {len(chunks)} chunks")
    try:
        with Guard(op_seconds, check_memory, memory_limit) as guard:
            guard.mark_memory()
            for index, chunk in enumerate(chunks):
                if chunk.store:
                    if trace is not None:
                        trace(f"{index:4d} guest RAM store {chunk.data[:4][::-1].hex()}: {chunk.data[4:36].hex()}")
                    session.fds.store(chunk.data)
                    continue
                fds = [session.fds.make(kind) for kind in chunk.fds]
                if trace is not None:
                    trace(f"{index:4d} recvmsg {len(chunk.data)} bytes {chunk.data[:48].hex()} fds={list(chunk.fds)} ctrunc={chunk.truncated}")
                try:
                    messages = guard.call(
                        functools.partial(session.framer.feed, chunk.data, fds, chunk.truncated), f"chunk {index} (feed)"
                    )
                except Finding as finding:
                    if isinstance(finding.__cause__, FramingError):
                        if trace is not None:
                            trace(f"     framing error, connection closed: {finding.__cause__}")
                        break
                    raise
                for message in messages:
                    if trace is not None:
                        name = m.CMD_NAMES.get(message.cmd, str(message.cmd))
                        trace(f"     message {name} payload={message.payload[:32].hex()} fds={len(message.fds)}")
                    reply = guard.call(
                        functools.partial(session.endpoint.handle, message.cmd, message.payload, message.fds),
                        f"chunk {index} message {message.cmd}",
                    )
                    if trace is not None:
                        trace(f"     reply {reply.hex() if reply is not None else None}")
                    _check_reply(message.cmd, reply)
                guard.check_memory(f"chunk {index}")
                if fds:
                    check_fd_held(before, f"chunk {index}")
            _health(session, guard)
    finally:
        session.close()
    check_fd_leak(before, "after closing the endpoint")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    execute_input(data)


# -- seeds ----------------------------------------------------------------------------------


def _msg(cmd: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> Chunk:
    return Chunk(encode_message(cmd, payload), fds)


def _cfg_write(addr: int, value: int, length: int = 4) -> Chunk:
    return _msg(m.MPQEMU_CMD_PCI_CFGWRITE, pack_pci_conf_data(addr, value, length))


def _cfg_read(addr: int, length: int = 4) -> Chunk:
    return _msg(m.MPQEMU_CMD_PCI_CFGREAD, pack_pci_conf_data(addr, 0, length))


def _bar_write(addr: int, value: int, size: int = 4, memory: bool = True) -> Chunk:
    return _msg(m.MPQEMU_CMD_BAR_WRITE, pack_bar_access(addr, value, size, memory))


def _bar_read(addr: int, size: int = 4, memory: bool = True) -> Chunk:
    return _msg(m.MPQEMU_CMD_BAR_READ, pack_bar_access(addr, 0, size, memory))


def _probe(io_bar: bool = False) -> list[Chunk]:
    """proxy.c's probe: IDs, BAR sizing, then the guest's BAR assignment and command."""
    chunks = [_cfg_read(0), _cfg_read(8)]
    for bar in range(6):
        chunks += [_cfg_write(0x10 + 4 * bar, 0xFFFF_FFFF), _cfg_read(0x10 + 4 * bar)]
    chunks += [_cfg_write(0x10, _BAR0)]
    if io_bar:
        chunks += [_cfg_write(0x14, _BAR1 | 1)]
    command = pcidefs.PCI_COMMAND_MEMORY | pcidefs.PCI_COMMAND_IO | pcidefs.PCI_COMMAND_MASTER
    return chunks + [_cfg_write(pcidefs.PCI_COMMAND, command, 2)]


def _sysmem(kinds: tuple[int, ...], entries: list[tuple[int, int, int]]) -> Chunk:
    return _msg(m.MPQEMU_CMD_SYNC_SYSMEM, pack_sync_sysmem(entries), kinds)


def seeds() -> dict[str, bytes]:
    """The committed seed corpus (``python -m fuzz seeds mpqemu``)."""
    dma = [
        _sysmem((0,), [(0, 1 << 16, 0)]),
        store(0x100, bytes(range(64))),
        _bar_write(_BAR0 + t.DMA_SRC, 0x100, 8),
        _bar_write(_BAR0 + t.DMA_DST, 0x2000, 8),
        _bar_write(_BAR0 + t.DMA_LEN, 64),
        _bar_write(_BAR0 + t.DMA_CMD, t.DMA_CMD_START),
        _bar_read(_BAR0 + t.DMA_STATUS),
    ]
    irq = [
        _msg(m.MPQEMU_CMD_SET_IRQFD, b"", (2, 2)),
        _bar_write(_BAR0 + t.IRQ_RAISE, 1),
        _bar_read(_BAR0 + t.IRQ_STATUS),
        _bar_write(_BAR0 + t.IRQ_ACK, 1),
    ]
    whole = b"".join(c.data for c in _probe())
    e1000 = [_bar_write(_BAR0 + 0x00D0, 0x9D), _bar_read(_BAR0 + 0x0008), _bar_write(_BAR1, 0x8, 4, False),
             _bar_read(_BAR1 + 4, 4, False), _bar_write(_BAR0 + 0x0014, 1 | 3 << 8), _bar_read(_BAR0 + 0x0014)]
    return {
        "testdev-probe": encode_stream(0, _probe() + [_bar_read(_BAR0 + t.ID), _msg(m.MPQEMU_CMD_DEVICE_RESET)]),
        "testdev-sysmem-dma": encode_stream(0, _probe() + dma),
        "testdev-irqfd": encode_stream(0, _probe() + irq),
        "testdev-split-and-joined": encode_stream(0, [Chunk(whole[:7]), Chunk(whole[7:300]), Chunk(whole[300:])]),
        "sysmem-multi-and-bad-fds": encode_stream(0, _probe() + [
            _sysmem((0, 5), [(0, 1 << 16, 0), (1 << 20, 1 << 20, 0)]),
            _sysmem((1, 3), [(0, 1 << 12, 0), (1 << 16, 1 << 12, 0)]),
            _msg(m.MPQEMU_CMD_SET_IRQFD, b"", (2, 4)),
            _msg(m.MPQEMU_CMD_RET, RET_DATA.pack(0)),
            _msg(99, b"x" * 8),
        ]),
        "oversized-header": encode_stream(0, _probe()[:3] + [Chunk(MSG_HEADER.pack(m.MPQEMU_CMD_BAR_READ, 1 << 20), (2,))]),
        "e1000-probe-regs": encode_stream(1, _probe(io_bar=True) + e1000),
    }


if __name__ == "__main__":
    fuzz_main(TestOneInput)
