"""Linux's ahci driver on our controller, served to a real QEMU 7.2 through ``x-pci-proxy-dev``.

QEMU (TCG) gets one end of a socketpair as ``-device x-pci-proxy-dev,fd=N``; an mpqemu server
in a thread of this test serves ``AhciController`` (a disk image file on port 0, an "ISO" file
on port 1, both ``RawFileBackend``) on the other end. Backend completions wake the server's
loop through an eventfd, and the loop calls ``AhciController.poll()``. The guest runs with ``irqpoll nolapic_timer``: under TCG
the proxy's INTx irqfd is not connected to an interrupt controller (QEMU 7.2 wires it with
KVM_IRQFD only), so the guest polls ahci's (shared) handler on every IRQ 0 timer tick.

The busybox guest checks that ahci binds 8086:2922, that sda has the image's size, that 1 MiB
of random data written with O_DIRECT reads back with the same SHA-256 (the host then finds the
same bytes in the image file), that libata reports "NCQ (depth 32)", that ``blkdiscard``
punches a hole in the image (when busybox has it) and that sr0 reads the ISO's bytes back.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from devmodels import GuestMemory
from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom

pytestmark = pytest.mark.guest

DISK_SIZE = 64 << 20
ISO_SIZE = 4 << 20
DATA_OFFSET = 8 << 20  # where the guest writes its random MiB
DISCARD_OFFSET = 32 << 20
DISCARD_LENGTH = 4 << 20

GUEST_SCRIPT = rf"""
# Guest half of tests/conformance/test_ahci_guest.py.
expect() {{  # NAME GOT WANT
    if [ "$2" = "$3" ]; then report "$1" PASS "$2"; else report "$1" FAIL "got $2, want $3"; fi
}}
check_pci_driver ahci.bound 8086:2922 ahci
check ahci.sda wait_for /dev/sda 60
expect ahci.size "$(cat /sys/block/sda/size)" {DISK_SIZE // 512}
dd if=/dev/urandom of=/tmp/rand bs=64k count=16 2>/dev/null
want=$(sha256sum /tmp/rand | cut -d' ' -f1)
echo "AHCI-WROTE $want"
check ahci.write_direct dd if=/tmp/rand of=/dev/sda bs=64k seek={DATA_OFFSET // 65536} count=16 oflag=direct conv=fsync
echo 3 > /proc/sys/vm/drop_caches
got=$(dd if=/dev/sda bs=64k skip={DATA_OFFSET // 65536} count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
expect ahci.read_back "$got" "$want"
if dmesg | grep -q "NCQ (depth 32)"; then
    report ahci.ncq PASS "$(dmesg | grep -o '[0-9]* sectors.*NCQ (depth 32).*' | head -n 1)"
else
    report ahci.ncq FAIL "$(dmesg | grep -i 'ata1.00' | tr '\n' '|' | cut -c 1-300)"
fi
if command -v blkdiscard >/dev/null; then
    check ahci.blkdiscard blkdiscard -o {DISCARD_OFFSET} -l {DISCARD_LENGTH} /dev/sda
else
    echo "AHCI-NO-BLKDISCARD"
fi
if wait_for /dev/sr0 30; then
    iso=$(dd if=/dev/sr0 bs=2048 count={ISO_SIZE // 2048} 2>/dev/null | sha256sum | cut -d' ' -f1)
    echo "AHCI-ISO $iso"
    report ahci.sr0 PASS "$iso"
else
    report ahci.sr0 FAIL "no /dev/sr0: $(dmesg | grep -i 'ata2' | tr '\n' '|' | cut -c 1-300)"
fi
sync
"""


@pytest.fixture(scope="module")
def guest_image():  # type: ignore[no-untyped-def]
    try:
        from devmodels.guest import build_image
        from devmodels.qemu.launcher import qemu_available
    except ImportError as exc:
        pytest.skip(f"guest image builder / launcher not available: {exc}")
    reason = qemu_available()
    if reason is not None:
        pytest.skip(reason)
    probe = subprocess.run(
        ["qemu-system-x86_64", "-device", "x-pci-proxy-dev,help"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0 or "fd=" not in probe.stdout:
        pytest.skip("this QEMU has no x-pci-proxy-dev (multi-process QEMU is not built in)")
    from devmodels import HostError

    try:
        return build_image(tests={"ahci": GUEST_SCRIPT}, modules=("ahci", "libahci", "sd_mod"),
                           optional_modules=("sr_mod", "cdrom"))
    except HostError as exc:
        pytest.skip(f"cannot build the guest image: {exc}")


def _has_hole(path: Path, offset: int, length: int) -> bool:
    """Whether ``[offset, offset+length)`` of ``path`` holds no allocated data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            return True  # no data at or after offset
        return data >= offset + length
    finally:
        os.close(fd)


def test_linux_ahci_through_x_pci_proxy_dev(guest_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from devmodels.backends.block import RawFileBackend
    from devmodels.qemu.launcher import QemuLauncher
    from devmodels.qemu.mpqemu import MpqemuServer
    from devmodels.qemu.mpqemu.loop import EventLoop

    disk_path, iso_path = tmp_path / "disk.img", tmp_path / "cd.iso"
    with open(disk_path, "wb") as f:  # allocated data where the guest will discard
        f.truncate(DISK_SIZE)
        f.seek(DISCARD_OFFSET)
        f.write(b"\xa5" * DISCARD_LENGTH)
    iso_data = hashlib.sha256(b"iso").digest() * (ISO_SIZE // 32)
    iso_path.write_bytes(iso_data)
    disk = RawFileBackend(disk_path)
    iso = RawFileBackend(iso_path, readonly=True)

    memory = GuestMemory()
    hba = AhciController(memory, ports=2)
    hba.attach(0, AtaDisk(disk))
    hba.attach(1, AtapiCdrom(iso))
    loop = EventLoop()
    wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def completions_ready() -> None:
        try:
            os.eventfd_read(wake)
        except BlockingIOError:
            pass
        hba.poll()

    loop.add_reader(wake, completions_ready)
    for backend in (disk, iso):
        backend.set_notify(lambda: os.eventfd_write(wake, 1))
    ours, qemus = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = MpqemuServer(hba, ours, memory, loop=loop)
    thread = threading.Thread(target=server.run, name="mpqemu-ahci", daemon=True)
    thread.start()
    try:
        launcher = QemuLauncher.for_image(
            guest_image,
            test="ahci",
            shared_memory=True,
            pass_fds=[qemus.fileno()],
            # Under TCG the proxy's INTx irqfd reaches no interrupt controller (QEMU wires it
            # with KVM_IRQFD only), so the guest polls its shared IRQ handlers instead: with
            # irqpoll every IRQ 0 tick runs them, and nolapic_timer makes the tick IRQ 0.
            append=["irqpoll", "nolapic_timer"],
            args=["-device", f"x-pci-proxy-dev,id=ahci0,fd={qemus.fileno()}"],
        )
        with launcher:
            qemus.close()
            result = launcher.wait(600)
    finally:
        qemus.close()
        thread.join(30)
        if thread.is_alive():
            server.stop()
            thread.join(10)
        loop.remove_reader(wake)
        disk.close()
        iso.close()
        os.close(wake)
    log = result.log
    assert result.passed, result.summary()
    for name in ("ahci.bound", "ahci.sda", "ahci.size", "ahci.write_direct", "ahci.read_back", "ahci.ncq", "ahci.sr0"):
        assert result.checks.get(name, (False, "missing"))[0], result.summary()
    # the host finds the guest's bytes in the image file
    wrote = re.search(r"AHCI-WROTE ([0-9a-f]{64})", log)
    assert wrote, result.summary()
    with open(disk_path, "rb") as f:
        f.seek(DATA_OFFSET)
        assert hashlib.sha256(f.read(1 << 20)).hexdigest() == wrote.group(1)
    iso_seen = re.search(r"AHCI-ISO ([0-9a-f]{64})", log)
    assert iso_seen and iso_seen.group(1) == hashlib.sha256(iso_data).hexdigest()
    if "AHCI-NO-BLKDISCARD" in log:
        pytest.skip("busybox in the guest has no blkdiscard applet: hole punching not checked")
    assert result.checks.get("ahci.blkdiscard", (False, "missing"))[0], result.summary()
    if disk.supports_discard:
        assert _has_hole(disk_path, DISCARD_OFFSET, DISCARD_LENGTH), "TRIM did not punch a hole in the image"
    print(f"\nahci guest: boot to DEVMODELS-DONE {result.done_after:.2f} s; {server.stats}")
    print(f"ahci guest: {result.checks['ahci.ncq'][1]}")
