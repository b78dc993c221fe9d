"""Where the hostile guest meets a device: device classes x attachment paths.

Rules:

1. A device class is what the guest program programs by hand (``e1000``, ``ahci``,
   ``testdev``, ``virtio-blk``, ``virtio-net``). An attachment path is one way a device
   joins a QEMU guest: one entry of ``PATHS``, naming its QEMU and, per device class, a
   starter. Adding a path is adding one entry.
2. A starter opens everything on the ``ExitStack`` it is given and returns a ``Started``:
   the QEMU arguments and inherited descriptors, which QEMU runs the guest, and our device
   server's process (None for QEMU's own devices), which the runner checks after every
   scenario.
3. Our servers start the way the conformance cases start them: PCI devices through
   ``ServedCase`` (``devmodels mpqemu`` behind QEMU 7.2's ``x-pci-proxy-dev``, ``devmodels
   vfio-user`` behind QEMU 11.1's ``vfio-user-pci``), virtio over vhost-user as the
   ``devmodels vhost-user`` program in its own process, so that its death shows.
4. Network devices talk to a host-side ``Responder`` at 10.0.2.2 (ours) or to QEMU's
   restricted slirp (QEMU's own devices): either answers the guest's ARP requests, which is
   the network liveness check. Disks are sparse 64 MiB raw images in the work directory.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmodels import HostError

from ..qemu.binaries import QEMU_7_2, QEMU_11_1, QemuBinary
from ..processes import end_process

__all__ = ["DEVICE_CLASSES", "Started", "Starter", "AttachmentPath", "PATHS", "path_named", "RESPONDER_IP", "GUEST_MAC"]

DEVICE_CLASSES = ("e1000", "ahci", "testdev", "virtio-blk", "virtio-net")
RESPONDER_IP = "10.0.2.2"
GUEST_MAC = "52:54:00:12:34:56"
DISK_SIZE = 64 << 20
_LISTEN_TIMEOUT = 30.0


@dataclass
class Started:
    """A device ready for QEMU (rule 2)."""

    qemu_args: list[str]
    qemu: QemuBinary = QEMU_7_2
    pass_fds: list[int] = field(default_factory=list)
    server: subprocess.Popen[bytes] | None = None
    server_log: Path | None = None


Starter = Callable[[contextlib.ExitStack, Path], Started]


@dataclass(frozen=True)
class AttachmentPath:
    """One attachment path (rule 1).

    Attributes:
        name: the column label (``x-pci-proxy-dev``, ``vhost-user``, ``vfio-user``, ``qemu``).
        ours: True when our device serves the guest; False for QEMU's own devices (the
            reference column).
        qemu: the QEMU that runs the guest on this path.
        starters: device class -> starter.
    """

    name: str
    ours: bool
    qemu: QemuBinary
    starters: Mapping[str, Starter]

    @property
    def label(self) -> str:
        """The column heading: the name and the QEMU version."""
        owner = "ours" if self.ours else "QEMU's"
        return f"{self.name} ({owner}, QEMU {self.qemu.label})"


def _disk(workdir: Path) -> Path:
    image = workdir / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_SIZE)
    return image


def _responder(stack: contextlib.ExitStack, backend: Any) -> None:
    from devmodels.backends.net.responder import Responder

    stack.callback(backend.close)
    stack.enter_context(Responder(backend, RESPONDER_IP))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env




# -- our PCI devices through the conformance cases' ServedCase (rule 3) ----------------------


def _served_case(device_class: str, attachment: str) -> Any:
    from ..conformance.cases._served import ServedCase

    if device_class == "e1000":
        from ..conformance.cases.e1000 import E1000Case

        return E1000Case(attachment)
    if device_class == "ahci":
        from ..conformance.cases.ahci import AhciCase

        return AhciCase(attachment)

    class _HostileServed(ServedCase):
        def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
            if device_class == "virtio-blk":
                return ["--backend", f"file:{_disk(workdir)}"], []
            if device_class == "virtio-net":
                from devmodels.backends.net import SocketBackend

                host_end, device_end = SocketBackend.pair("seqpacket")
                stack.callback(device_end.close)
                _responder(stack, host_end)
                fd = device_end.fileno()
                assert fd is not None
                return ["--backend", f"socket-fd:{fd}"], [fd]
            return [], []

    return _HostileServed("none (hostile guest)", device_class, device_class, "", attachment=attachment,
                          name=f"hostile-{device_class}")


def served(device_class: str, attachment: str) -> Starter:
    """A starter for our ``device_class`` over ``attachment`` (``PROXY`` or ``VFIO_USER``)."""

    def start(stack: contextlib.ExitStack, workdir: Path) -> Started:
        case = _served_case(device_class, attachment)
        attached = case.start(stack, workdir)
        # ServedCase keeps its server process private; the runner needs it after every scenario.
        server = getattr(case, "_server", None)
        return Started(attached.qemu_args, attached.qemu, attached.pass_fds, server, case.server_log)

    return start


# -- our virtio devices over vhost-user: the devmodels vhost-user program (rule 3) ------------


def _vhost_user_server(stack: contextlib.ExitStack, workdir: Path, args: list[str]) -> tuple[subprocess.Popen[bytes], Path, Path]:
    socket_path = workdir / "vhost-user.sock"
    log_path = workdir / "server.log"
    log = stack.enter_context(open(log_path, "wb"))
    server = subprocess.Popen([sys.executable, "-m", "devmodels", "vhost-user", "--socket",
                               str(socket_path), *args], stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, env=_env())
    stack.callback(end_process, server)
    return server, socket_path, log_path


def _wait_listening(server: subprocess.Popen[bytes], socket_path: Path, log_path: Path) -> None:
    deadline = time.monotonic() + _LISTEN_TIMEOUT
    while not socket_path.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise HostError(f"devmodels vhost-user did not start: {log_path.read_text(errors='replace')[-500:]}")
        time.sleep(0.05)


def vhost_user_blk(stack: contextlib.ExitStack, workdir: Path) -> Started:
    """``devmodels vhost-user --device virtio-blk`` over a raw image; QEMU's ``vhost-user-blk-pci``."""
    server, socket_path, log_path = _vhost_user_server(stack, workdir, ["--device", "virtio-blk",
                                                                         "--backend", f"file:{_disk(workdir)}"])
    _wait_listening(server, socket_path, log_path)
    return Started(["-chardev", f"socket,id=vu,path={socket_path},reconnect=1",
                    "-device", "vhost-user-blk-pci,chardev=vu,num-queues=1"], server=server, server_log=log_path)


