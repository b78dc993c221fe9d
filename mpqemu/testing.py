"""A fake QEMU proxy: the QEMU half of mpqemu, for tests and for VMM integrators.

``FakeProxy`` speaks to a remote server over a socket exactly as QEMU 7.2's
``x-pci-proxy-dev`` and its memory listener do (``hw/remote/proxy.c``,
``proxy-memory-listener.c``, ``mpqemu-link.c``): one ``sendmsg`` per message with the
descriptors attached, and for the commands the proxy waits on, one RET read back.

Rules: the proxy never interprets device registers; ``probe_bars`` repeats proxy.c's
``probe_pci_info`` sizing loop, including its quirks (every BAR sized as a 32-bit BAR,
``size = ~(value & ~0xF) + 1``). ``pump`` (optional) is called after each send, so a test
can run the server's loop on the same thread (``lambda: server.loop.run_once(0)``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import NamedTuple

from . import defs as d
from .server import MpqemuServer
from devmodels import GuestMemory
from devmodels.pci import PciFunction
from .layouts import (
    RET_DATA,
    encode_message,
    pack_bar_access,
    pack_pci_conf_data,
    pack_sync_sysmem,
    unpack_header,
)

__all__ = ["FakeProxy", "Reply", "ProbedBar", "ProxyError", "Harness"]

PCI_NUM_REGIONS = 7  # proxy.c probes BAR0..BAR5 and the slot after them (0x28)


class ProxyError(Exception):
    """The server answered in a way QEMU's proxy would reject (or not at all)."""


class Reply(NamedTuple):
    """A message read back: command, declared size and the u64 (``None`` if size 0)."""

    cmd: int
    size: int
    value: int | None


class ProbedBar(NamedTuple):
    """One BAR as proxy.c's ``probe_pci_info`` registers it (``bar`` is its index)."""

    bar: int
    size: int
    io: bool


