"""The remote process's socket side: frame mpqemu messages and feed them to the endpoint.

``serve(function, sock)`` serves one ``PciFunction`` on one connected UNIX stream socket
(the end of the socketpair whose other end QEMU's ``x-pci-proxy-dev,fd=N`` holds) until
the peer disconnects.

Rules:

1. Framing is ``framing.MessageFramer``'s: each ``recvmsg`` result is fed whole, and
   the descriptors it carries go to the message its last byte belongs to (exactly
   ``mpqemu_msg_recv``'s attribution for a peer that sends one message per ``sendmsg``).
   The socket is non-blocking and reads are incremental: a peer that stalls mid-message
   stalls nothing else on the loop.
2. A header whose ``size`` exceeds ``MPQEMU_MSG_DATA_SIZE`` cannot be framed past, so it
   ends the connection cleanly (logged, descriptors closed). Truncated ancillary data
   (``MSG_CTRUNC``: more descriptors than a message may carry; the kernel closes the
   excess) refuses the message. End of stream mid-message is logged and ends the
   connection. Every other protocol error is the endpoint's (an error reply).
3. Work is bounded: at most ``BUDGET`` reads are handled per wake-up (timers and other
   descriptors get their turn), and when replies back up past ``OUTPUT_LIMIT`` bytes
   (a peer that sends without reading) reading pauses until the peer drains half of
   them; the backlog never exceeds ``OUTPUT_LIMIT`` plus the replies to one read.
4. On disconnect everything is released: the socket, pending descriptors, guest RAM
   mappings, irqfds. The server owns the socket it is given.
"""

from __future__ import annotations

import array
import logging
import socket
from collections.abc import Callable, Sequence

from . import defs as d
from .config import DEFAULT_HIDDEN
from .endpoint import EndpointStats, RemotePciEndpoint
from .framing import FramingError, Message, MessageFramer
from .irqfd import IrqfdLevelSink
from .layouts import encode_ret
from devmodels.runtime import EventLoop
from devmodels import GuestMemory, UsageError
from devmodels.fds import close_fds
from devmodels.pci import PciFunction

__all__ = ["MpqemuServer", "serve", "BUDGET", "OUTPUT_LIMIT", "RECV_SIZE"]

_log = logging.getLogger("devmodels.mpqemu")

BUDGET = 256
OUTPUT_LIMIT = 64 * 1024

# One read takes a few whole messages (the largest is 16 + 192 bytes).
RECV_SIZE = 4096
# Room for one descriptor more than a message may carry, to tell "too many" apart; the
# kernel closes any beyond it and sets MSG_CTRUNC.
_ANC_SIZE = socket.CMSG_SPACE((d.REMOTE_MAX_FDS + 1) * array.array("i").itemsize)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)


