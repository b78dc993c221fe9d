"""The vhost-user back-end: a UNIX socket server and its event loop, serving one device.

One thread runs everything: the listening socket, the front-end connection, the kick
eventfds of the running rings and the device's own wake-ups (``glue``). Interrupts go out
through the call eventfds.

Rules:

1. One front-end at a time. A second connection while one is served is accepted and
   closed at once; when the front-end goes away (EOF, a fatal protocol error, a failed
   write) its session is closed (drain, device reset, memory unmapped, descriptors
   closed) and the next front-end can attach.
2. Messages are read with ``recvmsg`` (``MSG_CMSG_CLOEXEC``); a truncated control message
   (more descriptors than the buffer takes) ends the connection, closing what arrived.
   Replies never block the loop: the socket is non-blocking, what it does not take waits
   in an outgoing queue written when the socket is writable, and a front-end that leaves
   more than ``OUT_LIMIT`` bytes of replies unread is disconnected (a log line and a
   ``vhost_user.connection`` trace event); the next front-end can then attach. A reply
   that carries descriptors (GET_INFLIGHT_FD) is sent with them attached to its first
   byte (``SCM_RIGHTS``); the server closes its copies once they are sent, or when the
   front-end goes away.
3. The loop never spins: it sleeps in ``select`` unless a ring ran out of budget with work
   left (``busy``) or a ring is in polling mode (then it wakes every ``poll_interval``).
   Descriptor registrations are reconciled with what the session and glue want after every
   batch of events, then the coalesced call eventfds are written.
4. ``stop()`` may be called from any thread (or a signal handler); ``serve`` returns soon
   after. ``close()`` ends the session and releases the socket (the path is unlinked if the
   server created it).
5. Late suppression stores of the driver (a guest that drops memory barriers) cannot hang
   a ring: ``VhostUserSession.recheck`` runs at most ``RECHECK_DELAY`` after a batch of
   events (so at most once per ``RECHECK_DELAY`` under load) and whenever the loop wakes
   idle (at least once a second): a call the driver asked for late, or buffers it added
   without a kick, wait at most that long.

Bounds: a front-end message is handled within the loop iteration that reads it; no
message or guest action ends the loop; a ring waits at most one second for a
notification a driver's late store made the device miss.
"""

from __future__ import annotations

import array
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from devmodels import UsageError
from devmodels.listen import listen_unix
from devmodels.trace import tracepoint

from ..device import VirtioDevice
from .defs import VHOST_USER_MAX_PAYLOAD
from .glue import DeviceGlue, ServedGlue
from .messages import MessageReader, ProtocolError, close_fds
from .session import VhostUserSession

__all__ = ["VhostUserServer", "SessionTransport"]

_log = logging.getLogger("devmodels.vhost_user")
_tp_conn = tracepoint("vhost_user.connection")

_RECV_SIZE = 16 * (VHOST_USER_MAX_PAYLOAD + 12)
_ANC_FDS = 64  # room to see (and refuse) more descriptors than a message may carry
_IDLE_WAIT = 1.0

OUT_LIMIT = 64 << 10
"""Bytes of replies a front-end may leave unread before it is disconnected (rule 2)."""
RECHECK_DELAY = 0.001
"""Seconds from a batch of events to the next ``recheck`` (rule 5)."""


class SessionTransport:
    """The device's ``Transport``: used-buffer notifications go to the current session."""

    def __init__(self) -> None:
        self.session: VhostUserSession | None = None
        self.config_changes = 0

    def signal_used(self, index: int) -> None:
        """Mark ring ``index`` for a call (coalesced by the session)."""
        if self.session is not None:
            self.session.signal_used(index)

    def signal_config(self) -> None:
        """No back-end channel is offered, so configuration changes are only counted."""
        self.config_changes += 1

    def device_reset(self) -> None:
        """Nothing transport-side to clear."""


