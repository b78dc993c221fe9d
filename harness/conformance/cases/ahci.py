"""Conformance: Linux's ahci driver against devmodels' ICH9 AHCI behind ``x-pci-proxy-dev``.

The controller has a disk image on port 0 and an ISO on port 1, both raw files in the
case's work directory, served by the mpqemu server process. The guest checks that ahci
binds 8086:2922, that sda has the image's size, that 1 MiB of random data written with
O_DIRECT reads back with the same SHA-256, that libata runs NCQ at depth 32, that
``blkdiscard`` succeeds, and that sr0 reads the ISO back. The host then finds the guest's
bytes in the image file, the discarded range as a hole, and the ISO's hash.

The row runs on both PCI attachments (``_served``): behind QEMU 7.2's proxy with polled
INTx, and over vfio-user on QEMU 11.1 with MSI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ._served import ATTACHMENTS, PROXY, ServedCase

if TYPE_CHECKING:
    from ...qemu.launcher import BootResult

__all__ = ["cases", "GUEST_SCRIPT", "REQUIRED_CHECKS"]

DISK_SIZE = 64 << 20
ISO_SIZE = 4 << 20
DATA_OFFSET = 8 << 20
DISCARD_OFFSET = 32 << 20
DISCARD_LENGTH = 4 << 20

GUEST_SCRIPT = rf"""
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
check ahci.blkdiscard blkdiscard -o {DISCARD_OFFSET} -l {DISCARD_LENGTH} /dev/sda
if wait_for /dev/sr0 30; then
    iso=$(dd if=/dev/sr0 bs=2048 count={ISO_SIZE // 2048} 2>/dev/null | sha256sum | cut -d' ' -f1)
    echo "AHCI-ISO $iso"
    report ahci.sr0 PASS "$iso"
else
    report ahci.sr0 FAIL "no /dev/sr0: $(dmesg | grep -i 'ata2' | tr '\n' '|' | cut -c 1-300)"
fi
sync
"""


REQUIRED_CHECKS = frozenset({
    "ahci.bound", "ahci.sda", "ahci.size", "ahci.write_direct", "ahci.read_back", "ahci.ncq", "ahci.blkdiscard",
    "ahci.sr0", "host.image_data", "host.discard_hole", "host.iso_hash",
})


def has_hole(path: Path, offset: int, length: int) -> bool:
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


class AhciCase(ServedCase):
    """The ahci row: image files in the work directory, checks on them afterwards."""

    def __init__(self, attachment: str = PROXY) -> None:
        # Over vfio-user the controller carries ICH9's MSI capability and libahci uses it.
        super().__init__("ahci", "AHCI ICH9 8086:2922 + disk + CD", "ahci", GUEST_SCRIPT, attachment=attachment,
                         required_checks=REQUIRED_CHECKS, irq=("ahci", "PCI-MSI"))
        self.disk: Path | None = None
        self.iso_hash = ""

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """A disk image with data where the guest will discard, and an ISO."""
        self.disk, iso = workdir / "disk.img", workdir / "cd.iso"
        with open(self.disk, "wb") as f:
            f.truncate(DISK_SIZE)
            f.seek(DISCARD_OFFSET)
            f.write(b"\xa5" * DISCARD_LENGTH)
        iso_data = hashlib.sha256(b"devmodels iso").digest() * (ISO_SIZE // 32)
        iso.write_bytes(iso_data)
        self.iso_hash = hashlib.sha256(iso_data).hexdigest()
        return ["--backend", f"file:{self.disk}", "--backend", f"iso:{iso}"], []

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The guest's bytes are in the image, the discard left a hole, sr0 read the ISO."""
        checks = super().host_checks(result)
        wrote = re.search(r"AHCI-WROTE ([0-9a-f]{64})", result.log)
        if self.disk is None or wrote is None:
            return checks | {"host.image_data": (False, "the guest did not report what it wrote")}
        with open(self.disk, "rb") as f:
            f.seek(DATA_OFFSET)
            found = hashlib.sha256(f.read(1 << 20)).hexdigest()
        checks["host.image_data"] = (found == wrote.group(1), f"image holds {found[:16]}...")
        hole = has_hole(self.disk, DISCARD_OFFSET, DISCARD_LENGTH)
        checks["host.discard_hole"] = (hole, "punched" if hole else "range still allocated")
        seen = re.search(r"AHCI-ISO ([0-9a-f]{64})", result.log)
        checks["host.iso_hash"] = (bool(seen) and seen.group(1) == self.iso_hash if seen else False, "")
        return checks


def cases() -> list[ServedCase]:
    """The ahci rows, one per attachment."""
    return [AhciCase(attachment) for attachment in ATTACHMENTS]
