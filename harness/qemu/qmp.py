"""A minimal QMP client: enough to drive a migration (QEMU docs/interop/qmp-spec.rst).

Rules:

1. ``QmpClient.connect(path)`` connects to ``-qmp unix:PATH,server=on,wait=off``, reads
   the greeting and negotiates (``qmp_capabilities``), retrying the connection until the
   socket appears or the timeout runs out.
2. ``execute(command, **arguments)`` sends one command and returns its ``return`` value;
   an ``error`` reply raises ``QmpError`` carrying QEMU's class and description verbatim.
   Asynchronous events that arrive meanwhile are kept in ``events`` (qmp-spec.rst
   "Asynchronous events"), in order.
3. Every wait is bounded by the client's timeout; a silent or closed QEMU is a
   ``HostError``.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from devmodels import HostError

__all__ = ["QmpClient", "QmpError"]


class QmpError(HostError):
    """QEMU answered a command with an error (``error.class`` and ``error.desc``)."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP {command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QmpClient:
    """One QMP connection (rules 1–3).

    Args:
        sock: a connected stream socket to QEMU's QMP server.
        timeout: seconds any one wait may take.
    """

    def __init__(self, sock: socket.socket, timeout: float = 30.0) -> None:
        self._sock = sock
        self._timeout = timeout
        self._sock.settimeout(timeout)
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise HostError(f"not a QMP greeting: {greeting!r}")
        self.greeting = greeting
        self.execute("qmp_capabilities")

    @classmethod
    def connect(cls, path: Path | str, timeout: float = 30.0) -> QmpClient:
        """Connect to a QMP socket, waiting for QEMU to create it (rule 1).

        Raises:
            HostError: no QMP server answered within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
            except OSError as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise HostError(f"no QMP server at {path}: {exc}") from None
                time.sleep(0.05)
                continue
            try:
                return cls(sock, timeout)
            except BaseException:
                sock.close()
                raise

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise HostError("QMP: QEMU did not answer in time") from None
            except OSError as exc:
                raise HostError(f"QMP: {exc}") from None
            if not chunk:
                raise HostError("QMP: QEMU closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise HostError(f"QMP: not an object: {line!r}")
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command`` and return its result (rule 2).

        Raises:
            QmpError: QEMU refused the command.
            HostError: the connection failed or timed out.
        """
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise HostError(f"QMP {command}: {exc}") from None
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                error = message["error"]
                raise QmpError(command, str(error.get("class")), str(error.get("desc")))
            return message.get("return")

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event called ``name`` (already received or arriving within ``timeout``).

        Raises:
            HostError: none arrived in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("event") == name:
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostError(f"QMP: no {name} event within {timeout} s")
            self._sock.settimeout(remaining)
            try:
                message = self._read()
            finally:
                self._sock.settimeout(self._timeout)
            if "event" in message:
                self.events.append(message)

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
