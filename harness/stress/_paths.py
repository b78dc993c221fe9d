"""Every way a disk or a NIC of ours reaches a guest, as the stress mode starts it.

Rules:

1. A ``StressPath`` names one device on one attachment and the QEMU that runs it; its
   ``start`` opens the host side on the run's ``ExitStack`` (removed in reverse order when
   it closes) and returns a ``Started``: the QEMU arguments, our server's process and log,
   and for a NIC the peer in the network namespace.
2. Disks are sparse raw image files of ``DISK_SIZE`` in the run's work directory.
3. Every NIC uses a TAP backend: the server creates the TAP by name, the stress mode moves
   its host side into a network namespace it creates (``HOST_IP``), where a ``TcpSink``
   is the TCP peer (sink port: hashes what the guest sends; source port: serves the
   pattern once per connection) and the namespace's own stack answers the ping flood.
   One backend for every path keeps the paths comparable; the socket backend of the
   conformance rows has no TCP stack behind it.
4. Paths on QEMU 7.2 boot the guest with more than one possible vCPU: 7.2's TCG drops the
   guest's memory barriers when ``maxcpus`` is 1 (fixed in 8.1, "tcg: Do not elide memory
   barriers for !CF_PARALLEL in system mode"), and event-idx drivers then lose interrupts.
   ``GuestCpus`` says which: two online vCPUs on the vhost-user paths; one online of two on
   the proxy paths, whose guests poll their INTx from the timer tick, which a second online
   vCPU slows down. QEMU 11.1 keeps the barriers with one vCPU.
5. QEMU 7.2's virtio-net front-end of a vhost-user netdev runs on INTx (``vectors=0``):
   with MSI-X, QEMU 7.2 itself crashes (SIGSEGV in ``vhost_net_start`` ->
   ``msix_set_vector_notifiers``, the guest notifier of the configuration interrupt,
   index -1, taken for a queue's) when the driver sets DRIVER_OK under TCG; later QEMUs
   skip that index in ``virtio_net_guest_notifier_mask``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmodels import HostError

from ..conformance.cases._served import PROXY, VFIO_USER
from ..qemu.binaries import QEMU_7_2, QEMU_11_1, QemuBinary
from ._guest import PATTERN_SIZE, PATTERN_SEED, SINK_PORT, SOURCE_PORT
from ._servers import StressServedCase, VhostUserServer

__all__ = ["StressPath", "Started", "GuestCpus", "PATHS", "select_paths", "DISK_SIZE", "HOST_IP", "GUEST_IP",
           "VHOST_USER", "DISK", "NIC"]

DISK_SIZE = 128 << 20
HOST_IP = "10.0.3.1"
GUEST_IP = "10.0.3.2"
GUEST_MAC = "52:54:00:12:34:56"
VHOST_USER = "vhost-user"
DISK = "disk"
NIC = "nic"
_counter = itertools.count()


@dataclass(frozen=True)
class GuestCpus:
    """``-smp ONLINE,maxcpus=MAX`` (rule 4)."""

    online: int
    maximum: int

    def args(self) -> list[str]:
        """QEMU arguments beyond the launcher's ``-smp ONLINE`` (QEMU merges ``-smp`` options)."""
        return [] if self.maximum == self.online else ["-smp", f"maxcpus={self.maximum}"]

    def __str__(self) -> str:
        return str(self.online) if self.maximum == self.online else f"{self.online},maxcpus={self.maximum}"


@dataclass
class Started:
    """The host side of one run (rule 1)."""

    qemu_args: list[str]
    server: subprocess.Popen[bytes]
    server_log: Path
    pass_fds: list[int] = field(default_factory=list)
    append: list[str] = field(default_factory=list)
    sink: Any = None  # a TcpSink for a NIC
    namespace: Any = None


@dataclass(frozen=True)
class StressPath:
    """One device on one attachment (rule 1).

    Attributes:
        name: the path's id (``vhost-user-blk``, ``ahci-proxy``, ...).
        kind: ``DISK`` or ``NIC``.
        device: what the guest sees.
        attachment: ``vhost-user``, ``x-pci-proxy-dev`` or ``vfio-user``.
        qemu: the QEMU that runs the guest.
        cpus: the guest's vCPUs (rule 4).
        guest_device: the guest's block device (``vda``, ``sda``) or ``eth0``.
        irq: an extended regular expression for the device's /proc/interrupts lines.
        start: opens the host side.
        layout: ``"split"`` or ``"packed"`` for a virtio device (the server's trace must show
            that the driver's rings have it), None otherwise.
    """

    name: str
    kind: str
    device: str
    attachment: str
    qemu: QemuBinary
    cpus: GuestCpus
    guest_device: str
    irq: str
    start: Callable[[contextlib.ExitStack, Path], Started]
    layout: str | None = None

    @property
    def vhost_user(self) -> bool:
        """Whether QEMU could fall back to a device of its own on this path."""
        return self.attachment == VHOST_USER


