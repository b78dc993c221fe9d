"""A network backend over a UNIX datagram or seqpacket socket: one frame per datagram.

Rules:

1. The socket is non-blocking. ``send`` returns ``False`` when the socket buffer is full
   (EAGAIN/ENOBUFS); a frame that cannot be delivered for any other reason (peer gone,
   frame larger than the socket allows) is lost like on a dead link: counted in
   ``dropped``, and ``send`` returns ``True``. Host ``OSError`` never escapes ``send``/``receive``.
2. ``receive`` reads whole datagrams into one reusable buffer of ``max_frame`` bytes. A
   datagram that did not fit (MSG_TRUNC) is dropped and counted, never delivered cut.
3. When a seqpacket peer closes, ``receive`` returns what was queued and then nothing;
   ``peer_closed`` turns ``True`` so the VMM can stop polling the (now always readable) fd.
4. A datagram socket bound to a path without a fixed peer (``SocketBackend.bind``) answers
   the address of the last datagram it received; frames sent before any arrived are dropped.
5. No offloads: frames are plain Ethernet frames (interface rule 4).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Literal, TYPE_CHECKING

from ..._errors import HostError, UsageError
from .._net import NetOffloads

__all__ = ["SocketBackend", "SocketKind", "DEFAULT_MAX_FRAME"]

SocketKind = Literal["seqpacket", "dgram"]
_KINDS = {"seqpacket": socket.SOCK_SEQPACKET, "dgram": socket.SOCK_DGRAM}

# Large enough for a 64 KiB GSO frame with its 12-byte virtio-net header.
DEFAULT_MAX_FRAME = 65_536 + 64

_BUSY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


def _kind(kind: str) -> int:
    try:
        return _KINDS[kind]
    except KeyError:
        raise UsageError(f"socket kind must be one of {sorted(_KINDS)}, got {kind!r}") from None


class SocketBackend:
    """A ``NetBackend`` over a connected (or bound) UNIX socket.

    Args:
        sock: an ``AF_UNIX`` ``SOCK_SEQPACKET`` or ``SOCK_DGRAM`` socket; the backend owns
            it from now on and makes it non-blocking.
        max_frame: the largest frame accepted from the socket (rule 2).

    Raises:
        UsageError: the socket is not an AF_UNIX datagram/seqpacket socket.
    """

    def __init__(self, sock: socket.socket, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if sock.family != socket.AF_UNIX or sock.type not in (socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
            raise UsageError(f"SocketBackend needs an AF_UNIX seqpacket or datagram socket, got {sock!r}")
        if not isinstance(max_frame, int) or max_frame < 64:
            raise UsageError(f"max_frame must be an integer >= 64, got {max_frame!r}")
        sock.setblocking(False)
        self._sock = sock
        self._buffer = bytearray(max_frame)
        self._dropped = 0
        self._peer_closed = False
        self._reply_to: str | bytes | None = None
        self._learn_peer = False
        self._unlink: str | None = None
        self._closed = False

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def pair(
        cls, kind: SocketKind = "seqpacket", *, max_frame: int = DEFAULT_MAX_FRAME
    ) -> tuple[SocketBackend, SocketBackend]:
        """Two backends joined by a ``socketpair`` (no privileges, no paths)."""
        a, b = socket.socketpair(socket.AF_UNIX, _kind(kind))
        return cls(a, max_frame=max_frame), cls(b, max_frame=max_frame)

    @classmethod
    def connect(
        cls, path: str, kind: SocketKind = "seqpacket", *, max_frame: int = DEFAULT_MAX_FRAME
    ) -> SocketBackend:
        """Connect to a peer listening (seqpacket) or bound (dgram) at ``path``.

        A datagram socket is auto-bound to an abstract address so the peer can answer.

        Raises:
            HostError: the connection failed.
        """
        sock = socket.socket(socket.AF_UNIX, _kind(kind))
        try:
            if kind == "dgram":
                sock.bind("")  # Linux autobind: a unique abstract address
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise HostError(f"cannot connect to {path!r}: {exc.strerror}") from exc
        return cls(sock, max_frame=max_frame)

    @classmethod
    def listen(
        cls,
        path: str,
        kind: SocketKind = "seqpacket",
        *,
        timeout: float | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> SocketBackend:
        """Bind ``path`` and take one peer: accept a seqpacket connection (waiting up to
        ``timeout`` seconds), or serve datagrams from whoever sends (rule 4).

        The path is removed on ``close`` (a seqpacket listener's right after accepting).

        Raises:
            HostError: binding failed (path in use) or no peer connected in time.
        """
        sock = socket.socket(socket.AF_UNIX, _kind(kind))
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise HostError(f"cannot bind {path!r}: {exc.strerror}") from exc
        if kind == "dgram":
            backend = cls(sock, max_frame=max_frame)
            backend._learn_peer = True
            backend._unlink = path
            return backend
        try:
            sock.listen(1)
            sock.settimeout(timeout)
            conn, _ = sock.accept()
        except OSError as exc:  # socket.timeout is an OSError
            raise HostError(f"no peer connected to {path!r}: {exc}") from exc
        finally:
            sock.close()
            _unlink_quietly(path)
        return cls(conn, max_frame=max_frame)

    # -- NetBackend -----------------------------------------------------------------------

    @property
    def offloads(self) -> NetOffloads:
        """None: frames are plain, fully checksummed Ethernet frames."""
        return NetOffloads()

    @property
    def dropped(self) -> int:
        """Frames lost: undeliverable sends and oversized receptions (rules 1, 2)."""
        return self._dropped

    @property
    def peer_closed(self) -> bool:
        """The seqpacket peer hung up (rule 3)."""
        return self._peer_closed

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Send one frame as one datagram (rule 1).

        Raises:
            UsageError: the backend is closed.
        """
        if self._closed:
            raise UsageError("socket backend is closed")
        try:
            if self._learn_peer:
                if self._reply_to is None:
                    self._dropped += 1
                    return True
                self._sock.sendto(frame, self._reply_to)
            else:
                self._sock.send(frame)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                self._peer_closed = True
            self._dropped += 1
        return True

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` frames that are waiting now, oldest first (rules 2, 3).

        Raises:
            UsageError: the backend is closed.
        """
        if self._closed:
            raise UsageError("socket backend is closed")
        out: list[bytes] = []
        buffer = self._buffer
        while len(out) < limit and not self._peer_closed:
            try:
                n, _, flags, address = self._sock.recvmsg_into([buffer])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.ENOTCONN):
                    self._peer_closed = True
                break
            if flags & socket.MSG_TRUNC:
                self._dropped += 1
                continue
            if n == 0:
                if self._sock.type == socket.SOCK_SEQPACKET:
                    self._peer_closed = True  # end of stream
                continue  # an empty datagram carries no frame
            if self._learn_peer and address:
                self._reply_to = address
            out.append(bytes(buffer[:n]))
        return out

    def set_vnet_hdr(self, enabled: bool) -> None:
        """Only ``False`` is possible: a socket carries no virtio-net header (rule 5).

        Raises:
            UsageError: ``enabled`` is true.
        """
        if enabled:
            raise UsageError("SocketBackend carries no virtio-net header (offloads.any is False)")

    def fileno(self) -> int | None:
        """The socket; readable when frames arrive (or the peer hung up)."""
        return None if self._closed else self._sock.fileno()

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Accepted for the interface; a socket backend has an fd to poll and never calls it."""

    def close(self) -> None:
        """Close the socket (and remove a bound path). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        if self._unlink is not None:
            _unlink_quietly(self._unlink)

    def __enter__(self) -> SocketBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


if TYPE_CHECKING:  # the static proof that SocketBackend implements the interface
    from .._net import NetBackend

    def _implements(backend: SocketBackend) -> NetBackend:
        return backend
