"""The fault control socket: add, remove, arm and list faults while the guest runs.

Protocol: a UNIX stream socket; each request is one line of JSON, each answer one line of
JSON, in order::

    {"op": "add", "fault": {"kind": "net.link-down", "for_ms": 2000}}  -> {"ok": true, "id": "net.link-down#1"}
    {"op": "arm", "id": "flap"}                                        -> {"ok": true}
    {"op": "remove", "id": "flap"}                                     -> {"ok": true, "fault": {...}}
    {"op": "list"}                                  -> {"ok": true, "seed": 0, "supported": [...], "faults": [...]}
    {"op": "clear"}                                                    -> {"ok": true}
    anything wrong                                                     -> {"ok": false, "error": "why"}

Rules:

1. ``FaultControlServer`` is served by the device's loop (its descriptors are in
   ``descriptors()``, which ``FaultyServedDevice`` adds to the device's), so a request runs
   on the loop's thread, between guest accesses, like any other device work.
2. Input is untrusted and bounded: at most ``MAX_CLIENTS`` connections (more are closed at
   once), lines of at most ``MAX_LINE`` bytes (a longer one closes that connection), and
   a bad request gets an error answer; nothing a client sends raises out of the server.
3. ``FaultClient`` is the Python side: one method per op, a ``UsageError`` with the
   server's reason when it refuses.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import HostError, UsageError
from ..listen import listen_unix
from .engine import FaultEngine
from .plan import Fault

__all__ = ["FaultControlServer", "FaultClient", "MAX_CLIENTS", "MAX_LINE"]

_log = logging.getLogger(__name__)
MAX_CLIENTS = 8
MAX_LINE = 64 << 10


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()


class FaultControlServer:
    """Serves the protocol for ``engine`` on ``path`` (rules 1–2).

    Raises:
        HostError: the socket cannot be created (a non-socket file in the way, no permission).
    """

    def __init__(self, engine: FaultEngine, path: str | os.PathLike[str]) -> None:
        self.engine = engine
        self.path = os.fspath(path)
        try:
            listener = listen_unix(self.path, backlog=MAX_CLIENTS)  # appears once it accepts
        except HostError as exc:
            raise HostError(f"fault control socket: {exc}") from None
        listener.setblocking(False)
        self._listener: socket.socket | None = listener
        self._clients: dict[int, _Client] = {}
        self.requests = 0

    def descriptors(self) -> dict[int, Callable[[], None]]:
        """What the loop watches for the control socket (rule 1)."""
        if self._listener is None:
            return {}
        fds: dict[int, Callable[[], None]] = {self._listener.fileno(): self._accept}
        for fd in self._clients:
            fds[fd] = lambda fd=fd: self._readable(fd)  # type: ignore[misc]
        return fds

    def _accept(self) -> None:
        assert self._listener is not None  # only watched while open
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        if len(self._clients) >= MAX_CLIENTS:
            sock.close()
            return
        sock.setblocking(False)
        self._clients[sock.fileno()] = _Client(sock)

    def _readable(self, fd: int) -> None:
        client = self._clients.get(fd)
        if client is None:
            return
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        client.buffer += data
        while b"\n" in client.buffer:
            line, _, rest = bytes(client.buffer).partition(b"\n")
            client.buffer = bytearray(rest)
            answer = self.handle_line(line)
            try:
                # Non-blocking: a client that does not read its answers (the socket buffer,
                # hundreds of KiB, is full) is dropped rather than stall the loop (rule 2).
                out = json.dumps(answer).encode() + b"\n"
                sent = client.sock.send(out)
                if sent != len(out):
                    raise BlockingIOError
            except OSError:
                self._drop(fd)
                return
        if len(client.buffer) > MAX_LINE:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        client = self._clients.pop(fd, None)
        if client is not None:
            client.sock.close()

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """Answer one request line (rule 2)."""
        self.requests += 1
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
            return {"ok": False, "error": f"not JSON: {type(exc).__name__}: {str(exc)[:200]}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object"}
        try:
            return {"ok": True, **self.handle(request)}
        except UsageError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the device's loop (rule 2)
            _log.exception("fault control request %r failed", request.get("op"))
            return {"ok": False, "error": f"internal error: {exc!r}"}

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Run one request; its answer's fields besides ``ok``.

        Raises:
            UsageError: a bad request, or one the engine refuses.
        """
        op = request.get("op")
        engine = self.engine
        if op == "add":
            fault = Fault.from_dict(request.get("fault"))  # type: ignore[arg-type]
            return {"id": engine.add(fault)}
        if op in ("remove", "arm"):
            fault_id = request.get("id")
            if not isinstance(fault_id, str):
                raise UsageError(f"{op} needs an id")
            if op == "arm":
                engine.arm(fault_id)
                return {}
            return {"fault": engine.remove(fault_id).to_dict()}
        if op == "list":
            return {"seed": engine.seed, "supported": engine.supported(), "faults": engine.listing()}
        if op == "clear":
            engine.clear()
            return {}
        raise UsageError(f"unknown op {op!r} (add, remove, arm, list, clear)")

    def close(self) -> None:
        """Close every connection and the socket, and remove its path."""
        for fd in list(self._clients):
            self._drop(fd)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass


class FaultClient:
    """The control protocol from Python (rule 3).

    Args:
        path: the server's socket.
        timeout: seconds to wait for an answer.

    Raises:
        HostError: the socket cannot be reached.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(os.fspath(path))
        except OSError as exc:
            self._sock.close()
            raise HostError(f"fault control socket {os.fspath(path)}: {exc.strerror or exc}") from None
        self._file = self._sock.makefile("rb")

    def request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request and return the answer.

        Raises:
            UsageError: the server refused it (its reason).
            HostError: the connection broke.
        """
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            line = self._file.readline()
        except OSError as exc:
            raise HostError(f"fault control: {exc}") from None
        if not line:
            raise HostError("fault control: the server closed the connection")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise UsageError(f"fault control refused {request.get('op')}: {answer.get('error')}")
        return answer

    def add(self, fault: Fault | Mapping[str, Any]) -> str:
        """Add a fault; return its id."""
        data = fault.to_dict() if isinstance(fault, Fault) else dict(fault)
        return str(self.request({"op": "add", "fault": data})["id"])

    def remove(self, fault_id: str) -> dict[str, Any]:
        """Remove a fault; return its data."""
        return dict(self.request({"op": "remove", "id": fault_id})["fault"])

    def arm(self, fault_id: str) -> None:
        """Start a fault's window now."""
        self.request({"op": "arm", "id": fault_id})

    def list(self) -> list[dict[str, Any]]:
        """The faults in effect with their counters."""
        return list(self.request({"op": "list"})["faults"])

    def clear(self) -> None:
        """Remove every fault."""
        self.request({"op": "clear"})

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def __enter__(self) -> FaultClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
