"""Fault rows for disks: libata and virtio_blk against media errors and a command that
never completes, on devmodels' AHCI and virtio-blk over vfio-user (``_faults``).

- ``ahci`` x ``disk.media-error``: one unreadable sector in the middle of the disk. libata
  must take the NCQ error through EH (READ LOG EXT 10h), report exactly that LBA (its
  ``res`` line, and sd's sense data, so the block layer names that sector and completes
  the sectors before it), fail only reads that cover it, and keep the disk and NCQ going.
- ``ahci`` x ``disk.stuck``: one read the drive never completes. With the SCSI command
  timeout at 5 s, libata's EH must time the command out, reset the port (COMRESET, which
  makes the drive abandon it), and retry: the read returns the right data and the disk
  works on.
- ``virtio_blk`` x ``disk.media-error``: the device answers VIRTIO_BLK_S_IOERR; the driver
  must fail that request only (EIO), and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from devmodels.faults import FaultPlan, MediaError, StuckIo

from ._faults import FaultCase, dmesg_section, kmsg

if TYPE_CHECKING:
    from ...guest import ImageBuilder
    from ...qemu.launcher import BootResult

__all__ = ["cases", "AhciMediaErrorCase", "AhciTimeoutCase", "VirtioBlkMediaErrorCase", "BAD_LBA", "HANG_LBA"]

DISK_SIZE = 64 << 20
BAD_LBA = 65539  # not 4 KiB aligned: a 4 KiB read of its block must fail from this sector on
HANG_LBA = 98304
PATTERN_SECTORS = 64  # data the image holds at HANG_LBA, for the retried read to return
SCSI_TIMEOUT = 5


def pattern() -> bytes:
    """What the image holds at ``HANG_LBA``."""
    return hashlib.sha256(b"devmodels stuck read").digest() * (PATTERN_SECTORS * 512 // 32)


_RANGE_CHECKS = r"""
if [ ! -x /usr/bin/fio ]; then report {p}.fio FAIL "fio is not in the image: install it on the host"; exit 0; fi
sector_read() {{  # DEV SECTOR: one direct 512-byte read (fio: dd's buffer is not sector aligned); error in /tmp/io.err
    fio --name=r --filename=$1 --direct=1 --rw=read --bs=512 --offset=$(($2 * 512)) --size=512 \
        --ioengine=psync --output=/dev/null > /tmp/io.err 2>&1
}}
block_read() {{  # DEV BLOCK COUNT: direct reads of 4 KiB blocks
    dd if=$1 of=/dev/null bs=4096 skip=$2 count=$3 iflag=direct 2>/tmp/io.err
}}
io_error() {{  # NAME what: the last read must have failed with an I/O error
    if grep -qE "Input/output error|No data available" /tmp/io.err; then
        report "$1" PASS "$2: $(grep -oE 'Input/output error|No data available' /tmp/io.err | head -n 1)"
    else
        report "$1" FAIL "$2: $(tail -n 1 /tmp/io.err | cut -c 1-100)"
    fi
}}
if sector_read {dev} {bad}; then report {p}.bad_sector FAIL "sector {bad} read without error"
else io_error {p}.bad_sector "direct read of sector {bad}"; fi
if block_read {dev} {block} 1; then report {p}.bad_block FAIL "the 4 KiB block with sector {bad} read without error"
else io_error {p}.bad_block "direct read of the 4 KiB block at sector {block_sector}"; fi
bad=""
for sector in $(({bad} - 1)) $(({bad} + 1)); do
    sector_read {dev} $sector || bad="$bad sector $sector: $(tail -n 1 /tmp/io.err | cut -c 1-60)"
done
for range in "$(({block} - 256)) 256" "$(({block} + 1)) 256" "0 256" "{far} 256"; do
    set -- $range
    block_read {dev} $1 $2 || bad="$bad blocks $1+$2: $(tail -n 1 /tmp/io.err | cut -c 1-60)"
