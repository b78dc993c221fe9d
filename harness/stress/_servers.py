"""Starting our device servers for a stress run, each in its own process so its death shows.

Rules:

1. PCI devices start through the conformance suite's ``ServedCase`` (``devmodels mpqemu``
   behind QEMU 7.2's ``x-pci-proxy-dev``, ``devmodels vfio-user`` behind QEMU 11.1's
   ``vfio-user-pci``); ``StressServedCase`` only supplies the backend words.
2. virtio over vhost-user runs the ``devmodels vhost-user`` program. The command is moving to
   the registry's words (``--device virtio-blk --backend file:IMG --socket PATH``); whichever
   form ``devmodels vhost-user --help`` shows is used (``vhost_user_argv``).
3. The vhost-user server runs with the trace events that show a front-end falling back or
   a ring failing (``VHOST_USER_TRACE``), printed into its log; ``VhostUserEvents`` counts them
   in a piece of that log.
4. Every server is ended by its PID when the run's ``ExitStack`` closes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devmodels import HostError

from ..conformance.cases._served import ServedCase
from ..processes import end_process

__all__ = ["StressServedCase", "VhostUserServer", "VhostUserEvents", "vhost_user_argv", "VHOST_USER_TRACE",
           "python_env"]

VHOST_USER_TRACE = "vhost_user.connection,vhost_user.ring,vhost_user.error"
_LISTEN_TIMEOUT = 30.0
_REPO = Path(__file__).resolve().parents[2]


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a ``python -m devmodels`` child needs: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


class StressServedCase(ServedCase):
    """A registry device served over ``attachment`` with fixed backend words (rule 1).

    Args:
        server_device: the registry's device name (``ahci``, ``virtio-blk``, ``e1000``, ...).
        attachment: ``PROXY`` or ``VFIO_USER``.
        name: the path's name stem.
        words: the server's ``--backend``/``--opt`` words; computed late by ``words_for``
            when the words need the work directory (an image file, a TAP name).
    """

    def __init__(self, server_device: str, attachment: str, name: str) -> None:
        super().__init__(server_device, server_device, server_device, "", attachment=attachment, name=name)
        self.words: list[str] = []

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The server process once started."""
        return self._server

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """The words set before ``start``."""
        return list(self.words), []


@functools.cache
def _registry_form() -> bool:
    """Whether ``devmodels vhost-user`` takes the registry's ``--device`` words (rule 2)."""
    proc = subprocess.run([sys.executable, "-m", "devmodels", "vhost-user", "--help"], capture_output=True, text=True,
                          check=False, env=python_env(), stdin=subprocess.DEVNULL, timeout=60)
    return "--device" in proc.stdout


def vhost_user_argv(device: str, backend: str, socket_path: Path) -> list[str]:
    """The ``devmodels vhost-user`` arguments serving registry ``device`` (``virtio-blk`` or
    ``virtio-net``) over ``backend`` (``file:IMG``, ``tap:NAME``) on ``socket_path`` (rule 2)."""
    if _registry_form():
        return ["vhost-user", "--device", device, "--backend", backend, "--socket", str(socket_path)]
    if device == "virtio-blk":
        kind, _, image = backend.partition(":")
        if kind != "file":
            raise HostError(f"this devmodels vhost-user blk serves image files only, not {backend!r}")
        return ["vhost-user", "blk", "--socket", str(socket_path), "--image", image]
    return ["vhost-user", "net", "--socket", str(socket_path), "--backend", backend]


class VhostUserServer:
    """``devmodels vhost-user`` in its own process, its output in ``log`` (rules 2–4).

    Raises:
        HostError: it exited or did not listen within 30 s.
    """

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, device: str, backend: str) -> None:
        self.socket_path = workdir / "vhost-user.sock"
        self.log = workdir / "server.log"
        out = stack.enter_context(open(self.log, "wb"))
        argv = [sys.executable, "-m", "devmodels", *vhost_user_argv(device, backend, self.socket_path)]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=python_env({"DEVMODELS_TRACE": VHOST_USER_TRACE}))
        stack.callback(end_process, self.process)

    def wait_listening(self) -> None:
        """Return once the server says it is listening (rule 2): its "listening on" line comes after
        its signal handlers are in place, so a SIGTERM from then on ends it cleanly; the socket file
        alone appears a moment earlier."""
        deadline = time.monotonic() + _LISTEN_TIMEOUT
        while not (self.socket_path.exists() and b"listening on" in self.log.read_bytes()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise HostError(f"devmodels vhost-user did not start: {self.log.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)


_TRACE = re.compile(r"trace (vhost_user\.\w+) (.*)$")
_EVENT = re.compile(r"event='(\w+)'")


@dataclass(frozen=True)
class VhostUserEvents:
    """What the vhost-user trace shows in a piece of the server's log (rule 3).

    Attributes:
        connects, disconnects: front-end connections opened and closed.
        ring_starts, ring_stops: rings started and stopped.
        ring_failures: rings the device found broken (``event='failed'``) and device resets
            after one.
        errors: refused protocol messages.
        last_packed: whether the last ring started had the packed layout (None: no ring).
    """

    connects: int = 0
    disconnects: int = 0
    ring_starts: int = 0
    ring_stops: int = 0
    ring_failures: int = 0
    errors: int = 0
    last_packed: bool | None = None

    @classmethod
    def parse(cls, text: str) -> VhostUserEvents:
        """Count the events in ``text`` (log lines)."""
        counts = dict.fromkeys(("connects", "disconnects", "ring_starts", "ring_stops", "ring_failures", "errors"), 0)
        last_packed = None
        for line in text.splitlines():
            match = _TRACE.search(line)
            if match is None:
                continue
            name, rest = match.groups()
            event = _EVENT.search(rest)
            kind = event.group(1) if event else ""
            if name == "vhost_user.connection":
                key = {"connect": "connects", "disconnect": "disconnects"}.get(kind)
            elif name == "vhost_user.ring":
                key = {"start": "ring_starts", "stop": "ring_stops", "failed": "ring_failures",
                       "device_reset": "ring_failures"}.get(kind)
            else:
                key = "errors"
            if key is not None:
                counts[key] += 1
            if key == "ring_starts":
                last_packed = "packed=True" in rest
        return cls(**counts, last_packed=last_packed)

    def __sub__(self, earlier: VhostUserEvents) -> VhostUserEvents:
        """The counts between ``earlier`` and this (``last_packed`` is this one's)."""
        a, b = self.astuple(), earlier.astuple()
        return VhostUserEvents(a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3], a[4] - b[4], a[5] - b[5],
                               last_packed=self.last_packed)

    def astuple(self) -> tuple[int, ...]:
        """The counts in field order."""
        return (self.connects, self.disconnects, self.ring_starts, self.ring_stops, self.ring_failures, self.errors)


