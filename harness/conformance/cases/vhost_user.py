"""Conformance: Linux's virtio_blk and virtio_net against devmodels devices over vhost-user.

QEMU (TCG) runs the virtio PCI front-ends (``vhost-user-blk-pci``, ``virtio-net-pci`` with
``-netdev vhost-user``) with guest RAM in a shared memfd; devmodels serves the rings from
a ``VhostUserServer`` thread in this process.

- blk (split and packed rings): the guest writes random data with O_DIRECT, reads it back
  and compares checksums, runs fio with verification when fio is in the image, flushes,
  and reports the checksum; the host then finds the same bytes in the image file.
- net: the guest brings eth0 up, resolves the host-side ``Responder`` with ARP and pings it
  (busybox ping); the host checks that the responder saw the guest's ARP and echo requests.
- every row: the host checks the ring layout really used (``host.ring_layout``). The device
  offers VIRTIO_F_RING_PACKED either way; QEMU's ``packed=on`` decides. Each time the
  session starts a ring it emits the ``vhost_user.ring`` trace event (``packed``, in the
  server's thread); ``RingLayouts`` records it with the features the device accepted at that
  moment. The firmware drives the disk first (SeaBIOS's virtio-blk negotiates split rings),
  so the check looks at the last negotiation, the Linux driver's: the rings started under
  the last accepted feature set. A packed row needs VIRTIO_F_RING_PACKED in that set and
  those rings started packed (virtio 1.2 §2.8); a split row needs neither.
- fio is required: without it in the image (no fio on the host) ``blk.fio_verify`` is not
  reported and the row fails naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devmodels.trace import RecordingSink
from .._case import Attachment

if TYPE_CHECKING:
    from ...guest import ImageBuilder
    from ...qemu.launcher import BootResult

__all__ = ["cases", "VhostUserBlkCase", "VhostUserNetCase", "RingLayouts", "BLK_SCRIPT", "NET_SCRIPT",
           "BLK_REQUIRED_CHECKS", "NET_REQUIRED_CHECKS"]

IMAGE_SIZE = 64 << 20
DATA_OFFSET = 1 << 20  # where the guest writes its random data (bytes)
DATA_LENGTH = 4 << 20
FIO_OFFSET = 16 << 20
FIO_SIZE = 8 << 20

BLK_SCRIPT = rf"""
check blk.vda.appears wait_for /dev/vda 30 || exit 0
drv=$(basename "$(readlink /sys/block/vda/device/driver)")
if [ "$drv" = virtio_blk ]; then report blk.driver PASS "$drv"; else report blk.driver FAIL "$drv"; fi
check blk.size sh -c '[ "$(cat /sys/block/vda/size)" = "{IMAGE_SIZE // 512}" ]'
dd if=/dev/urandom of=/tmp/data bs=64k count={DATA_LENGTH // 65536} 2>/dev/null
sum=$(sha256sum /tmp/data | cut -d' ' -f1)
check blk.write dd if=/tmp/data of=/dev/vda bs=64k seek={DATA_OFFSET // 65536} oflag=direct conv=fsync
got=$(dd if=/dev/vda bs=64k skip={DATA_OFFSET // 65536} count={DATA_LENGTH // 65536} iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$got" = "$sum" ]; then report blk.readback PASS; else report blk.readback FAIL "got $got want $sum"; fi
report blk.data PASS "$sum"
check blk.small_io sh -c 'dd if=/tmp/data of=/dev/vda bs=4096 count=8 seek=4096 oflag=direct 2>/dev/null && \
    [ "$(dd if=/dev/vda bs=4096 count=8 skip=4096 iflag=direct 2>/dev/null | sha256sum)" = \
      "$(dd if=/tmp/data bs=4096 count=8 2>/dev/null | sha256sum)" ]'
if [ -x /usr/bin/fio ]; then
    check blk.fio_verify /usr/bin/fio --name=verify --filename=/dev/vda --direct=1 --ioengine=libaio \
        --rw=randwrite --bs=4k --iodepth=16 --offset={FIO_OFFSET} --size={FIO_SIZE} --verify=crc32c \
        --do_verify=1 --verify_fatal=1 --output=/tmp/fio.log
fi
check blk.flush sync
"""

NET_SCRIPT = r"""
check net.eth0.appears wait_for /sys/class/net/eth0 30 || exit 0
drv=$(basename "$(readlink /sys/class/net/eth0/device/driver)")
if [ "$drv" = virtio_net ]; then report net.driver PASS "$drv"; else report net.driver FAIL "$drv"; fi
ip addr add 10.0.2.15/24 dev eth0
check net.up ip link set eth0 up
sleep 1
check net.ping ping -c 5 -W 5 10.0.2.2
check net.arp sh -c 'ip neigh show 10.0.2.2 | grep -q lladdr'
check net.ping_large ping -c 3 -s 1400 -W 5 10.0.2.2
"""


BLK_REQUIRED_CHECKS = frozenset({
    "blk.vda.appears", "blk.driver", "blk.size", "blk.write", "blk.readback", "blk.data", "blk.small_io",
    "blk.fio_verify", "blk.flush", "host.image_data", "host.ring_layout",
})

NET_REQUIRED_CHECKS = frozenset({
    "net.eth0.appears", "net.driver", "net.up", "net.ping", "net.arp", "net.ping_large", "host.arp", "host.icmp",
    "host.ring_layout",
})


class RingLayouts(RecordingSink):
    """The layout of every ring a vhost-user session started, with the features the device
    had accepted then (module docstring).

    Args:
        device: the served device (``negotiated`` is read when a ring starts).
    """

    def __init__(self, device: Any) -> None:
        super().__init__("vhost_user.ring")
        self._device = device
        self.starts: list[tuple[bool, int]] = []
        """(ring started packed, the device's negotiated features) per ring start."""

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        """Keep ring starts only (the sink sees every enabled event)."""
        if name == "vhost_user.ring" and fields.get("event") == "start":
            self.starts.append((bool(fields.get("packed")), int(self._device.negotiated)))

    def check(self, packed: bool) -> tuple[bool, str]:
        """``host.ring_layout``: the rings of the last negotiation have the expected layout
        and VIRTIO_F_RING_PACKED was accepted exactly when it should be (module docstring)."""
        from virtio.defs import VIRTIO_F_RING_PACKED

        want = "packed" if packed else "split"
        history = ", ".join(f"{'packed' if p else 'split'}/{features:#x}" for p, features in self.starts)
        detail = f"want {want}; ring starts (layout/accepted features): {history or 'none'}"
        if not self.starts:
            return False, detail
        last = self.starts[-1][1]
        final = [started_packed for started_packed, features in self.starts if features == last]
        accepted = bool(last >> VIRTIO_F_RING_PACKED & 1)
        return accepted == packed and all(p == packed for p in final), detail


def _record_layouts(stack: contextlib.ExitStack, device: Any) -> RingLayouts:
    layouts = RingLayouts(device)
    stack.enter_context(layouts)
    return layouts


@dataclass
class VhostUserBlkCase:
    """virtio_blk over vhost-user-blk-pci, served by a ``VirtioBlkDevice``."""

    packed: bool = False
    driver: str = "virtio_blk"
    path: str = "vhost-user"
    guest_script: str = BLK_SCRIPT
    required_checks: frozenset[str] = BLK_REQUIRED_CHECKS
    image: Path | None = field(default=None, repr=False)
    layouts: RingLayouts | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        """The matrix's device column."""
        return "vhost-user-blk" + (" (packed)" if self.packed else "")

    @property
    def name(self) -> str:
        """The case (and embedded test) name."""
        return "vhost-user-blk" + ("-packed" if self.packed else "")

    def image_extras(self, builder: ImageBuilder) -> None:
        """fio and its libraries, when the host has fio."""
        fio = shutil.which("fio")
        if fio is not None:
            builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """A raw image, a ``VirtioBlkDevice`` over it and a vhost-user server thread."""
        from devmodels.backends import RawFileBackend
        from devmodels import GuestMemory
        from virtio.blk import VirtioBlkDevice
        from virtio.vhost_user import VhostUserServer

        self.image = workdir / "disk.img"
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_SIZE)
        backend = RawFileBackend(self.image, workers=4)
        stack.callback(backend.close)
        # QEMU runs vhost-user-blk-pci queues at 128: no more segments than that holds.
        device = VirtioBlkDevice(GuestMemory(), backend, queue_size=256, seg_max=126, packed=True)
        self.layouts = _record_layouts(stack, device)
        socket_path = workdir / "blk.sock"
        server = VhostUserServer(device, socket_path)
        stack.callback(server.close)
        server.start()
        options = ",packed=on" if self.packed else ""
        return Attachment(
            qemu_args=["-chardev", f"socket,id=vublk,path={socket_path}",
                       "-device", f"vhost-user-blk-pci,chardev=vublk,num-queues=1{options}"],
            shared_memory=True,
        )

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The checksum the guest reported matches the image file's bytes; the ring layout."""
        layout = self.layouts.check(self.packed) if self.layouts is not None else (False, "not started")
        reported = result.checks.get("blk.data", (False, ""))[1].strip()
        if self.image is None or not reported:
            return {"host.image_data": (False, "the guest reported no checksum"), "host.ring_layout": layout}
        with open(self.image, "rb") as f:
            f.seek(DATA_OFFSET)
            digest = hashlib.sha256(f.read(DATA_LENGTH)).hexdigest()
        return {"host.image_data": (digest == reported, digest), "host.ring_layout": layout}


@dataclass
class VhostUserNetCase:
    """virtio_net over ``-netdev vhost-user``, served by a ``VirtioNetDevice`` on a socket
    backend whose far end is a ``Responder`` at 10.0.2.2."""

    packed: bool = False
    driver: str = "virtio_net"
    path: str = "vhost-user"
    guest_script: str = NET_SCRIPT
    required_checks: frozenset[str] = NET_REQUIRED_CHECKS
    responder: Any = field(default=None, repr=False)
    layouts: RingLayouts | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        """The matrix's device column."""
        return "vhost-user-net" + (" (packed)" if self.packed else "")

    @property
    def name(self) -> str:
        """The case (and embedded test) name."""
        return "vhost-user-net" + ("-packed" if self.packed else "")

    def image_extras(self, builder: ImageBuilder) -> None:
        """Nothing beyond busybox."""

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """A socket-pair wire: the device on one end, the responder on the other."""
        from devmodels.backends.net import Responder, SocketBackend
        from devmodels import GuestMemory
        from virtio.net import VirtioNetDevice
        from virtio.vhost_user import VhostUserServer

        ours, theirs = SocketBackend.pair()
        stack.callback(theirs.close)
        stack.callback(ours.close)
        self.responder = Responder(theirs, "10.0.2.2")
        self.responder.start()
        stack.callback(self.responder.stop)
        device = VirtioNetDevice(GuestMemory(), ours, queue_size=256, ctrl_vq=False, packed=True)
        self.layouts = _record_layouts(stack, device)
        socket_path = workdir / "net.sock"
        server = VhostUserServer(device, socket_path)
        stack.callback(server.close)
        server.start()
        options = ",packed=on" if self.packed else ""
        return Attachment(
            qemu_args=["-chardev", f"socket,id=vunet,path={socket_path}",
                       "-netdev", "vhost-user,id=n0,chardev=vunet",
                       "-device", f"virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,vectors=0{options}"],
            shared_memory=True,
        )

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The responder answered the guest's ARP and echo requests; the ring layout."""
        layout = self.layouts.check(self.packed) if self.layouts is not None else (False, "not started")
        if self.responder is None:
            return {"host.responder": (False, "not started"), "host.ring_layout": layout}
        stats = self.responder.stats()
        return {
            "host.arp": (stats.arp_replies > 0, f"{stats.arp_replies} ARP replies"),
            "host.icmp": (stats.icmp_replies >= 5, f"{stats.icmp_replies} echo replies"),
            "host.ring_layout": layout,
        }


def cases() -> list[Any]:
    """The vhost-user rows: blk split and packed, net split and packed."""
    return [VhostUserBlkCase(False), VhostUserBlkCase(True), VhostUserNetCase(False), VhostUserNetCase(True)]