done
if [ -z "$bad" ]; then report {p}.others_read PASS "sectors {bad}-1 and {bad}+1, 1 MiB either side and elsewhere read"
else report {p}.others_read FAIL "$bad"; fi
dd if=/dev/urandom of=/tmp/rand bs=64k count=16 2>/dev/null
want=$(sha256sum /tmp/rand | cut -d' ' -f1)
dd if=/tmp/rand of={dev} bs=64k seek={write_block} count=16 oflag=direct conv=fsync 2>/dev/null
got=$(dd if={dev} bs=64k skip={write_block} count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$got" = "$want" ]; then report {p}.disk_works PASS "1 MiB written and read back"; else report {p}.disk_works FAIL "read back $got"; fi
"""


def range_checks(prefix: str, dev: str, bad: int, far_block: int) -> str:
    """Guest lines: the bad sector and its 4 KiB block fail with an I/O error, the sectors
    next to it and every other range read, a write elsewhere reads back."""
    return _RANGE_CHECKS.format(p=prefix, dev=dev, bad=bad, block=bad // 8, block_sector=bad // 8 * 8, far=far_block,
                                write_block=(far_block + 512) // 16)


_BLOCK_ERROR = re.compile(r"(I/O|critical medium|critical target|[a-z ]+) error, dev (\w+), sector (\d+)")
_RES = re.compile(r"res ([0-9a-f]{2})/([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})/"
                  r"([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})/([0-9a-f]{2})")


def block_error_sectors(lines: list[str], dev: str) -> list[int]:
    """The sectors of the block layer's ``... error, dev DEV, sector N`` lines."""
    return [int(m.group(3)) for line in lines for m in [_BLOCK_ERROR.search(line)] if m and m.group(2) == dev]


def res_lbas(lines: list[str]) -> list[tuple[int, int, int]]:
    """``(status, error, lba)`` of libata's ``res`` lines (ata_eh_link_report)."""
    out = []
    for line in lines:
        m = _RES.search(line)
        if m:
            f = [int(g, 16) for g in m.groups()]
            lba = f[3] | f[4] << 8 | f[5] << 16 | f[8] << 24 | f[9] << 32 | f[10] << 40
            out.append((f[0], f[1], lba))
    return out


class _FioCase(FaultCase):
    """A row whose guest reads single sectors with fio."""

    def image_extras(self, builder: ImageBuilder) -> None:
        """fio and its libraries, when the host has it (``.ci/install`` installs it)."""
        fio = shutil.which("fio")
        if fio is not None:
            builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")


class _AhciFaultCase(_FioCase):
    """An ahci fault row: one raw disk image on port 0."""

    def backend_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """A sparse image with ``pattern()`` at ``HANG_LBA``."""
        disk = workdir / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(DISK_SIZE)
            f.seek(HANG_LBA * 512)
            f.write(pattern())
        return ["--backend", f"file:{disk}"], []


AHCI_MEDIA_SCRIPT = rf"""
check_pci_driver ahci.bound 8086:2922 ahci || exit 0
check ahci.sda wait_for /dev/sda 60 || exit 0
qd=$(cat /sys/block/sda/device/queue_depth)
{range_checks("media", "/dev/sda", BAD_LBA, 2048)}
qd_after=$(cat /sys/block/sda/device/queue_depth)
if [ "$qd" = 32 ] && [ "$qd_after" = 32 ]; then report media.ncq_kept PASS "queue depth 32 before and after"
else report media.ncq_kept FAIL "queue depth $qd before, $qd_after after"; fi
dmesg_dump 'ata1|sd 0:0|sda|error, dev|res |cmd '
"""


class AhciMediaErrorCase(_AhciFaultCase):
    """ahci x disk.media-error (module docstring)."""

    def __init__(self) -> None:
        plan = FaultPlan(1, (MediaError(id="bad-sector", target="disk0", lba=BAD_LBA, op="read"),))
        super().__init__(
            "ahci", "AHCI ICH9 8086:2922 + disk", "ahci", AHCI_MEDIA_SCRIPT, name="fault-ahci-media-error",
            fault=f"disk.media-error (NCQ read, LBA {BAD_LBA})", fault_id="bad-sector", plan=plan,
            expected=(f"libata EH reads NCQ log 10h and reports UNC at exactly LBA {BAD_LBA} (res line, sense data: "
                      f"the block layer names sector {BAD_LBA}); only reads covering it fail (EIO/ENODATA), the "
                      "sectors before it in a larger read complete; the disk and NCQ keep working"),
            required_checks={"ahci.bound", "ahci.sda", "media.bad_sector", "media.bad_block", "media.others_read",
                             "media.disk_works", "media.ncq_kept", "host.libata_lba", "host.block_sector"},
            observed_checks=("host.libata_lba", "host.block_sector", "media.bad_sector", "media.bad_block",
                             "media.others_read", "media.ncq_kept"),
            irq=("ahci", "PCI-MSI"),
        )

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """libata's ``res`` lines and the block layer's error lines name exactly ``BAD_LBA``."""
        checks = super().host_checks(result)
        lines = dmesg_section(result.log)
        res = res_lbas(lines)
        unc = [lba for status, error, lba in res if status & 0x01 and error & 0x40]
        fpdma = any("READ FPDMA QUEUED" in line for line in lines)
        checks["host.libata_lba"] = (bool(unc) and all(lba == BAD_LBA for lba in unc) and fpdma,
                                     f"{len(res)} libata res line(s), UNC at LBA {sorted(set(unc))}"
                                     f"{' for READ FPDMA QUEUED' if fpdma else ', no READ FPDMA QUEUED failed'}")
        sectors = block_error_sectors(lines, "sda")
        checks["host.block_sector"] = (len(sectors) >= 2 and set(sectors) == {BAD_LBA},
                                       f"block layer errors at sectors {sectors}")
        return checks


AHCI_TIMEOUT_SCRIPT = rf"""
check_pci_driver ahci.bound 8086:2922 ahci || exit 0
check ahci.sda wait_for /dev/sda 60 || exit 0
echo {SCSI_TIMEOUT} > /sys/block/sda/device/timeout
want={hashlib.sha256(pattern()[:4096]).hexdigest()}
start=$(cut -d. -f1 /proc/uptime)
got=$(dd if=/dev/sda bs=4096 skip={HANG_LBA // 8} count=1 iflag=direct 2>/tmp/dd.err | sha256sum | cut -d' ' -f1)
took=$(( $(cut -d. -f1 /proc/uptime) - start ))
if [ "$got" = "$want" ]; then report stuck.read_returns PASS "the read returned the right data after ${{took}} s"
else report stuck.read_returns FAIL "after ${{took}} s: $(tail -n 1 /tmp/dd.err)"; fi
if [ "$took" -ge {SCSI_TIMEOUT - 1} ]; then report stuck.waited_for_timeout PASS "${{took}} s (timeout {SCSI_TIMEOUT} s)"
else report stuck.waited_for_timeout FAIL "only ${{took}} s"; fi
dd if=/dev/urandom of=/tmp/rand bs=64k count=16 2>/dev/null
want=$(sha256sum /tmp/rand | cut -d' ' -f1)
dd if=/tmp/rand of=/dev/sda bs=64k seek=256 count=16 oflag=direct conv=fsync 2>/dev/null
got=$(dd if=/dev/sda bs=64k skip=256 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$got" = "$want" ]; then report stuck.disk_back PASS "1 MiB written and read back after the reset"
else report stuck.disk_back FAIL "read back $got"; fi
dmesg_dump 'ata1|sd 0:0|sda|res |cmd '
"""


class AhciTimeoutCase(_AhciFaultCase):
    """ahci x disk.stuck (module docstring)."""

    def __init__(self) -> None:
        plan = FaultPlan(1, (StuckIo(id="stuck-read", target="disk0", lba=HANG_LBA, sectors=8, op="read", count=1),))
        super().__init__(
            "ahci", "AHCI ICH9 8086:2922 + disk", "ahci", AHCI_TIMEOUT_SCRIPT, name="fault-ahci-timeout",
            fault=f"disk.stuck (one read at LBA {HANG_LBA} never completes)", fault_id="stuck-read", plan=plan,
            expected=(f"the command times out ({SCSI_TIMEOUT} s SCSI timeout), libata EH freezes the port, hard-resets "
                      "the link (COMRESET) and retries: the read returns the right data, the disk works on"),
            required_checks={"ahci.bound", "ahci.sda", "stuck.read_returns", "stuck.waited_for_timeout",
                             "stuck.disk_back", "host.eh_timeout", "host.port_reset"},
            observed_checks=("host.eh_timeout", "host.port_reset", "stuck.read_returns", "stuck.waited_for_timeout",
                             "stuck.disk_back"),
            irq=("ahci", "PCI-MSI"),
        )

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """libata reported the timeout and reset the link, which came back."""
        checks = super().host_checks(result)
        lines = dmesg_section(result.log)
        frozen = [line for line in lines if "ata1.00: exception" in line and "frozen" in line]
        timeout = [line for line in lines if "Emask 0x4 (timeout)" in line]
        checks["host.eh_timeout"] = (bool(frozen) and bool(timeout),
                                     f"{kmsg(frozen[0]) if frozen else 'no frozen exception'}; "
                                     f"{'Emask 0x4 (timeout)' if timeout else 'no timeout'}")
        reset = [line for line in lines if "hard resetting link" in line or "COMRESET" in line]
        link_up = [line for line in lines if "SATA link up" in line]
        back = [line for line in lines if "EH complete" in line]
        checks["host.port_reset"] = (bool(reset) and len(link_up) >= 2,
                                     f"{kmsg(reset[0]) if reset else 'no reset'}, then link up "
                                     f"({len(link_up)} link-up lines in all){', EH complete' if back else ''}")
        return checks


VIRTIO_BLK_SCRIPT = rf"""
check_pci_driver virtio.bound 1af4:1042 virtio-pci || exit 0
check virtio.vda wait_for /dev/vda 30 || exit 0
{range_checks("media", "/dev/vda", BAD_LBA, 2048)}
dmesg_dump 'vda|error, dev'
"""


class VirtioBlkMediaErrorCase(_FioCase):
    """virtio_blk x disk.media-error (module docstring)."""

    def __init__(self) -> None:
        plan = FaultPlan(1, (MediaError(id="bad-sector", lba=BAD_LBA, op="read"),))
        super().__init__(
            "virtio_blk", "virtio-blk on our virtio-pci (MSI-X)", "virtio-blk", VIRTIO_BLK_SCRIPT,
            name="fault-virtio-blk-media-error", fault=f"disk.media-error (read, LBA {BAD_LBA})",
            fault_id="bad-sector", plan=plan,
            expected=("the device answers VIRTIO_BLK_S_IOERR for requests covering the sector; virtio_blk fails "
                      "exactly those requests with EIO (the block layer names each failed request's first sector), "
                      "every other request succeeds"),
            required_checks={"virtio.bound", "virtio.vda", "media.bad_sector", "media.bad_block", "media.others_read",
                             "media.disk_works", "host.block_sector"},
            observed_checks=("host.block_sector", "media.bad_sector", "media.bad_block", "media.others_read",
                             "media.disk_works"),
            irq=("virtio[0-9]+-req", "PCI-MSI"),
        )

    def backend_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """A sparse raw image."""
        disk = workdir / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(DISK_SIZE)
        return ["--backend", f"file:{disk}"], []

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """Each failed request started at the bad sector or at its 4 KiB block."""
        checks = super().host_checks(result)
        sectors = block_error_sectors(dmesg_section(result.log), "vda")
        wanted = {BAD_LBA, BAD_LBA // 8 * 8}
        checks["host.block_sector"] = (len(sectors) >= 2 and set(sectors) <= wanted and BAD_LBA in sectors,
                                       f"block layer errors at sectors {sectors} (requests at {sorted(wanted)})")
        return checks


def cases() -> list[FaultCase]:
    """The disk fault rows."""
    return [AhciMediaErrorCase(), AhciTimeoutCase(), VirtioBlkMediaErrorCase()]
