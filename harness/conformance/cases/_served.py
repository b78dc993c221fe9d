"""Cases whose PCI device is served by a devmodels process, over either PCI attachment path.

Rules:

1. The device runs in its own process, exactly as a user would run it, from the device
   registry (``harness.serve.registry``), over one of two attachments:
   - ``PROXY``: ``devmodels mpqemu --fd N --device NAME [ARGS]`` on QEMU 7.2; QEMU gets the
     other end of a socketpair as ``-device x-pci-proxy-dev,fd=M``. That proxy delivers
     INTx only through KVM irqfds, and KVM cannot boot stock kernels here, so the guest
     polls shared interrupt handlers from the timer tick (``POLLED_INTX_APPEND``: every
     poll reaches the handler; latency is one tick).
   - ``VFIO_USER``: ``devmodels vfio-user --socket-path SOCK --device NAME [ARGS]`` on QEMU
     11.1 (``harness.qemu.binaries.QEMU_11_1``), attached with ``-device
     {"driver":"vfio-user-pci","socket":...}``. INTx, MSI and MSI-X reach the guest: no
     polling, and the row checks in /proc/interrupts that the driver's interrupt arrived
     the way the case expects (``irq``).
   Guest RAM is a shared memfd so the device can DMA. The row's ``path`` names the
   attachment and, for vfio-user, the QEMU version.
2. ``server_setup(stack, workdir)`` lets a device case add backend arguments (image
   files, network sockets) and descriptors the server inherits; the same words serve both
   attachments.
3. The server process is ended by its PID when the case's ``ExitStack`` closes. No guest
   action may end it (``host.server``): behind the proxy it leaves on its own, with status
   0, once QEMU closed the socket; a vfio-user server keeps listening for the next client.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from devmodels import HostError, UsageError

from ...qemu.binaries import QEMU_11_1
from .._case import Attachment
from ...processes import end_process

if TYPE_CHECKING:
    from ...guest import ImageBuilder
    from ...qemu.launcher import BootResult

__all__ = ["ServedCase", "PROXY", "VFIO_USER", "ATTACHMENTS", "POLLED_INTX_APPEND", "PROXY_PATH"]

PROXY = "x-pci-proxy-dev"
VFIO_USER = "vfio-user"
ATTACHMENTS = (PROXY, VFIO_USER)
PROXY_PATH = PROXY  # the row's path for the proxy attachment
POLLED_INTX_APPEND = ("irqpoll", "nolapic_timer", "nohz=off")  # rule 1, proxy only
_LISTEN_TIMEOUT = 30.0
_SUFFIX = {PROXY: "proxy", VFIO_USER: "vfio-user"}


def irq_check_script(pattern: str, kind: str) -> str:
    """Guest lines reporting ``irq.delivered``: the /proc/interrupts line matching
    ``pattern`` (an ERE) counts at least one interrupt and names ``kind`` (``IO-APIC``,
    ``PCI-MSI``, ``PCI-MSIX``) (rule 1)."""
    return rf"""
irq_line=$(grep -E '{pattern}' /proc/interrupts | head -n 1)
irq_n=0
for irq_w in $irq_line; do case $irq_w in *[!0-9]*) ;; *) irq_n=$((irq_n + irq_w)) ;; esac; done
case "$irq_line" in
    *{kind}*) if [ "$irq_n" -gt 0 ]; then report irq.delivered PASS "$irq_n {kind}"; else report irq.delivered FAIL "none: $irq_line"; fi ;;
    *) report irq.delivered FAIL "want {kind}: $(echo $irq_line | cut -c 1-120)" ;;