def _image(workdir: Path) -> Path:
    image = workdir / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_SIZE)
    return image


def _tap_name() -> str:
    return f"dmst{os.getpid() % 100000}x{next(_counter)}"[:15]


def _peer(stack: contextlib.ExitStack, tap: str, server: subprocess.Popen[bytes], log: Path,
          lifetime: float = 7200.0) -> tuple[Any, Any]:
    """The namespace around the TAP's host side and the TCP peer in it (rule 3), on ``stack``
    (the sink ends first, then the namespace goes)."""
    from ..conformance.cases.e1000_tap import NetNamespace, TcpSink

    namespace = stack.enter_context(NetNamespace.unique("stress"))
    try:
        namespace.adopt(tap, f"{HOST_IP}/24", alive=lambda: server.poll() is None)
    except HostError as exc:
        raise HostError(f"{exc}; server log: {log.read_text(errors='replace')[-500:]}") from exc
    sink = TcpSink(namespace, HOST_IP, sink_port=SINK_PORT, source_port=SOURCE_PORT, source_size=PATTERN_SIZE,
                   seed=PATTERN_SEED, lifetime=lifetime)
    stack.enter_context(sink)
    return namespace, sink


# -- vhost-user (QEMU 7.2's front-ends, our server program) --------------------------------------


def _vhost_user_blk(packed: bool) -> Callable[[contextlib.ExitStack, Path], Started]:
    def start(stack: contextlib.ExitStack, workdir: Path) -> Started:
        server = VhostUserServer(stack, workdir, "virtio-blk", f"file:{_image(workdir)}")
        server.wait_listening()
        options = ",packed=on" if packed else ""
        return Started(["-chardev", f"socket,id=vublk,path={server.socket_path}",
                        "-device", f"vhost-user-blk-pci,chardev=vublk,num-queues=1{options}"],
                       server.process, server.log)

    return start


def _vhost_user_net(packed: bool) -> Callable[[contextlib.ExitStack, Path], Started]:
    def start(stack: contextlib.ExitStack, workdir: Path) -> Started:
        tap = _tap_name()
        namespace_holder = stack.enter_context(contextlib.ExitStack())  # closes after the server ends
        server = VhostUserServer(stack, workdir, "virtio-net", f"tap:{tap}")
        namespace, sink = _peer(namespace_holder, tap, server.process, server.log)
        server.wait_listening()
        options = ",packed=on" if packed else ""
        return Started(["-chardev", f"socket,id=vunet,path={server.socket_path}",
                        "-netdev", "vhost-user,id=n0,chardev=vunet",
                        "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC},vectors=0{options}"],
                       server.process, server.log, sink=sink, namespace=namespace)

    return start


# -- PCI devices over x-pci-proxy-dev (7.2) and vfio-user (11.1) ----------------------------------


def _served(device: str, attachment: str, name: str, options: tuple[str, ...] = (),
            nic: bool = False) -> Callable[[contextlib.ExitStack, Path], Started]:
    def start(stack: contextlib.ExitStack, workdir: Path) -> Started:
        case = StressServedCase(device, attachment, name)
        if device.startswith("virtio-"):
            case.server_env = {"DEVMODELS_TRACE": "virtio.status"}  # the negotiated features, for the layout
        tap = _tap_name() if nic else ""
        backend = f"tap:{tap}" if nic else f"file:{_image(workdir)}"
        case.words = ["--backend", backend, *options]
        if nic:
            namespace_holder = stack.enter_context(contextlib.ExitStack())  # closes after the server ends
            attached = case.start(stack, workdir)
            process, log = case.process, case.server_log
            assert process is not None and log is not None
            namespace, sink = _peer(namespace_holder, tap, process, log)
        else:
            attached = case.start(stack, workdir)
            process, log = case.process, case.server_log
            assert process is not None and log is not None
            namespace = sink = None
        return Started(attached.qemu_args, process, log, pass_fds=list(attached.pass_fds),
                       append=list(attached.append), sink=sink, namespace=namespace)

    return start


_SMP2 = GuestCpus(2, 2)
_SMP1_OF_2 = GuestCpus(1, 2)
_SMP1 = GuestCpus(1, 1)
_VIRTIO_IRQ = r"virtio[0-9]+"
_PACKED = ("--opt", "packed=on")
_SPLIT = ("--opt", "packed=off")


