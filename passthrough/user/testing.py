"""Test helpers for vfio-user integrators (CONVENTIONS: simulators): a raw peer and a server thread.

- ``RawPeer`` speaks the wire protocol with no checks, so tests can send what a hostile
  client or server would (bad sizes, stray fds, wrong types) and see the replies.
- ``ServerThread`` runs ``VfioUserServer.serve`` on one end of a socketpair in a thread
  and hands out the other end.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from types import TracebackType

from ..defs import VFIO_USER_F_TYPE_COMMAND, VFIO_USER_MAJOR, VFIO_USER_MINOR, VFIO_USER_VERSION
from .framing import Message, MessageSocket
from .negotiate import VersionCapabilities, encode_version
from .server import VfioUserServer

__all__ = ["RawPeer", "ServerThread"]


class RawPeer:
    """One end of a vfio-user connection driven by hand.

    Args:
        sock: a connected stream socket (owned).
        timeout: seconds to wait for a message before ``TimeoutError``-like failure.
    """

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        sock.settimeout(timeout)
        self.sock = sock
        self.conn = MessageSocket(sock, max_payload=1 << 24, max_fds=253)
        self._next_id = 100

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send bytes as they are (optionally with fds)."""
        if fds:
            import array

            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        else:
            self.sock.sendall(data)

    def send(
        self, command: int, payload: bytes = b"", *, msg_id: int | None = None, flags: int = VFIO_USER_F_TYPE_COMMAND,
        error_no: int = 0, fds: Sequence[int] = (),
    ) -> int:
        """Send one well-framed message; return its id."""
        if msg_id is None:
            self._next_id = (self._next_id + 1) & 0xFFFF
            msg_id = self._next_id
        self.conn.send(msg_id, command, payload, flags=flags, error_no=error_no, fds=fds)
        return msg_id

    def recv(self) -> Message | None:
        """Receive one message (``None`` at end of stream)."""
        return self.conn.recv()

    def request(self, command: int, payload: bytes = b"", *, fds: Sequence[int] = (), flags: int = VFIO_USER_F_TYPE_COMMAND) -> Message:
        """Send a command and return the next message (its reply, for a sequential server).

        Raises:
            EOFError: the peer closed the connection instead of replying.
        """
        self.send(command, payload, fds=fds, flags=flags)
        reply = self.recv()
        if reply is None:
            raise EOFError("peer closed the connection")
        return reply

    def negotiate(self, caps: VersionCapabilities | None = None) -> Message:
        """Send ``VFIO_USER_VERSION`` with our version and return the reply."""
        return self.request(VFIO_USER_VERSION, encode_version(VFIO_USER_MAJOR, VFIO_USER_MINOR, caps or VersionCapabilities()))

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class ServerThread:
    """``with ServerThread(server) as sock:`` serves on a socketpair in a daemon thread."""

    def __init__(self, server: VfioUserServer) -> None:
        self.server = server
        self.client_sock, self._server_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.thread = threading.Thread(target=self._run, daemon=True, name="vfio-user-server")
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.serve(self._server_sock)
        except BaseException as exc:  # recorded for the test to assert on
            self.error = exc

    def start(self) -> socket.socket:
        """Start serving; return the client end."""
        self.thread.start()
        return self.client_sock

    def join(self, timeout: float = 10.0) -> bool:
        """Close the client end and wait for the server to finish; whether it did."""
        try:
            self.client_sock.close()
        except OSError:
            pass
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def __enter__(self) -> socket.socket:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.join()
