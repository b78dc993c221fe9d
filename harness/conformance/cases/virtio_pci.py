"""Conformance: Linux's virtio_pci, virtio_blk and virtio_net against OUR virtio-pci
transport (modern, MSI-X) and devices, served by ``devmodels vfio-user`` to QEMU 11.1.

The vhost-user rows use QEMU's virtio-pci transport; these rows put ours in front of the
unmodified drivers: common/notify/ISR/device configuration structures, MSI-X vectors per
queue (``irq.delivered`` checks the driver's ``virtioN-req`` interrupt in /proc/interrupts),
split and packed rings, and one INTx-only row (``--opt msix=off``). The guest scripts and
most checks are the vhost-user rows' (``vhost_user.BLK_SCRIPT``/``NET_SCRIPT``):

- blk: O_DIRECT write and read-back, small I/O, fio with crc32c verification, flush; the
  host finds the guest's bytes in the image file (``host.image_data``).
- net: ARP and ping to the host-side ``Responder`` over a socketpair backend.
- every row: ``host.features`` reads the server's ``virtio.status`` trace (its log) and
  checks that the driver's last DRIVER_OK was reached with VIRTIO_F_RING_PACKED accepted
  exactly on the packed rows (the firmware may negotiate first; the last one is Linux's).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._served import VFIO_USER, ServedCase
from .vhost_user import BLK_REQUIRED_CHECKS, BLK_SCRIPT, DATA_LENGTH, DATA_OFFSET, IMAGE_SIZE, NET_REQUIRED_CHECKS, NET_SCRIPT

if TYPE_CHECKING:
    from ...guest import ImageBuilder
    from ...qemu.launcher import BootResult

__all__ = ["cases", "VirtioPciBlkCase", "VirtioPciNetCase", "negotiated_features"]

_VIRTIO_F_RING_PACKED = 34
_IRQ = ("virtio[0-9]+-(req|input)", "PCI-MSI")  # MSI-X lines read PCI-MSI on this kernel
_IRQ_INTX = ("virtio[0-9]+", "IO-APIC")
_DRIVER_OK = re.compile(r"trace virtio\.status .*after='[^']*DRIVER_OK[^']*'.* features=(0x[0-9a-f]+)")


def negotiated_features(log: str) -> int | None:
    """The features of the last DRIVER_OK the server's ``virtio.status`` trace shows."""
    found = _DRIVER_OK.findall(log)
    return int(found[-1], 16) if found else None


class _VirtioPciRow(ServedCase):
    """What the blk and net rows share: the options, the trace, ``host.features``."""

    def __init__(self, driver: str, kind: str, script: str, required: frozenset[str], *, packed: bool,
                 msix: bool = True) -> None:
        layout = "packed" if packed else "split"
        name = f"virtio-{kind}-pci-{layout}" + ("" if msix else "-intx")
        device = f"virtio-{kind} ({layout}, {'MSI-X' if msix else 'INTx'}) on our virtio-pci"
        required = (required - {"host.ring_layout"}) | {"host.features"}
        super().__init__(driver, device, f"virtio-{kind}", script, attachment=VFIO_USER, name=name,
                         required_checks=required, irq=_IRQ if msix else _IRQ_INTX)
        self.packed = packed
        self.options = ["--opt", f"packed={'on' if packed else 'off'}", "--opt", f"msix={'on' if msix else 'off'}"]
        self.server_env = {"DEVMODELS_TRACE": "virtio.status"}

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The server outlived the guest, and the last negotiation's ring layout (``host.features``)."""
        checks = super().host_checks(result)
        log = self.server_log.read_text(errors="replace") if self.server_log and self.server_log.exists() else ""
        features = negotiated_features(log)
        if features is None:
            return checks | {"host.features": (False, "no DRIVER_OK in the server's virtio.status trace")}
        packed = bool(features >> _VIRTIO_F_RING_PACKED & 1)
        detail = f"features {features:#x}: {'packed' if packed else 'split'} rings"
        return checks | {"host.features": (packed == self.packed, detail)}


class VirtioPciBlkCase(_VirtioPciRow):
    """virtio_blk on our virtio-pci over vfio-user, a raw image file behind it."""

    def __init__(self, packed: bool, msix: bool = True) -> None:
        super().__init__("virtio_blk", "blk", BLK_SCRIPT, BLK_REQUIRED_CHECKS, packed=packed, msix=msix)
        self.image: Path | None = None

    def image_extras(self, builder: ImageBuilder) -> None:
        """fio and its libraries, when the host has fio."""
        fio = shutil.which("fio")
        if fio is not None:
            builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """A raw image file of ``IMAGE_SIZE`` bytes."""
        self.image = workdir / "disk.img"
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_SIZE)
        return ["--backend", f"file:{self.image}", *self.options], []

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The checksum the guest reported matches the image file's bytes."""
        checks = super().host_checks(result)
        reported = result.checks.get("blk.data", (False, ""))[1].strip()
        if self.image is None or not reported:
            return checks | {"host.image_data": (False, "the guest reported no checksum")}
        with open(self.image, "rb") as f:
            f.seek(DATA_OFFSET)
            digest = hashlib.sha256(f.read(DATA_LENGTH)).hexdigest()
        return checks | {"host.image_data": (digest == reported, digest)}


class VirtioPciNetCase(_VirtioPciRow):
    """virtio_net on our virtio-pci over vfio-user; the backend is a socketpair whose far end
    is a ``Responder`` at 10.0.2.2 in this process."""

    def __init__(self, packed: bool) -> None:
        super().__init__("virtio_net", "net", NET_SCRIPT, NET_REQUIRED_CHECKS, packed=packed)
        self.responder: Any = None

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """A socketpair: the device's end goes to the server, ours feeds the responder."""
        from devmodels.backends.net import Responder, SocketBackend

        host_end, device_end = SocketBackend.pair("seqpacket")
        stack.callback(host_end.close)
        stack.callback(device_end.close)
        self.responder = Responder(host_end, "10.0.2.2")
        stack.enter_context(self.responder)
        fd = device_end.fileno()
        assert fd is not None
        return ["--backend", f"socket-fd:{fd}", *self.options], [fd]

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The responder answered the guest's ARP and echo requests."""
        checks = super().host_checks(result)
        if self.responder is None:
            return checks | {"host.arp": (False, "not started"), "host.icmp": (False, "not started")}
        stats = self.responder.stats()
        return checks | {
            "host.arp": (stats.arp_replies > 0, f"{stats.arp_replies} ARP replies"),
            "host.icmp": (stats.icmp_replies >= 5, f"{stats.icmp_replies} echo replies"),
        }


def cases() -> list[ServedCase]:
    """blk split and packed (MSI-X), blk split on INTx, net split and packed."""
    return [VirtioPciBlkCase(False), VirtioPciBlkCase(True), VirtioPciBlkCase(False, msix=False),
            VirtioPciNetCase(False), VirtioPciNetCase(True)]
