"""Cases whose device is served by devmodels behind QEMU's ``x-pci-proxy-dev``.

Rules:

1. The device runs in its own process, ``python -m mpqemu --fd N --device
   NAME [ARGS]``, exactly as a user would run it; QEMU gets the other end of a socketpair
   as ``-device x-pci-proxy-dev,fd=M``. Guest RAM is a shared memfd so the device can DMA.
2. The server process is ended by its PID when the case's ``ExitStack`` closes (after QEMU
   exited, it normally has already left on its own: the peer closed the socket).
3. ``server_setup(stack, workdir)`` lets a device case add backend arguments (image
   files, network sockets) and descriptors the server inherits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .._case import Attachment

if TYPE_CHECKING:
    from ...guest import ImageBuilder
    from ...qemu.launcher import BootResult

__all__ = ["MpqemuCase", "PROXY_PATH"]

PROXY_PATH = "x-pci-proxy-dev"


class MpqemuCase:
    """A device served by the mpqemu server to QEMU's proxy (rules 1–3).

    Args:
        driver: the Linux driver the row is about.
        device: the row's device name.
        server_device: the name the mpqemu CLI knows the device by.
        guest_script: the guest's test script.
        name: the case id (default ``<driver>-proxy``).
        append: extra kernel command-line words.
        required_checks: every guest and host check the row must report (the case rule 5).
    """

    path = PROXY_PATH

    def __init__(
        self,
        driver: str,
        device: str,
        server_device: str,
        guest_script: str,
        *,
        name: str | None = None,
        append: tuple[str, ...] = (),
        required_checks: Iterable[str] = (),
    ) -> None:
        self.driver = driver
        self.device = device
        self.server_device = server_device
        self.guest_script = guest_script
        self._name = name or f"{driver}-proxy"
        self._append = list(append)
        self.required_checks = frozenset(required_checks)
        self.server_log: Path | None = None

    @property
    def name(self) -> str:
        """The case id."""
        return self._name

    def image_extras(self, builder: ImageBuilder) -> None:
        """No extra files by default."""

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """Extra arguments for the device server and fds it inherits (rule 3)."""
        return [], []

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """Start the device process and return the proxy attachment (rule 1)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stack.callback(theirs.close)
        stack.callback(ours.close)
        self.server_log = workdir / "server.log"
        log = stack.enter_context(open(self.server_log, "wb"))
        extra_args, extra_fds = self.server_setup(stack, workdir)
        argv = [sys.executable, "-m", "mpqemu", "--fd", str(ours.fileno()),
                "--device", self.server_device, *extra_args]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        server = subprocess.Popen(argv, pass_fds=[ours.fileno(), *extra_fds], stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
        stack.callback(_end, server)
        ours.close()
        return Attachment(
            qemu_args=["-device", f"{PROXY_PATH},id=dev0,fd={theirs.fileno()}"],
            pass_fds=[theirs.fileno()],
            shared_memory=True,
            append=list(self._append),
        )

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """No host-side checks by default."""
        return {}


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
