"""One vhost-user back-end, two QEMU guests in a row: the back-end survives its front-end.

``tests/conformance/test_matrix.py`` runs every conformance row (including the vhost-user
blk/net rows of ``harness.conformance.cases.vhost_user``). This module checks what a row
cannot: a ``VhostUserServer`` serving a ``VirtioBlkDevice`` is used by a first QEMU (TCG,
``vhost-user-blk-pci`` with packed rings) whose guest writes random data with O_DIRECT and
powers off; QEMU exits, the back-end tears the session down, and a second QEMU (split rings
this time) attaches to the same socket and reads the data back with the same SHA-256, which
the host also finds in the image file.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest

from devmodels import GuestMemory, HostError
from devmodels.backends import RawFileBackend
from harness.guest import GuestImage, ImageBuilder
from harness.qemu.launcher import QemuLauncher, qemu_available
from tests.prerequisites import missing, need
from virtio.blk import VirtioBlkDevice
from virtio.vhost_user import VhostUserServer

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


@pytest.fixture(scope="module")
def image() -> GuestImage:
    need(qemu_available())
    builder = ImageBuilder()
    builder.add_test("vu-writer", WRITER)
    builder.add_test("vu-reader", READER)
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
