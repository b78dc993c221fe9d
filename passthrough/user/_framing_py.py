# cython: language_level=3, annotation_typing=False
"""vfio-user message framing over a connected AF_UNIX stream socket, with SCM_RIGHTS fds.

This file is the pure-Python reference (``_framing_py``) and, through the symlink
``_framing_c.py`` typed by ``_framing_c.pxd``, the Cython fast path: one source compiled in
Cython's pure-Python mode, as ``virtio.queue._ring_py``; ``framing`` selects one (its rules).

Rules (vfio-user.rst "Header", "Message sizes"):

1. Every message is a 16-byte ``vfio_user_header`` followed by ``msg_size - 16`` payload
   bytes; file descriptors travel as ``SCM_RIGHTS`` ancillary data of the same send.
2. Receiving is bounded: a payload larger than ``max_payload`` or a ``msg_size`` below 16
   loses the framing, so it raises ``VfioUserFramingError`` (carrying the header, so the
   server can still send an error reply before it drops the connection). At most
   ``max_fds`` descriptors are accepted per message, however many reads it takes (a peer
   sending a message a byte at a time, each byte with descriptors, would otherwise fill
   the process's descriptor table); any excess is closed (by the kernel, or here at once)
   and the message is marked ``fds_truncated``.
3. Every received descriptor is owned by the returned ``Message``; whoever consumes the
   message keeps the fds it uses and closes the rest (``Message.close_fds``). Received
   descriptors are close-on-exec.
4. A clean end of stream at a message boundary is ``None``; inside a message it is
   ``VfioUserDisconnectedError``.
"""

from __future__ import annotations

import array
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

try:
    import cython
except ImportError:  # Cython is a build tool; without it this module only runs interpreted.
    from . import _cython_shim as cython

from devmodels.fds import add_fds_bounded, close_fds

from ..defs import (
    VFIO_USER_F_ERROR,
    VFIO_USER_F_NO_REPLY,
    VFIO_USER_F_TYPE_MASK,
    VFIO_USER_F_TYPE_REPLY,
)
from ..errors import VfioUserDisconnectedError, VfioUserProtocolError
from ..layouts import VfioUserHeader, vfio_user_header

__all__ = ["COMPILED", "HEADER_SIZE", "Message", "MessageSocket", "VfioUserFramingError", "close_fds"]

COMPILED: bool = cython.compiled
"""Whether this module is the compiled twin (the selector refuses an uncompiled ``_framing_c``)."""

HEADER_SIZE = vfio_user_header.size
_FD_SIZE = array.array("i").itemsize
# Plain ints: socket's MSG_* are IntFlag members, and IntFlag arithmetic runs in Python
# (enum.Flag.__and__), which showed in the per-message profile (bench vfio-user).
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)


class VfioUserFramingError(VfioUserProtocolError):
    """The stream cannot be parsed any further (rule 2).

    Attributes:
        header: the offending header, if one was read.
    """

    def __init__(self, message: str, header: VfioUserHeader | None = None) -> None:
        self.header = header
        super().__init__(message)


@dataclass(frozen=True)
class Message:
    """One received message.

    Attributes:
        msg_id, command, flags, error_no: the header fields.
        payload: the bytes after the header.
        fds: received descriptors (owned by the consumer, rule 3).
        fds_truncated: the sender sent more descriptors than accepted.
    """

    msg_id: int
    command: int
    flags: int
    error_no: int
    payload: bytes
    fds: tuple[int, ...] = ()
    fds_truncated: bool = False

    @property
    def is_reply(self) -> bool:
        """The Type bits say Reply."""
        return self.flags & VFIO_USER_F_TYPE_MASK == VFIO_USER_F_TYPE_REPLY

    @property
    def no_reply(self) -> bool:
        """The No_reply bit."""
        return bool(self.flags & VFIO_USER_F_NO_REPLY)

    @property
    def is_error(self) -> bool:
        """The Error bit."""
        return bool(self.flags & VFIO_USER_F_ERROR)

    def close_fds(self, keep: Sequence[int] = ()) -> None:
        """Close every received descriptor not in ``keep``."""
        close_fds(fd for fd in self.fds if fd not in keep)