class MpqemuServer:
    """Serves ``function`` on ``sock`` with ``loop`` (rules 1–4).

    Args:
        function: the device (not plugged anywhere else).
        sock: a connected ``AF_UNIX`` ``SOCK_STREAM`` socket; the server owns it.
        memory: the guest RAM the device DMAs into (filled by SYNC_SYSMEM); a new one if
            omitted.
        loop: the event loop to register with; a private one if omitted. Devices with
            timers or backend descriptors add them to the same loop.
        hide_capabilities: see ``RemotePciEndpoint``.

    Raises:
        UsageError: ``sock`` is not a UNIX stream socket.
    """

    def __init__(
        self,
        function: PciFunction,
        sock: socket.socket,
        memory: GuestMemory | None = None,
        *,
        loop: EventLoop | None = None,
        hide_capabilities: Sequence[int] = DEFAULT_HIDDEN,
    ) -> None:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise UsageError(f"mpqemu needs a UNIX stream socket, got {sock!r}")
        self.sock = sock
        self.loop = loop if loop is not None else EventLoop()
        self._own_loop = loop is None
        self.endpoint = RemotePciEndpoint(
            function, memory, hide_capabilities=hide_capabilities, on_irqfd=self._irqfd_changed
        )
        self.closed = False
        # Runtime glue of the served device (``served.ServedDevice``): called around every
        # message, so a device sees the current time before a register write arms a timer.
        self.before_dispatch: list[Callable[[], None]] = []
        self.after_dispatch: list[Callable[[], None]] = []
        self._fd = sock.fileno()
        self._framer = MessageFramer()
        self._out = bytearray()
        self._reading = True
        sock.setblocking(False)
        self.loop.add_reader(self._fd, self._on_readable)

    @property
    def stats(self) -> EndpointStats:
        """The endpoint's counters."""
        return self.endpoint.stats

    # -- input ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        for _ in range(BUDGET):
            if self.closed or not self._reading:
                return
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(RECV_SIZE, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._disconnect(f"receive failed: {exc}")
                return
            fds = _fds_from(ancdata) if ancdata else []
            if not data:
                close_fds(fds)
                self._disconnect("peer closed mid-message" if self._framer.partial else None)
                return
            try:
                messages = self._framer.feed(data, fds, bool(flags & _MSG_CTRUNC))
            except FramingError as exc:
                self._disconnect(f"{exc}; cannot frame past it")
                return
            for message in messages:
                self._dispatch(message)
            if len(data) < RECV_SIZE:
                return  # drained: the selector reports the next message

    def _dispatch(self, message: Message) -> None:
        if self.closed:
            close_fds(message.fds)
            return
        if message.truncated:
            close_fds(message.fds)
            _log.error("mpqemu: command %d carried more than %d descriptors; refused", message.cmd, d.REMOTE_MAX_FDS)
            self.endpoint.stats.refused += 1
            reply = encode_ret(d.MPQEMU_RET_ERROR) if self.endpoint.expects_reply(message.cmd) else None
        else:
            for hook in self.before_dispatch:
                hook()
            reply = self.endpoint.handle(message.cmd, message.payload, message.fds)
        if reply is not None:
            self._send(reply)
        for hook in self.after_dispatch:
            hook()

    # -- output ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._disconnect(f"send failed: {exc}")
                return
            data = data[sent:]
            if not data:
                return
            self.loop.add_writer(self._fd, self._on_writable)
        self._out += data
        if len(self._out) > OUTPUT_LIMIT and self._reading:
            self._reading = False
            self.loop.remove_reader(self._fd)

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._disconnect(f"send failed: {exc}")
            return
        del self._out[:sent]
        if not self._out:
            self.loop.remove_writer(self._fd)
        if not self._reading and len(self._out) <= OUTPUT_LIMIT // 2:
            self._reading = True
            self.loop.add_reader(self._fd, self._on_readable)

    # -- interrupts -----------------------------------------------------------------------

    def _irqfd_changed(self, old: IrqfdLevelSink | None, new: IrqfdLevelSink | None) -> None:
        if old is not None:
            self.loop.remove_reader(old.resamplefd)
        if new is not None:
            self.loop.add_reader(new.resamplefd, new.on_resample)

    # -- lifetime -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until the peer disconnects or ``stop`` is called."""
        self.loop.run(until=lambda: self.closed)

    def stop(self) -> None:
        """Make ``run`` return soon; safe from any thread (the server stays open)."""
        self.loop.stop()

    def _disconnect(self, reason: str | None) -> None:
        if reason is not None:
            _log.error("mpqemu: disconnecting: %s", reason)
        else:
            _log.info("mpqemu: peer disconnected")
        self.close()

    def close(self) -> None:
        """Release the socket, pending descriptors, RAM mappings and irqfds (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self._fd)
        self.loop.remove_writer(self._fd)
        self._framer.close()
        self.endpoint.close()
        self.sock.close()
        if self._own_loop:
            self.loop.close()


def serve(
    function: PciFunction,
    sock: socket.socket,
    memory: GuestMemory | None = None,
    *,
    hide_capabilities: Sequence[int] = DEFAULT_HIDDEN,
) -> EndpointStats:
    """Serve ``function`` on ``sock`` until the peer disconnects; return the counters.

    ``memory`` is the ``GuestMemory`` the device was built with (SYNC_SYSMEM fills it).
    The socket is closed on return.
    """
    server = MpqemuServer(function, sock, memory, hide_capabilities=hide_capabilities)
    try:
        server.run()
    finally:
        server.close()
    return server.stats


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return list(fds)