def _paths() -> tuple[StressPath, ...]:
    blk, ahci, e1000, net = "virtio-blk", "ahci", "e1000", "virtio-net"
    return (
        StressPath("vhost-user-blk", DISK, "vhost-user-blk (split)", VHOST_USER, QEMU_7_2, _SMP2, "vda", _VIRTIO_IRQ,
                   _vhost_user_blk(False), "split"),
        StressPath("vhost-user-blk-packed", DISK, "vhost-user-blk (packed)", VHOST_USER, QEMU_7_2, _SMP2, "vda",
                   _VIRTIO_IRQ, _vhost_user_blk(True), "packed"),
        StressPath("ahci-proxy", DISK, "AHCI ICH9", PROXY, QEMU_7_2, _SMP1_OF_2, "sda", "ahci",
                   _served(ahci, PROXY, "ahci")),
        StressPath("ahci-vfio-user", DISK, "AHCI ICH9", VFIO_USER, QEMU_11_1, _SMP1, "sda", "ahci",
                   _served(ahci, VFIO_USER, "ahci")),
        StressPath("virtio-blk-pci-split-vfio-user", DISK, "virtio-blk (split, MSI-X) on our virtio-pci", VFIO_USER,
                   QEMU_11_1, _SMP1, "vda", _VIRTIO_IRQ, _served(blk, VFIO_USER, "virtio-blk-pci-split", _SPLIT), "split"),
        StressPath("virtio-blk-pci-packed-vfio-user", DISK, "virtio-blk (packed, MSI-X) on our virtio-pci", VFIO_USER,
                   QEMU_11_1, _SMP1, "vda", _VIRTIO_IRQ, _served(blk, VFIO_USER, "virtio-blk-pci-packed", _PACKED), "packed"),
        StressPath("virtio-blk-pci-split-intx-vfio-user", DISK, "virtio-blk (split, INTx) on our virtio-pci",
                   VFIO_USER, QEMU_11_1, _SMP1, "vda", _VIRTIO_IRQ,
                   _served(blk, VFIO_USER, "virtio-blk-pci-split-intx", (*_SPLIT, "--opt", "msix=off")), "split"),
        StressPath("e1000-tap-proxy", NIC, "e1000 82540EM (TAP)", PROXY, QEMU_7_2, _SMP1_OF_2, "eth0", "eth0",
                   _served(e1000, PROXY, "e1000-tap", nic=True)),
        StressPath("e1000-tap-vfio-user", NIC, "e1000 82540EM (TAP)", VFIO_USER, QEMU_11_1, _SMP1, "eth0", "eth0",
                   _served(e1000, VFIO_USER, "e1000-tap", nic=True)),
        StressPath("vhost-user-net", NIC, "vhost-user-net (split, TAP)", VHOST_USER, QEMU_7_2, _SMP2, "eth0",
                   _VIRTIO_IRQ, _vhost_user_net(False), "split"),
        StressPath("vhost-user-net-packed", NIC, "vhost-user-net (packed, TAP)", VHOST_USER, QEMU_7_2, _SMP2, "eth0",
                   _VIRTIO_IRQ, _vhost_user_net(True), "packed"),
        StressPath("virtio-net-pci-split-vfio-user", NIC, "virtio-net (split, MSI-X, TAP) on our virtio-pci",
                   VFIO_USER, QEMU_11_1, _SMP1, "eth0", _VIRTIO_IRQ,
                   _served(net, VFIO_USER, "virtio-net-pci-split", _SPLIT, nic=True), "split"),
        StressPath("virtio-net-pci-packed-vfio-user", NIC, "virtio-net (packed, MSI-X, TAP) on our virtio-pci",
                   VFIO_USER, QEMU_11_1, _SMP1, "eth0", _VIRTIO_IRQ,
                   _served(net, VFIO_USER, "virtio-net-pci-packed", _PACKED, nic=True), "packed"),
    )


PATHS: tuple[StressPath, ...] = _paths()


def select_paths(patterns: list[str] | tuple[str, ...] = ()) -> list[StressPath]:
    """The paths whose name matches a pattern (``fnmatch``; a pattern matching no name is
    tried as a prefix, as ``devmodels conformance --only`` does); all when none given."""
    import fnmatch

    if not patterns:
        return list(PATHS)
    names = [p.name for p in PATHS]
    globs = [p if any(fnmatch.fnmatchcase(n, p) for n in names) else f"{p}*" for p in patterns]
    return [path for path in PATHS if any(fnmatch.fnmatchcase(path.name, g) for g in globs)]