class FakeProxy:
    """The QEMU side of one mpqemu connection.

    Args:
        sock: the proxy's end of the socketpair (made blocking with ``timeout``).
        pump: called after every send (run the server in-thread); ``None`` if the server
            runs elsewhere.
        timeout: seconds to wait for a reply before ``ProxyError``.
    """

    def __init__(self, sock: socket.socket, pump: Callable[[], None] | None = None, timeout: float = 5.0) -> None:
        self.sock = sock
        self.pump = pump
        sock.settimeout(timeout)

    # -- raw messages ---------------------------------------------------------------------

    def send(self, cmd: int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """Send one message (``mpqemu_msg_send``): header and data in one ``sendmsg``."""
        data = encode_message(cmd, payload)
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)
        if self.pump is not None:
            self.pump()

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send arbitrary bytes (hostile-peer tests)."""
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)
        if self.pump is not None:
            self.pump()

    def _recv_exact(self, count: int) -> bytes:
        out = bytearray()
        while len(out) < count:
            try:
                chunk = self.sock.recv(count - len(out))
            except TimeoutError as exc:
                raise ProxyError("no reply from the server") from exc
            if not chunk:
                raise ProxyError("the server closed the connection")
            out += chunk
        return bytes(out)

    def recv_reply(self) -> Reply:
        """Read one message (``mpqemu_msg_recv``) and check it is a RET, as the proxy does."""
        cmd, size = unpack_header(self._recv_exact(d.MPQEMU_MSG_HDR_SIZE))
        if size > d.MPQEMU_MSG_DATA_SIZE:
            raise ProxyError(f"reply announces {size} data bytes")
        data = self._recv_exact(size) if size else b""
        if cmd != d.MPQEMU_CMD_RET:
            raise ProxyError(f"reply command is {cmd}, not RET")
        value = RET_DATA.unpack_from(data)[0] if size >= RET_DATA.size else None
        return Reply(cmd, size, value)

    def request(self, cmd: int, payload: bytes = b"") -> Reply:
        """Send and await the RET (``mpqemu_msg_send_and_await_reply``)."""
        self.send(cmd, payload)
        return self.recv_reply()

    def closed_by_server(self) -> bool:
        """Whether the server has closed its end (end of stream is readable)."""
        self.sock.settimeout(0.0)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(5.0)
        return data == b""

    # -- commands -------------------------------------------------------------------------

    def sync_sysmem(self, entries: Sequence[tuple[int, int, int, int]]) -> None:
        """SYNC_SYSMEM with ``(gpa, size, offset, fd)`` entries (no reply)."""
        self.send(
            d.MPQEMU_CMD_SYNC_SYSMEM,
            pack_sync_sysmem([(gpa, size, offset) for gpa, size, offset, _ in entries]),
            [fd for *_, fd in entries],
        )

    def set_irqfd(self) -> tuple[int, int]:
        """SET_IRQFD with two new eventfds (no reply); return ``(irqfd, resamplefd)``.

        The caller owns the returned descriptors (the server got its own copies).
        """
        irqfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        resample = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.send(d.MPQEMU_CMD_SET_IRQFD, b"", [irqfd, resample])
        return irqfd, resample

    def config_read(self, addr: int, length: int) -> int:
        """PCI_CFGREAD; the value as proxy.c keeps it (``(uint32_t)ret``)."""
        reply = self.request(d.MPQEMU_CMD_PCI_CFGREAD, pack_pci_conf_data(addr, 0, length))
        return _value(reply) & 0xFFFF_FFFF

    def config_read_raw(self, addr: int, length: int) -> int:
        """PCI_CFGREAD; the full u64 of the RET (``MPQEMU_RET_ERROR`` on error)."""
        return _value(self.request(d.MPQEMU_CMD_PCI_CFGREAD, pack_pci_conf_data(addr, 0, length)))

    def config_write(self, addr: int, value: int, length: int) -> int:
        """PCI_CFGWRITE; return the RET's u64 (0, or ``MPQEMU_RET_ERROR``)."""
        return _value(self.request(d.MPQEMU_CMD_PCI_CFGWRITE, pack_pci_conf_data(addr, value & 0xFFFF_FFFF, length)))

    def bar_read(self, addr: int, size: int, memory: bool = True) -> int:
        """BAR_READ at absolute ``addr``; the RET's u64."""
        return _value(self.request(d.MPQEMU_CMD_BAR_READ, pack_bar_access(addr, 0, size, memory)))

    def bar_write(self, addr: int, value: int, size: int, memory: bool = True) -> int:
        """BAR_WRITE at absolute ``addr``; the RET's u64 (0, or ``MPQEMU_RET_ERROR``)."""
        return _value(self.request(d.MPQEMU_CMD_BAR_WRITE, pack_bar_access(addr, value, size, memory)))

    def device_reset(self) -> Reply:
        """DEVICE_RESET; the RET (7.2 sends it with no data)."""
        return self.request(d.MPQEMU_CMD_DEVICE_RESET)

    # -- what proxy.c does at realize -----------------------------------------------------

    def probe_bars(self) -> list[ProbedBar]:
        """Size every BAR as ``probe_pci_info`` does; return the ones with a size."""
        found = []
        for i in range(PCI_NUM_REGIONS):
            offset = 0x10 + 4 * i
            original = self.config_read(offset, 4)
            self.config_write(offset, 0xFFFF_FFFF, 4)
            value = self.config_read(offset, 4)
            size = (~(value & 0xFFFF_FFF0) + 1) & 0xFFFF_FFFF
            self.config_write(offset, original, 4)
            if size:
                found.append(ProbedBar(i, size, bool(value & 1)))
        return found


def _value(reply: Reply) -> int:
    if reply.value is None:
        raise ProxyError("RET without data")
    return reply.value


class Harness:
    """A server for ``function`` and a ``FakeProxy`` on a socketpair, run on one thread.

    Every proxy send runs the server's loop once (``pump``), so a reply is ready when the
    proxy reads it; nothing needs a thread.

    Args:
        function: the device; built by ``factory(memory)`` if omitted.
        memory: the guest RAM the device uses (SYNC_SYSMEM fills it); a new one if omitted.
        factory: builds the function from ``memory`` when ``function`` is omitted.
        server_kwargs: passed to ``MpqemuServer``.
    """

    def __init__(
        self,
        function: PciFunction | None = None,
        memory: GuestMemory | None = None,
        factory: Callable[[GuestMemory], PciFunction] | None = None,
        **server_kwargs: object,
    ) -> None:
        self.memory = memory if memory is not None else GuestMemory()
        if function is None:
            if factory is None:
                raise ValueError("give a function or a factory")
            function = factory(self.memory)
        self.function = function
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server = MpqemuServer(function, ours, self.memory, **server_kwargs)  # type: ignore[arg-type]
        self.proxy = FakeProxy(theirs, pump=self.pump)

    def pump(self, rounds: int = 1) -> None:
        """Run the server's loop ``rounds`` times without blocking (stops once it closed)."""
        for _ in range(rounds):
            if self.server.closed:
                return
            self.server.loop.run_once(0)

    def close(self) -> None:
        """Close the proxy's end, let the server see it, and close the server."""
        self.proxy.sock.close()
        self.pump()
        self.server.close()