def vhost_user_net(stack: contextlib.ExitStack, workdir: Path) -> Started:
    """``devmodels vhost-user --device virtio-net`` whose wire is a seqpacket socket to a ``Responder``."""
    from devmodels.backends.net import SocketBackend

    wire = workdir / "wire.sock"
    accepted: list[Any] = []
    failure: list[BaseException] = []

    def accept() -> None:
        try:
            accepted.append(SocketBackend.listen(str(wire), timeout=_LISTEN_TIMEOUT))
        except BaseException as exc:  # noqa: BLE001 - re-raised below on the caller's thread
            failure.append(exc)

    listener = threading.Thread(target=accept, name="hostile-wire", daemon=True)
    listener.start()
    while not wire.exists() and listener.is_alive():
        time.sleep(0.01)
    server, socket_path, log_path = _vhost_user_server(stack, workdir, ["--device", "virtio-net", "--backend",
                                                                        f"socket:{wire}", "--opt", f"mac={GUEST_MAC}"])
    listener.join(_LISTEN_TIMEOUT + 5)
    if failure or not accepted:
        raise HostError(f"devmodels vhost-user net never connected its wire: {failure or 'timed out'}")
    _responder(stack, accepted[0])
    _wait_listening(server, socket_path, log_path)
    return Started(["-chardev", f"socket,id=vu,path={socket_path},reconnect=1", "-netdev", "vhost-user,id=n0,chardev=vu",
                    "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC},vectors=0"],
                   server=server, server_log=log_path)


# -- QEMU's own devices: the reference column -------------------------------------------------


def _qemu_disk(device: str) -> Starter:
    def start(stack: contextlib.ExitStack, workdir: Path) -> Started:
        drive = f"if=none,id=d0,file={_disk(workdir)},format=raw"
        if device == "ich9-ahci":
            return Started(["-drive", drive, "-device", "ich9-ahci,id=ahci0", "-device", "ide-hd,drive=d0,bus=ahci0.0"])
        return Started(["-drive", drive, "-device", f"{device},drive=d0"])

    return start


def _qemu_nic(device: str) -> Starter:
    def start(stack: contextlib.ExitStack, workdir: Path) -> Started:
        return Started(["-netdev", "user,id=n0,restrict=on", "-device", f"{device},netdev=n0,mac={GUEST_MAC}"])

    return start


def _paths() -> tuple[AttachmentPath, ...]:
    from ..conformance.cases._served import PROXY, VFIO_USER

    return (
        AttachmentPath("x-pci-proxy-dev", True, QEMU_7_2,
                       {cls: served(cls, PROXY) for cls in ("e1000", "ahci", "testdev")}),
        AttachmentPath("vhost-user", True, QEMU_7_2, {"virtio-blk": vhost_user_blk, "virtio-net": vhost_user_net}),
        AttachmentPath("vfio-user", True, QEMU_11_1, {cls: served(cls, VFIO_USER) for cls in DEVICE_CLASSES}),
        AttachmentPath("qemu", False, QEMU_7_2, {
            "e1000": _qemu_nic("e1000"),
            "ahci": _qemu_disk("ich9-ahci"),
            "virtio-blk": _qemu_disk("virtio-blk-pci"),
            "virtio-net": _qemu_nic("virtio-net-pci"),
        }),
    )


PATHS: tuple[AttachmentPath, ...] = _paths()


def path_named(name: str) -> AttachmentPath:
    """The path called ``name``.

    Raises:
        KeyError: no such path.
    """
    for path in PATHS:
        if path.name == name:
            return path
    raise KeyError(name)
