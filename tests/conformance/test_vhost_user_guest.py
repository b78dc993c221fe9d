"""vhost-user back-ends under real QEMU 7.2 guests: what a conformance row cannot check.

``tests/conformance/test_matrix.py`` runs every conformance row (including the vhost-user
blk/net rows of ``harness.conformance.cases.vhost_user``). This module checks:

- the back-end survives its front-end: a ``VhostUserServer`` serving a ``VirtioBlkDevice``
  is used by a first QEMU (TCG, ``vhost-user-blk-pci`` with packed rings) whose guest
  writes random data with O_DIRECT and powers off; QEMU exits, the back-end tears the
  session down, and a second QEMU (split rings this time) attaches to the same socket and
  reads the data back with the same SHA-256, which the host also finds in the image file;
- a ring error is recoverable by the guest's reset: the host makes the guest's available
  index jump past the queue size while the guest is idle, the device enters
  DEVICE_NEEDS_RESET, the guest unbinds and binds virtio_blk (a device reset and a full
  initialization through QEMU's front-end) and its I/O works again;
- virtio_net reset while the device holds receive buffers: the guest pings (the device
  takes receive buffers ahead of frames), unbinds and binds virtio_net, and pings again;
  the back-end thread must live through it, still serving the same front-end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from devmodels import GuestMemory, HostError
from devmodels.backends import RawFileBackend
from devmodels.backends.net import Responder, SocketBackend
from harness.guest import GuestImage, ImageBuilder
from harness.qemu.launcher import QemuLauncher, qemu_available
from tests.prerequisites import missing, need
from virtio.blk import VirtioBlkDevice
from virtio.defs import DEVICE_NEEDS_RESET, DRIVER_OK
from virtio.net import VirtioNetDevice
from virtio.vhost_user import ServedGlue, VhostUserServer

pytestmark = pytest.mark.guest

SIZE = 32 << 20
OFFSET = 4 << 20
LENGTH = 1 << 20

WRITER = f"""
check blk.vda wait_for /dev/vda 30 || exit 0
dd if=/dev/urandom of=/tmp/data bs=64k count={LENGTH // 65536} 2>/dev/null
check blk.write dd if=/tmp/data of=/dev/vda bs=64k seek={OFFSET // 65536} oflag=direct conv=fsync
report blk.sha PASS $(sha256sum /tmp/data | cut -d' ' -f1)
"""

READER = f"""
check blk.vda wait_for /dev/vda 30 || exit 0
report blk.sha PASS $(dd if=/dev/vda bs=64k skip={OFFSET // 65536} count={LENGTH // 65536} iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
"""


# The virtio device behind a block/net interface; unbinding and binding its driver resets
# the device (virtio_dev_remove, then the full initialization of virtio_dev_probe).
REBIND = """
rebind() {{
    dev=$(basename "$(readlink {link})")
    echo "$dev" > /sys/bus/virtio/drivers/{driver}/unbind && echo "$dev" > /sys/bus/virtio/drivers/{driver}/bind
}}
"""

RING_ERROR = REBIND.format(link="/sys/block/vda/device", driver="virtio_blk") + """
check blk.vda wait_for /dev/vda 30 || exit 0
check blk.before dd if=/dev/urandom of=/dev/vda bs=4k count=16 oflag=direct
report blk.idle PASS
sleep 4
check blk.rebind rebind
check blk.vda_again wait_for /dev/vda 30
check blk.after dd if=/dev/vda of=/dev/null bs=4k count=16 iflag=direct
"""

NET_RESET = REBIND.format(link="/sys/class/net/eth0/device", driver="virtio_net") + """
check net.eth0 wait_for /sys/class/net/eth0 30 || exit 0
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
sleep 1
check net.ping_before ping -c 3 -W 5 10.0.2.2
check net.rebind rebind
check net.eth0_again wait_for /sys/class/net/eth0 30
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
sleep 1
check net.ping_after ping -c 3 -W 5 10.0.2.2
"""


@pytest.fixture(scope="module")
def image() -> GuestImage:
    need(qemu_available())
    builder = ImageBuilder()
    builder.add_test("vu-writer", WRITER)
    builder.add_test("vu-reader", READER)
    builder.add_test("vu-ring-error", RING_ERROR)
    builder.add_test("vu-net-reset", NET_RESET)
    try:
        return builder.build(progress=False)
    except HostError as exc:
        missing(f"cannot build the guest image: {exc}")


def _boot(image: GuestImage, socket_path: Path, test: str, packed: bool) -> dict[str, tuple[bool, str]]:
    args = ["-chardev", f"socket,id=vublk,path={socket_path}",
            "-device", f"vhost-user-blk-pci,chardev=vublk,num-queues=1{',packed=on' if packed else ''}"]
    with QemuLauncher.for_image(image, args=args, test=test, shared_memory=True) as vm:
        result = vm.wait(240)
    assert result.passed, result.summary()
    return result.checks


def test_a_second_front_end_reads_what_the_first_wrote(image: GuestImage, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(SIZE)
    with contextlib.ExitStack() as stack:
        backend = RawFileBackend(disk)
        stack.callback(backend.close)
        server = VhostUserServer(VirtioBlkDevice(GuestMemory(), backend, queue_size=128), tmp_path / "blk.sock")
        stack.callback(server.close)
        server.start()
        written = _boot(image, tmp_path / "blk.sock", "vu-writer", packed=True)["blk.sha"][1]
        read = _boot(image, tmp_path / "blk.sock", "vu-reader", packed=False)["blk.sha"][1]
        assert server.sessions == 2 and server.last_error is None
    assert read == written
    with open(disk, "rb") as f:
        f.seek(OFFSET)
        assert hashlib.sha256(f.read(LENGTH)).hexdigest() == written


class _Inject:
    """The block device's glue plus one eventfd: writing it runs ``action`` on the server's
    loop thread (the only thread that may touch the device)."""

    def __init__(self, device: VirtioBlkDevice, action: Callable[[], None]) -> None:
        self.inner = ServedGlue(device)
        self.action = action
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.done = threading.Event()

    def sources(self) -> dict[int, Callable[[], None]]:
        return {**self.inner.sources(), self.fd: self._run}

    def fire(self) -> None:
        os.eventfd_write(self.fd, 1)

    def _run(self) -> None:
        os.eventfd_read(self.fd)
        try:
            self.action()
        finally:
            self.done.set()

    def close(self) -> None:
        self.inner.close()
        os.close(self.fd)


def test_a_ring_error_is_recovered_by_the_guest_reset(image: GuestImage, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(SIZE)
    failed: list[int] = []

    def break_the_ring() -> None:
        # The guest is idle: its available index jumps past the queue size (§2.7.6.1).
        queue = device.queues[0]
        device.memory.store_u16(queue.driver_addr + 2, (queue.next_avail + queue.size + 1) & 0xFFFF)
        device.notify_queue(0)
        failed.append(device.status)

    def on_line(line: str) -> None:
        if "DEVMODELS-CHECK blk.idle PASS" in line:
            inject.fire()

    with contextlib.ExitStack() as stack:
        backend = RawFileBackend(disk)
        stack.callback(backend.close)
        device = VirtioBlkDevice(GuestMemory(), backend, queue_size=128)
        inject = _Inject(device, break_the_ring)
        server = VhostUserServer(device, tmp_path / "blk.sock", glue=inject)
        stack.callback(server.close)
        thread = server.start()
        args = ["-chardev", f"socket,id=vublk,path={tmp_path / 'blk.sock'}",
                "-device", "vhost-user-blk-pci,chardev=vublk,num-queues=1"]
        with QemuLauncher.for_image(image, args=args, test="vu-ring-error", shared_memory=True,
                                    on_line=on_line) as vm:
            result = vm.wait(150)
        assert inject.done.is_set() and failed and failed[0] & DEVICE_NEEDS_RESET, "the ring did not break"
        assert result.passed, result.summary()
        assert thread.is_alive() and server.sessions == 1 and server.last_error is None
        assert device.status & (DRIVER_OK | DEVICE_NEEDS_RESET) in (DRIVER_OK, 0)


def test_net_reset_with_receive_buffers_held_keeps_the_server(image: GuestImage, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        ours, theirs = SocketBackend.pair()
        stack.callback(theirs.close)
        stack.callback(ours.close)
        responder = Responder(theirs, "10.0.2.2")
        responder.start()
        stack.callback(responder.stop)
        device = VirtioNetDevice(GuestMemory(), ours, queue_size=256, ctrl_vq=False)
        server = VhostUserServer(device, tmp_path / "net.sock")
        stack.callback(server.close)
        thread = server.start()
        args = ["-chardev", f"socket,id=vunet,path={tmp_path / 'net.sock'}",
                "-netdev", "vhost-user,id=n0,chardev=vunet",
                "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,vectors=0"]
        with QemuLauncher.for_image(image, args=args, test="vu-net-reset", shared_memory=True) as vm:
            result = vm.wait(150)
        alive, error = thread.is_alive(), server.last_error
        assert result.passed, result.summary()
        assert alive and server.sessions == 1 and error is None
        assert responder.stats().icmp_replies >= 6
