"""The host end of the handshake port: the guest's second serial port, a UNIX socket here.

Rules:

1. The host listens before QEMU starts; QEMU connects at startup as the client of
   ``-chardev socket`` and makes it the guest's ttyS1 (``-serial chardev:...`` after the
   launcher's console). The guest finds it through ``hostile.handshake=1``.
2. ``read_event`` returns the next protocol event, ``None`` when ``timeout`` passed with
   none, or ``CLOSED`` when QEMU closed its end (QEMU exited). Bytes that are not a
   protocol line are ignored.
3. ``reply`` sends the guest its word after an END line (``GO`` or ``STOP``); a peer that
   has gone is not an error.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Final

from devmodels import HostError

from ._protocol import Event, parse_line

__all__ = ["HandshakePort", "CLOSED", "APPEND"]

CLOSED: Final = "closed"
APPEND = "hostile.handshake=1"
_MAX_LINE = 4096


class HandshakePort:
    """A listening UNIX socket at ``path`` for one QEMU (rule 1)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._conn: socket.socket | None = None
        self._buffer = b""

    @property
    def qemu_args(self) -> list[str]:
        """The arguments that make this socket the guest's ttyS1."""
        return ["-chardev", f"socket,id=hostile,path={self.path}", "-serial", "chardev:hostile"]

    def accept(self, timeout: float) -> None:
        """Take QEMU's connection.

        Raises:
            HostError: QEMU did not connect within ``timeout`` seconds.
        """
        self._listener.settimeout(timeout)
        try:
            self._conn, _ = self._listener.accept()
        except OSError as exc:
            raise HostError(f"QEMU did not connect the handshake port in {timeout:.0f} s: {exc}") from exc
        self._conn.settimeout(None)

    def read_event(self, timeout: float) -> Event | str | None:
        """The next event (rule 2)."""
        if self._conn is None:
            raise HostError("the handshake port is not connected")
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, _, self._buffer = self._buffer.partition(b"\n")
                event = parse_line(line.decode("utf-8", errors="replace"))
                if event is not None:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._conn.settimeout(remaining)
            try:
                data = self._conn.recv(4096)
            except TimeoutError:
                return None
            except OSError:
                return CLOSED
            if not data:
                return CLOSED
            self._buffer = (self._buffer + data)[-_MAX_LINE:]

    def reply(self, word: bytes) -> None:
        """Send ``GO`` or ``STOP`` (rule 3)."""
        if self._conn is None:
            return
        try:
            self._conn.sendall(word)
        except OSError:
            pass

    def close(self) -> None:
        """Close both sockets and remove the path."""
        for sock in (self._conn, self._listener):
            if sock is not None:
                sock.close()
        self._conn = None
        try:
            self.path.unlink()
        except OSError:
            pass
