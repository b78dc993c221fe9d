"""The far end of a vhost-user NIC served by processes that come and go: a seqpacket
listener with a ``Responder`` behind it, counting every echo request it saw.

A NIC server (``devmodels vhost-user --device virtio-net --backend socket:PATH``) connects
to ``PATH``. When it is killed and started again, or when a migration brings a second one
up on the destination, the new server connects too: the wire accepts every connection and
answers each frame on the connection it came from, so the guest keeps one peer, 10.0.2.2,
whichever process carries its frames.

Rules:

1. Every frame goes to ``Responder.handle`` (its validation and bounds hold, and it
   never raises on frame content); its replies go back on the same connection. A
   connection that closes or fails is dropped; frames sent to it are lost, as on a link
   whose other end is gone.
2. Frames are counted as they arrive (``frames``), echo requests also per ``(identifier,
   sequence)``, so a check can compare with what the guest's driver counted as sent (a
   transmit buffer sent twice or never shows) and find an echo request sent twice.
3. The wire is a thread of the test process; ``stop`` ends it and closes every socket and
   the path. At most ``MAX_PEERS`` connections are held (the oldest is closed beyond that).
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections import Counter
from pathlib import Path

from devmodels.backends.net import Responder

__all__ = ["Wire", "MAX_PEERS"]

MAX_PEERS = 8
_FRAME = 65_536 + 64


class _Null:
    """The ``NetBackend`` the responder is built on: the wire moves frames itself."""

    offloads = None
    dropped = 0

    def send(self, frame: bytes) -> bool:
        return True

    def receive(self, limit: int = 64) -> list[bytes]:
        return []

    def set_vnet_hdr(self, enabled: bool) -> None:
        pass

    def fileno(self) -> int | None:
        return None

    def set_notify(self, notify: object) -> None:
        pass

    def close(self) -> None:
        pass


def _echo_request(frame: bytes) -> tuple[int, int] | None:
    """``(identifier, sequence)`` of an ICMP echo request in an Ethernet/IPv4 frame."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 1:
        return None
    start = 14 + 4 * (frame[14] & 0x0F)
    if len(frame) < start + 8 or frame[start] != 8:
        return None
    return int.from_bytes(frame[start + 4 : start + 6], "big"), int.from_bytes(frame[start + 6 : start + 8], "big")


class Wire:
    """The listener, its responder and the counts (rules 1–3).

    Args:
        path: the seqpacket socket path NIC servers connect to.
        ip: the responder's address.
    """

    def __init__(self, path: Path, ip: str = "10.0.2.2") -> None:
        self.path = path
        self.responder = Responder(_Null(), ip)  # type: ignore[arg-type]
        self.echo = Counter[tuple[int, int]]()
        self.frames = 0
        """Frames received from the guest, every connection together."""
        self.replies = 0
        """Frames sent towards the guest (some may die with the server that took them)."""
        self.connections = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(str(path))
        self._listener.listen(MAX_PEERS)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peers: list[socket.socket] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="vu-wire", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            for key, _mask in self._selector.select(1.0):
                if key.data == "wake":
                    continue
                if key.data is None:
                    self._accept()
                else:
                    self._serve(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        with self._lock:
            self.connections += 1
            self._peers.append(conn)
            self._selector.register(conn, selectors.EVENT_READ, "peer")
            while len(self._peers) > MAX_PEERS:
                self._drop(self._peers[0])

    def _drop(self, conn: socket.socket) -> None:
        if conn in self._peers:
            self._peers.remove(conn)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            frame = conn.recv(_FRAME)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            frame = b""
        if not frame:
            with self._lock:
                self._drop(conn)
            return
        request = _echo_request(frame)
        with self._lock:
            self.frames += 1
            if request is not None:
                self.echo[request] += 1
        for reply in self.responder.handle(frame):
            try:
                conn.send(reply)
            except OSError:
                break  # rule 1: lost, as on a link whose other end is gone
            with self._lock:
                self.replies += 1

    def echo_counts(self) -> Counter[tuple[int, int]]:
        """Echo requests seen, per ``(identifier, sequence)`` (rule 2)."""
        with self._lock:
            return Counter(self.echo)

    def stop(self) -> None:
        """End the thread, close every connection and the path (rule 3)."""
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        with self._lock:
            for conn in list(self._peers):
                self._drop(conn)
        self._selector.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            self.path.unlink()
        except OSError:
            pass