esac
"""


class ServedCase:
    """A device served by a devmodels process over ``attachment`` (rules 1–3).

    Args:
        driver: the Linux driver the row is about.
        device: the row's device name.
        server_device: the registry's name for the device.
        guest_script: the guest's test script.
        attachment: ``PROXY`` (default) or ``VFIO_USER``.
        name: the case id stem; the attachment's suffix is added (``e1000`` →
            ``e1000-proxy`` / ``e1000-vfio-user``).
        append: extra kernel command-line words (both attachments).
        required_checks: every guest and host check the row must report (the case rule 5).
        irq: ``(pattern, kind)`` of the interrupt the driver must receive over vfio-user
            (``irq_check_script``); None for a case without an interrupt-driven driver.

    Raises:
        UsageError: an unknown attachment.
    """

    def __init__(
        self,
        driver: str,
        device: str,
        server_device: str,
        guest_script: str,
        *,
        attachment: str = PROXY,
        name: str | None = None,
        append: tuple[str, ...] = (),
        required_checks: Iterable[str] = (),
        irq: tuple[str, str] | None = None,
    ) -> None:
        if attachment not in ATTACHMENTS:
            raise UsageError(f"attachment must be one of {', '.join(ATTACHMENTS)}, not {attachment!r}")
        self.attachment = attachment
        self.driver = driver
        self.device = device
        self.server_device = server_device
        proxied = attachment == PROXY
        self.path = PROXY_PATH if proxied else f"{VFIO_USER} (QEMU {QEMU_11_1.version()})"
        irq_lines = irq_check_script(*irq) if irq is not None and not proxied else ""
        self.guest_script = guest_script + irq_lines
        self._name = f"{name or driver}-{_SUFFIX[attachment]}"
        self._append = [*(POLLED_INTX_APPEND if proxied else ()), *append]
        self.required_checks = frozenset(required_checks) | {"host.server"} | ({"irq.delivered"} if irq_lines else set())
        self.server_log: Path | None = None
        self.server_env: dict[str, str] = {}  # more environment for the server (DEVMODELS_TRACE, ...)
        self._server: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        """The case id."""
        return self._name

    def image_extras(self, builder: ImageBuilder) -> None:
        """No extra files by default."""

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """Extra arguments for the device server and fds it inherits (rule 2)."""
        return [], []

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """Start the device process and return the attachment (rule 1).

        Raises:
            HostError: QEMU 11.1 is missing (vfio-user), or the server did not start.
        """
        self.server_log = workdir / "server.log"
        log = stack.enter_context(open(self.server_log, "wb"))
        if self.attachment == PROXY:
            return self._start_proxy(stack, workdir, log)
        return self._start_vfio_user(stack, workdir, log)

    def _spawn(self, stack: contextlib.ExitStack, argv: list[str], pass_fds: list[int], log: IO[bytes]) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.server_env)
        server = subprocess.Popen([sys.executable, "-m", "devmodels", *argv], pass_fds=pass_fds,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._server = server
        stack.callback(end_process, server)

    def _start_proxy(self, stack: contextlib.ExitStack, workdir: Path, log: IO[bytes]) -> Attachment:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stack.callback(theirs.close)
        stack.callback(ours.close)
        extra_args, extra_fds = self.server_setup(stack, workdir)
        self._spawn(stack, ["mpqemu", "--fd", str(ours.fileno()), "--device", self.server_device, *extra_args],
                    [ours.fileno(), *extra_fds], log)
        ours.close()
        return Attachment(
            qemu_args=["-device", f"{PROXY},id=dev0,fd={theirs.fileno()}"],
            pass_fds=[theirs.fileno()],
            shared_memory=True,
            append=list(self._append),
        )

    def _start_vfio_user(self, stack: contextlib.ExitStack, workdir: Path, log: IO[bytes]) -> Attachment:
        reason = QEMU_11_1.unavailable()
        if reason is not None:
            raise HostError(reason)
        sock = workdir / "device.sock"
        extra_args, extra_fds = self.server_setup(stack, workdir)
        self._spawn(stack, ["vfio-user", "--socket-path", str(sock), "--device", self.server_device, *extra_args],
                    extra_fds, log)
        deadline = time.monotonic() + _LISTEN_TIMEOUT
        while not sock.exists():
            server = self._server
            assert server is not None
            if server.poll() is not None or time.monotonic() > deadline:
                assert self.server_log is not None
                raise HostError(f"devmodels vfio-user did not start: {self.server_log.read_text()[-500:]}")
            time.sleep(0.05)
        device = {"driver": "vfio-user-pci", "id": "dev0", "socket": {"path": str(sock), "type": "unix"}}
        return Attachment(qemu_args=["-device", json.dumps(device, separators=(",", ":"))], shared_memory=True,
                          append=list(self._append), qemu=QEMU_11_1)

    def server_check(self) -> dict[str, tuple[bool, str]]:
        """``host.server`` (rule 3): the server outlived every guest action."""
        server = self._server
        if server is None:
            return {"host.server": (False, "never started")}
        status = server.poll()
        if self.attachment == VFIO_USER:
            return {"host.server": (status is None, "still serving" if status is None else f"exited with {status}")}
        if status is None:
            try:
                status = server.wait(5)  # QEMU closed the socket: the server leaves on its own
            except subprocess.TimeoutExpired:
                return {"host.server": (True, "still serving")}
        return {"host.server": (status == 0, f"exited with {status}")}

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The server check; device cases add theirs (``super().host_checks(result) | ...``)."""
        return self.server_check()