class MessageSocket:
    """Sends and receives whole messages on a connected stream socket.

    Args:
        sock: a connected ``AF_UNIX`` ``SOCK_STREAM`` socket (owned from now on).
        max_payload: the largest payload accepted (rule 2).
        max_fds: the most descriptors accepted with one message.
    """

    def __init__(self, sock: socket.socket, *, max_payload: int, max_fds: int) -> None:
        self.sock = sock
        self.max_payload = max_payload
        self.max_fds = max_fds
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        """The socket's descriptor (for selectors)."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    # -- sending --------------------------------------------------------------------------

    def send(
        self,
        msg_id: int,
        command: int,
        payload: bytes = b"",
        *,
        flags: int = 0,
        error_no: int = 0,
        fds: Sequence[int] = (),
    ) -> None:
        """Send one message (header built here), with ``fds`` as SCM_RIGHTS.

        Raises:
            VfioUserDisconnectedError: the peer is gone.
        """
        data = vfio_user_header.pack(msg_id & 0xFFFF, command, HEADER_SIZE + len(payload), flags, error_no) + payload
        try:
            with self._send_lock:
                if fds:
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                    sent = self.sock.sendmsg([data], ancillary)
                else:
                    sent = self.sock.send(data)
                if sent < len(data):
                    self.sock.sendall(data[sent:])
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise VfioUserDisconnectedError(f"vfio-user peer closed the connection: {exc}") from exc
        except OSError as exc:
            raise VfioUserDisconnectedError(f"vfio-user send failed: {exc}") from exc

    # -- receiving ------------------------------------------------------------------------

    def recv(self) -> Message | None:
        """Receive one message; ``None`` at a clean end of stream (rule 4).

        Raises:
            VfioUserFramingError: the header is unusable (rule 2).
            VfioUserDisconnectedError: the stream ended inside a message.
        """
        fds: list[int] = []
        truncated = False
        try:
            head = bytearray()
            while len(head) < HEADER_SIZE:
                chunk, more, cut = self._recv_some(HEADER_SIZE - len(head))
                if more or cut:
                    truncated |= add_fds_bounded(fds, more, self.max_fds) | cut
                if not chunk:
                    if not head and not fds:
                        return None
                    raise VfioUserDisconnectedError("vfio-user peer closed the connection inside a header")
                head += chunk
            header = vfio_user_header.unpack(head)
            if header.msg_size < HEADER_SIZE:
                raise VfioUserFramingError(f"message size {header.msg_size} is below the header size", header)
            length = header.msg_size - HEADER_SIZE
            if length > self.max_payload:
                raise VfioUserFramingError(
                    f"message of {header.msg_size} bytes exceeds the limit of {self.max_payload + HEADER_SIZE}",
                    header,
                )
            payload = bytearray(length)
            view = memoryview(payload)
            pos = 0
            while pos < length:
                count, more, cut = self._recv_into(view[pos:])
                if more or cut:
                    truncated |= add_fds_bounded(fds, more, self.max_fds) | cut
                if count == 0:
                    raise VfioUserDisconnectedError("vfio-user peer closed the connection inside a message")
                pos += count
        except BaseException:
            close_fds(fds)
            raise
        return Message(header.msg_id, header.command, header.flags, header.error_no, bytes(payload), tuple(fds), truncated)

    def _ancillary_size(self) -> int:
        return socket.CMSG_SPACE(max(self.max_fds, 1) * _FD_SIZE)

    def _recv_some(self, count: int) -> tuple[bytes, list[int], bool]:
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(count, self._ancillary_size(), _MSG_CMSG_CLOEXEC)
        except (ConnectionResetError, OSError) as exc:
            raise VfioUserDisconnectedError(f"vfio-user receive failed: {exc}") from exc
        fds, cut = self._take_fds(ancillary, flags)
        return data, fds, cut

    def _recv_into(self, view: memoryview) -> tuple[int, list[int], bool]:
        try:
            count, ancillary, flags, _ = self.sock.recvmsg_into([view], self._ancillary_size(), _MSG_CMSG_CLOEXEC)
        except (ConnectionResetError, OSError) as exc:
            raise VfioUserDisconnectedError(f"vfio-user receive failed: {exc}") from exc
        fds, cut = self._take_fds(ancillary, flags)
        return count, fds, cut

    def _take_fds(self, ancillary: list[tuple[int, int, bytes]], flags: int) -> tuple[list[int], bool]:
        if not ancillary and not flags & _MSG_CTRUNC:
            return [], False  # the common case: nothing came with these bytes
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(data[: len(data) - len(data) % _FD_SIZE])
                fds.extend(got)
        cut = bool(flags & _MSG_CTRUNC)
        if len(fds) > self.max_fds:
            close_fds(fds[self.max_fds :])
            del fds[self.max_fds :]
            cut = True
        return fds, cut