class VhostUserServer:
    """Serve ``device`` to vhost-user front-ends on a UNIX socket (rules 1–4).

    Args:
        device: the device; the server attaches itself as its transport.
        path: the socket path to create (a stale socket there is replaced; any other file
            makes binding fail).
        listener: an already listening ``AF_UNIX`` stream socket instead of ``path``.
            With neither, the server only serves connections handed to ``adopt``.
        glue: the device's wake-up sources (default: ``ServedGlue(device)``).
        queue_num: the GET_QUEUE_NUM answer (default: the device's, or its
            ``vhost_user_queue_num`` attribute).
        poll_interval: seconds between polls of rings without a kick descriptor.

    Raises:
        UsageError: both ``path`` and ``listener``; a bad listener.
        HostError: the socket cannot be created at ``path``.
    """

    def __init__(
        self,
        device: VirtioDevice,
        path: str | os.PathLike[str] | None = None,
        *,
        listener: socket.socket | None = None,
        glue: DeviceGlue | None = None,
        queue_num: int | None = None,
        poll_interval: float = 0.002,
    ) -> None:
        if path is not None and listener is not None:
            raise UsageError("give at most one of path and listener")
        self.device = device
        self._transport = SessionTransport()
        device.attach(self._transport)
        self._created_path: str | None = None
        self.path: str | None = None
        if path is not None:
            self.path = os.fspath(path)
            # A stale socket of an earlier run is replaced; the path appears once it accepts
            # (QEMU's reconnect= connects as soon as it exists).
            listener = listen_unix(self.path, backlog=4)
            self._created_path = self.path
        elif listener is not None:
            if listener.family != socket.AF_UNIX or listener.type != socket.SOCK_STREAM:
                raise UsageError(f"listener must be an AF_UNIX stream socket, got {listener!r}")
            self.path = str(listener.getsockname())
        if listener is not None:
            listener.setblocking(False)
        self._listener = listener
        self.glue = glue if glue is not None else ServedGlue(device)
        self._queue_num = queue_num if queue_num is not None else getattr(device, "vhost_user_queue_num", None)
        self.poll_interval = poll_interval
        self._selector = selectors.DefaultSelector()
        self._registered: dict[int, tuple[int, Callable[[], None]]] = {}
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stopping = False
        self._conn: socket.socket | None = None
        self._reader: MessageReader | None = None
        self._out = bytearray()  # replies the socket has not taken yet (rule 2)
        self._out_fds: list[tuple[int, list[int]]] = []  # (offset in _out, descriptors to attach there)
        self._recheck_at: float | None = None
        self.session: VhostUserSession | None = None
        self.sessions = 0
        """How many front-ends have attached so far."""
        self.last_error: str | None = None
        """Why the last front-end was disconnected by the back-end, if it was."""
        self._thread: threading.Thread | None = None
        self._adopt_lock = threading.Lock()
        self._adopt_queue: list[socket.socket] = []
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A front-end is attached."""
        return self.session is not None

    def stop(self) -> None:
        """Ask ``serve`` to return (thread-safe, signal-safe)."""
        self._stopping = True
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def serve(self, *, until: Callable[[], bool] | None = None, timeout: float | None = None) -> None:
        """Run the loop until ``stop()``, until ``until()`` is true, or ``timeout`` seconds."""
        if self._closed:
            raise UsageError("the server is closed")
        self._stopping = False
        deadline = None if timeout is None else time.monotonic() + timeout
        self._sync()
        while not self._stopping:
            if until is not None and until():
                return
            wait = _IDLE_WAIT
            session = self.session
            if session is not None and session.busy:
                wait = 0.0
            elif session is not None and session.polling:
                wait = self.poll_interval
            now = time.monotonic()
            if self._recheck_at is not None:
                wait = min(wait, max(0.0, self._recheck_at - now))
            if deadline is not None:
                left = deadline - now
                if left <= 0:
                    return
                wait = min(wait, left)
            events = self._selector.select(wait)
            for key, _mask in events:
                key.data()
            session = self.session
            if session is not None:
                active = bool(events) or bool(session.busy)
                if session.busy:
                    session.run_busy()
                if session.polling:
                    session.poll()
                self._recheck(session, active)
                session.flush_calls()
            self._sync()

    def _recheck(self, session: VhostUserSession, active: bool) -> None:
        """Rule 5: recheck when due or when the loop woke idle (no event, no ring with work
        left); arm the next one after activity."""
        now = time.monotonic()
        if not active or (self._recheck_at is not None and now >= self._recheck_at):
            session.recheck()
            self._recheck_at = None
        if active and self._recheck_at is None:
            self._recheck_at = now + RECHECK_DELAY

    def start(self) -> threading.Thread:
        """Run ``serve`` on a daemon thread (tests, embedding); ``close`` stops it."""
        if self._thread is not None:
            raise UsageError("the server thread is already running")
        self._thread = threading.Thread(target=self.serve, name="vhost-user", daemon=True)
        self._thread.start()
        return self._thread

    def close(self) -> None:
        """Stop the thread (if any), end the session and release the socket (rule 4)."""
        if self._closed:
            return
        self.stop()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self._disconnect(None)
        with self._adopt_lock:
            queued, self._adopt_queue = self._adopt_queue, []
        for conn in queued:
            conn.close()
        self._closed = True
        self.glue.close()
        self._selector.close()
        if self._listener is not None:
            self._listener.close()
        os.close(self._wake_fd)
        if self._created_path is not None:
            try:
                os.unlink(self._created_path)
            except OSError:
                pass

    def __enter__(self) -> VhostUserServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registrations (rule 3) ---------------------------------------------------------------

    def _wanted(self) -> dict[int, Callable[[], None]]:
        wanted: dict[int, Callable[[], None]] = {self._wake_fd: self._on_wake}
        if self._listener is not None:
            wanted[self._listener.fileno()] = self._on_accept
        if self._conn is not None:
            wanted[self._conn.fileno()] = self._on_conn
        session = self.session
        if session is not None:
            for fd, index in session.watched().items():
                wanted[fd] = _KickHandler(session, fd, index)
            wanted.update(self.glue.sources())
        return wanted

    def _sync(self) -> None:
        wanted = self._wanted()
        registered = self._registered
        for fd in [fd for fd in registered if fd not in wanted]:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
            del registered[fd]
        conn_fd = self._conn.fileno() if self._conn is not None else -1
        for fd, callback in wanted.items():
            # The connection is watched for writability too while replies wait (rule 2).
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if fd == conn_fd and self._out else 0)
            old = registered.get(fd)
            if old is None:
                self._selector.register(fd, events, callback)
                registered[fd] = (events, callback)
            elif old[0] != events or (old[1] is not callback and old[1] != callback):
                self._selector.modify(fd, events, callback)
                registered[fd] = (events, callback)

    # -- callbacks ---------------------------------------------------------------------------------

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_fd, 8)
        except BlockingIOError:
            pass
        with self._adopt_lock:
            queued, self._adopt_queue = self._adopt_queue, []
        for conn in queued:
            self._adopt_now(conn)

    def _on_accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.adopt(conn)

    def adopt(self, conn: socket.socket) -> None:
        """Serve the front-end connected on ``conn`` (a ``socketpair`` end, an accepted
        connection). Thread-safe: from another thread while ``start()``'s thread runs the
        loop, the socket is handed to the loop. Refused, and closed, while another
        front-end is attached (rule 1)."""
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            with self._adopt_lock:
                self._adopt_queue.append(conn)
            self.stop_waiting()
            return
        self._adopt_now(conn)

    def stop_waiting(self) -> None:
        """Wake the loop once (it re-evaluates what to watch); thread-safe."""
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def _adopt_now(self, conn: socket.socket) -> None:
        if self.session is not None:
            _log.warning("vhost-user: refusing a second front-end while one is attached")
            conn.close()
            return
        conn.setblocking(False)
        self._conn = conn
        self._reader = MessageReader()
        self._out.clear()
        self._drop_out_fds()
        self.session = VhostUserSession(self.device, queue_num=self._queue_num, close_kick=self._close_watched)
        self._transport.session = self.session
        self.sessions += 1
        self.last_error = None
        if _tp_conn.on:
            _tp_conn.emit(event="connect", session=self.sessions)

    def _on_conn(self) -> None:
        """The connection is readable or writable: send waiting replies, read messages."""
        if self._out and not self._send_out():
            return
        self._on_message()

    def _send_out(self) -> bool:
        """Write what the socket takes of the waiting replies; ``False`` if disconnected."""
        conn = self._conn
        if conn is None:
            return False
        while self._out:
            limit, fds = len(self._out), []
            if self._out_fds:
                offset, pending = self._out_fds[0]
                if offset > 0:
                    limit = offset  # up to the reply that carries descriptors
                else:
                    fds = pending
            try:
                if fds:
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                    sent = conn.sendmsg([bytes(self._out[:limit])], rights)
                else:
                    sent = conn.send(bytes(self._out[:limit]))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._disconnect(f"reply failed: {exc}")
                return False
            del self._out[:sent]
            if fds and sent:
                close_fds(fds)  # the front-end has its own copies now
                self._out_fds.pop(0)
            self._out_fds = [(offset - sent, pending) for offset, pending in self._out_fds]
        if len(self._out) > OUT_LIMIT:
            self._disconnect(f"the front-end left {len(self._out)} bytes of replies unread (limit {OUT_LIMIT})")
            return False
        return True

    def _on_message(self) -> None:
        conn, reader, session = self._conn, self._reader, self.session
        if conn is None or reader is None or session is None:
            return
        try:
            data, ancdata, flags, _ = conn.recvmsg(
                _RECV_SIZE, socket.CMSG_SPACE(_ANC_FDS * 4), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._disconnect(f"receive failed: {exc}")
            return
        fds = _fds_of(ancdata)
        if flags & socket.MSG_CTRUNC:
            close_fds(fds)
            self._disconnect("control message truncated (too many descriptors)")
            return
        if not data:
            close_fds(fds)
            self._disconnect(None)
            return
        try:
            messages = reader.feed(data, fds)
        except ProtocolError as exc:
            self._disconnect(str(exc))
            return
        for index, message in enumerate(messages):
            try:
                reply = session.handle(message)
            except ProtocolError as exc:
                for later in messages[index + 1 :]:
                    later.close_fds()
                self._disconnect(str(exc))
                return
            fds = session.take_reply_fds()
            if reply is None:
                close_fds(fds)
            else:
                if fds:
                    self._out_fds.append((len(self._out), fds))
                self._out += reply
                if not self._send_out():
                    for later in messages[index + 1 :]:
                        later.close_fds()
                    return

    def _drop_out_fds(self) -> None:
        pending, self._out_fds = self._out_fds, []
        for _offset, fds in pending:
            close_fds(fds)

    def _forget(self, fd: int) -> None:
        if self._registered.pop(fd, None) is not None:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def _close_watched(self, fd: int) -> None:
        """Stop watching ``fd``, then close it (see ``VhostUserSession``'s ``close_kick``)."""
        self._forget(fd)
        close_fds([fd])

    def _disconnect(self, reason: str | None) -> None:
        session, conn, reader = self.session, self._conn, self._reader
        if reason is not None:
            self.last_error = reason
            _log.warning("vhost-user: disconnecting the front-end: %s", reason)
        if _tp_conn.on and (session is not None or conn is not None):
            _tp_conn.emit(event="disconnect", reason=reason or "front-end closed")
        self._conn = None
        self._reader = None
        self._out.clear()
        self._drop_out_fds()
        self._recheck_at = None
        try:
            if session is not None:
                session.close()  # before ``connected`` turns false: the device is reset then
        finally:
            self.session = None
            self._transport.session = None
            if reader is not None:
                reader.close()
            if conn is not None:
                self._forget(conn.fileno())
                conn.close()


class _KickHandler:
    """Reads a kick eventfd and processes its ring; equal when it stands for the same ring."""

    __slots__ = ("session", "fd", "index")

    def __init__(self, session: VhostUserSession, fd: int, index: int) -> None:
        self.session = session
        self.fd = fd
        self.index = index

    def __call__(self) -> None:
        try:
            os.read(self.fd, 8)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return
        self.session.kick(self.index)

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, _KickHandler)
            and other.session is self.session
            and other.fd == self.fd
            and other.index == self.index
        )

    def __hash__(self) -> int:
        return hash((id(self.session), self.fd, self.index))


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(cdata[: len(cdata) - len(cdata) % arr.itemsize])
            fds.extend(arr)
    return fds
