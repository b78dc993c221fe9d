"""Splitting the mpqemu byte stream into messages and giving each its descriptors (sans-IO).

``mpqemu_msg_send`` writes one message (16-byte header, then ``size`` data bytes) with one
``sendmsg``, the descriptors attached as ``SCM_RIGHTS``. On a Linux UNIX stream socket a
``recvmsg`` may return bytes of several such writes, but it stops right after the write
whose descriptors it returns (``unix_stream_read_generic`` breaks once it has detached a
write's descriptors). So the descriptors a ``recvmsg`` returns belong to the write that its
*last byte* came from.

Rules:

1. ``feed(data, fds)`` takes one ``recvmsg`` result. Its ``fds`` go to the message that
   contains the last byte of ``data``; a message that is still incomplete keeps them until
   it completes. For a peer that sends one message per ``sendmsg`` (QEMU), this is exactly
   the attribution of QEMU's own ``mpqemu_msg_recv`` (which reads header and data
   separately); for any other peer it is still bounded and well defined, and the endpoint
   closes descriptors a command does not expect.
2. A header whose ``size`` exceeds ``MPQEMU_MSG_DATA_SIZE`` cannot be framed past:
   ``FramingError`` is raised and the framer must be closed (the connection ends). Messages
   completed earlier in the same ``feed`` are not delivered.
3. The framer holds at most one incomplete message and the descriptors received for it;
   ``close`` closes those descriptors.
4. A message holds at most ``REMOTE_MAX_FDS`` descriptors however many reads brought them
   (a peer sending a message a byte at a time, each byte with descriptors, would
   otherwise fill the process's descriptor table): the excess is closed at once and the
   message marked ``truncated``, which the server refuses (QEMU's ``mpqemu_msg_recv``
   fails such a message too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from devmodels.fds import add_fds_bounded, close_fds
from .defs import MPQEMU_MSG_DATA_SIZE, MPQEMU_MSG_HDR_SIZE, REMOTE_MAX_FDS
from .layouts import MSG_HEADER

__all__ = ["Message", "MessageFramer", "FramingError"]


class FramingError(Exception):
    """The stream cannot be split into messages any further (rule 2)."""


@dataclass
class Message:
    """One framed message.

    Attributes:
        cmd: the header's command (any ``int``, unchecked).
        payload: the ``size`` data bytes.
        fds: descriptors received with it; the receiver owns them.
        truncated: the kernel dropped descriptors sent with it (``MSG_CTRUNC``).
    """

    cmd: int
    payload: bytes
    fds: list[int] = field(default_factory=list)
    truncated: bool = False


class MessageFramer:
    """Incremental framing of one connection (rules 1–3)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []  # for the incomplete message at the head of _buf
        self._truncated = False

    @property
    def partial(self) -> bool:
        """Whether an incomplete message (bytes or descriptors) is held."""
        return bool(self._buf or self._fds)

    def feed(self, data: bytes, fds: Sequence[int] = (), truncated: bool = False) -> list[Message]:
        """Add one ``recvmsg`` worth of bytes and descriptors; return the completed messages.

        Raises:
            FramingError: a header announces more than ``MPQEMU_MSG_DATA_SIZE`` bytes. The
                descriptors of this call, and of messages it completed before the bad
                header, are then held, to be closed by ``close``.
        """
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        while True:
            if end - pos < MPQEMU_MSG_HDR_SIZE:
                break
            cmd, size = MSG_HEADER.unpack_from(buf, pos)
            if size > MPQEMU_MSG_DATA_SIZE:
                del buf[:pos]
                # Rule 3: messages completed before the bad header are never delivered, so
                # their descriptors stay here too, for ``close``.
                for message in out:
                    self._fds.extend(message.fds)
                self._fds.extend(fds)
                raise FramingError(
                    f"header of command {cmd} announces {size} data bytes (at most {MPQEMU_MSG_DATA_SIZE})"
                )
            stop = pos + MPQEMU_MSG_HDR_SIZE + size
            if stop > end:
                break
            message = Message(cmd, bytes(buf[pos + MPQEMU_MSG_HDR_SIZE : stop]), self._fds, self._truncated)
            self._fds = []
            self._truncated = False
            out.append(message)
            pos = stop
        del buf[:pos]
        if fds or truncated:
            if buf or not out:
                # The last byte belongs to the incomplete message now at the head of the buffer
                # (or no byte arrived at all: keep them for whatever comes next).
                self._truncated = add_fds_bounded(self._fds, fds, REMOTE_MAX_FDS) or self._truncated or truncated
            else:
                last = out[-1]
                last.truncated = add_fds_bounded(last.fds, fds, REMOTE_MAX_FDS) or last.truncated or truncated
        return out

    def close(self) -> None:
        """Drop the incomplete message and close its descriptors."""
        close_fds(self._fds)
        self._fds = []
        self._buf.clear()

