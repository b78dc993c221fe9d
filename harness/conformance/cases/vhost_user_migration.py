"""Conformance: a running guest with our vhost-user-blk and vhost-user-net migrates between
two QEMU processes on this host, its I/O running across the switch-over (issue 15 item 2).

Each side has its own back-end processes (``devmodels vhost-user``, the registry form): a
vhost-user back-end serves one front-end, so the destination QEMU, which connects while the
source still runs, gets its own ``virtio-blk`` server on the same image file (the disk
shared as between two hosts) and its own ``virtio-net`` server on the same wire
(``_vu_wire``: the responder at 10.0.2.2 answers each frame on the connection it came on).

The guest starts fio randrw 4 KiB at QD32 with ``verify=crc32c`` and a ping every 0.2 s,
then prints a marker. The host starts the destination (``-incoming unix:...``), asks the
source over QMP to migrate there, waits until ``query-migrate`` says completed (its
``downtime`` is the row's detail, ``host.migrated``), quits the source, and the guest
finishes on the destination. While the source migrates, QEMU has its back-ends log the
pages they write (VHOST_F_LOG_ALL, SET_LOG_BASE; ``virtio.vhost_user`` session rule 8):
``host.logged`` reads from the source back-ends' logs that they did. fio (five passes,
~15 s) and the ping stream (20 s) must both end on the destination's console: they ran
across the switch-over (``host.io_across``), and each destination back-end must have
started its rings (``host.back_ends``). The guest must end with fio's data verified and
no error (``blk.fio_verify``, ``host.fio``), its ping stream answered without a duplicate
and with at most the one reply that was on its way through the source's NIC server at the
switch-over lost (``host.ping_stream``), every transmit buffer its driver saw used on the
wire once (``host.tx_once``), and every ring of all four back-ends started with the row's
layout (``host.ring_layout``).

Rows: QEMU 7.2 split and packed rings, QEMU 11.1 split rings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devmodels import HostError

from ...guest._protocol import DONE_MARKER, parse_checks
from ...qemu.binaries import QEMU_7_2, QEMU_11_1, QemuBinary
from ...qemu.qmp import QmpClient
from .._case import Attachment
from ._vu_process import READY, BackEnd, devmodels_argv, logged, ring_layout, ring_starts
from ._vu_wire import Wire
from .vhost_user_restart import (
    FIO_BEGIN,
    FIO_END,
    NET_COUNTERS,
    NET_SETUP,
    PING_BEGIN,
    PING_END,
    SMP_72,
    driver_counters,
    fio_command,
    fio_summary,
    ping_summary,
    tx_once,
)

if TYPE_CHECKING:
    from ...guest import ImageBuilder
    from ...qemu.launcher import BootResult, QemuLauncher

__all__ = ["cases", "MigrationCase", "MIGRATE_MARKER", "migrate"]

MIGRATE_MARKER = "DEVMODELS-VU-MIGRATE"
IMAGE_SIZE = 64 << 20
MAX_BANDWIDTH = 1 << 30  # bytes/s: a local socket, no reason to throttle the copy
MIGRATE_TIMEOUT = 120.0

FIO_ENDED = "DEVMODELS-VU-FIO-ENDED"
PING_ENDED = "DEVMODELS-VU-PING-ENDED"
FIO_LOOPS = 5  # ~15 s of fio under TCG: it runs on past the switch-over, within the ping stream's 20 s
PINGS = 100  # one every 0.2 s: 20 s

SCRIPT = rf"""
check blk.vda.appears wait_for /dev/vda 30 || exit 0
check net.eth0.appears wait_for /sys/class/net/eth0 30 || exit 0
{NET_SETUP}
( {fio_command("migrate", FIO_LOOPS)}; echo $? > /tmp/fio.rc; echo {FIO_ENDED} ) &
fio_pid=$!
( ping -i 0.2 -c {PINGS} -W 15 10.0.2.2 > /tmp/ping.log 2>&1; echo {PING_ENDED} ) &
ping_pid=$!
sleep 2
echo {MIGRATE_MARKER}
wait $fio_pid
wait $ping_pid
rc=$(cat /tmp/fio.rc)
echo {FIO_BEGIN}; cat /tmp/fio.json; echo {FIO_END}
if [ "$rc" = 0 ]; then report blk.fio_verify PASS; else report blk.fio_verify FAIL "fio exited with $rc"; fi
echo {PING_BEGIN}; cat /tmp/ping.log; echo {PING_END}
check net.ping_after ping -c 3 -W 5 10.0.2.2
check blk.flush sync
sleep 1
{NET_COUNTERS}
"""

REQUIRED = frozenset({
    "blk.vda.appears", "net.eth0.appears", "net.up", "net.ping_before", "blk.fio_verify", "net.ping_after",
    "blk.flush", "net.counters", "host.migrated", "host.fio", "host.ping_stream", "host.logged", "host.tx_once",
    "host.back_ends", "host.io_across", "host.ring_layout",
})


def migrate(source: QmpClient, uri: str, timeout: float = MIGRATE_TIMEOUT) -> dict[str, Any]:
    """Migrate the VM behind ``source`` to ``uri`` and return ``query-migrate``'s last
    answer (``status`` completed, failed or cancelled; ``downtime`` in ms).

    Raises:
        HostError: it did not end within ``timeout`` seconds (it is cancelled then).
    """
    source.execute("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
    source.execute("migrate", uri=uri)
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = source.execute("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        if time.monotonic() > deadline:
            source.execute("migrate_cancel")
            raise HostError(f"migration still {info.get('status')} after {timeout} s")
        time.sleep(0.05)


@dataclass
class MigrationCase:
    """One guest, fio and a ping stream, migrated between two QEMUs (module docstring)."""

    qemu: QemuBinary = QEMU_7_2
    packed: bool = False
    driver: str = "virtio_blk+virtio_net"
    device: str = ""
    guest_script: str = SCRIPT
    required_checks: frozenset[str] = REQUIRED
    backends: dict[str, BackEnd] = field(default_factory=dict, repr=False)
    wire: Wire | None = field(default=None, repr=False)
    workdir: Path | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    error: str = field(default="", repr=False)
    consoles: tuple[str, str] = field(default=("", ""), repr=False)
    """What the guest printed on the source's console and on the destination's."""

    def __post_init__(self) -> None:
        self.device = "vhost-user-blk+vhost-user-net" + (" (packed)" if self.packed else "")

    @property
    def path(self) -> str:
        """The matrix's path column."""
        return f"vhost-user migration (QEMU {self.qemu.label})"

    @property
    def name(self) -> str:
        """The case (and embedded test) name."""
        qemu = "" if self.qemu is QEMU_7_2 else "-qemu" + self.qemu.label.split(".")[0]
        return "vhost-user-migrate" + qemu + ("-packed" if self.packed else "")

    def image_extras(self, builder: ImageBuilder) -> None:
        """fio and its libraries, when the host has fio."""
        fio = shutil.which("fio")
        if fio is not None:
            builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")

    def _qemu_args(self, side: str) -> list[str]:
        assert self.workdir is not None
        options = ",packed=on" if self.packed else ""
        args = [
            "-qmp", f"unix:{self.workdir / (side + '.qmp')},server=on,wait=off",
            "-chardev", f"socket,id=vublk,path={self.workdir / (side + '-blk.sock')}",
            "-device", f"vhost-user-blk-pci,id=blk0,chardev=vublk,num-queues=1{options}",
            "-chardev", f"socket,id=vunet,path={self.workdir / (side + '-net.sock')}",
            "-netdev", "vhost-user,id=n0,chardev=vunet",
            "-device", f"virtio-net-pci,id=net0,netdev=n0,mac=52:54:00:12:34:56,vectors=0{options}",
        ]
        return [*SMP_72, *args] if self.qemu is QEMU_7_2 else args

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """The image, the wire and the back-end processes of both sides.

        Raises:
            HostError: the QEMU of this row is missing, or a back-end did not start.
        """
        reason = self.qemu.unavailable()
        if reason is not None:
            raise HostError(reason)
        self.workdir, self.info, self.error, self.backends, self.consoles = workdir, {}, "", {}, ("", "")
        image = workdir / "disk.img"
        with open(image, "wb") as f:
            f.truncate(IMAGE_SIZE)
        self.wire = Wire(workdir / "wire.sock")
        stack.callback(self.wire.stop)
        for side in ("source", "destination"):
            for device, backend in (("blk", f"file:{image}"), ("net", f"socket:{self.wire.path}")):
                sock = workdir / f"{side}-{device}.sock"
                proc = BackEnd(f"{side}-{device}", devmodels_argv(sock, f"virtio-{device}", [backend]), sock, workdir,
                               READY)
                stack.callback(proc.stop)
                proc.start()
                self.backends[f"{side}-{device}"] = proc
        return Attachment(qemu_args=self._qemu_args("source"), shared_memory=True, qemu=self.qemu)

    def run_guest(self, launcher: QemuLauncher, timeout: float) -> BootResult:
        """Migrate at the guest's marker; the row is scored on both consoles (runner rule 5)."""
        from ...qemu.launcher import QemuLauncher

        assert self.workdir is not None
        deadline = time.monotonic() + timeout
        if launcher.wait_for(MIGRATE_MARKER, timeout) is None:
            return launcher.wait(1.0)
        destination = QemuLauncher(
            launcher.kernel, launcher.initrd, args=[*self._qemu_args("destination"), "-incoming",
                                                    f"unix:{self.workdir / 'migration.sock'}"],
            append=launcher.append, test=launcher.test, memory_mb=launcher.memory_mb, smp=launcher.smp,
            shared_memory=True, qemu=self.qemu, serial_log=self.workdir / "destination.serial")
        with destination:
            try:
                QmpClient.connect(self.workdir / "destination.qmp").close()  # it is up and listening
                with QmpClient.connect(self.workdir / "source.qmp") as source:
                    self.info = migrate(source, f"unix:{self.workdir / 'migration.sock'}")
                    if self.info.get("status") == "completed":
                        source.execute("quit")
            except HostError as exc:
                self.error = str(exc)
            before = launcher.wait(10.0 if self.info.get("status") == "completed" else 1.0)
            if self.info.get("status") != "completed":
                return before
            after = destination.wait(max(deadline - time.monotonic(), 1.0))
        self.consoles = (before.log, after.log)
        return _joined(before, after)

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The migration, fio's and ping's accounts, the logs, the transmit buffers."""
        status, downtime = self.info.get("status"), self.info.get("downtime")
        checks: dict[str, tuple[bool, str]] = {
            "host.migrated": (status == "completed",
                              f"{status}: downtime {downtime} ms, total {self.info.get('total-time')} ms, "
                              f"{self.info.get('ram', {}).get('dirty-sync-count')} dirty syncs"
                              if status else self.error or "never started"),
        }
        ok, detail, _gap = fio_summary(result.log)
        checks["host.fio"] = (ok, detail)
        sent, received, dups, worst = ping_summary(result.log)
        # A reply the wire handed to the source's NIC server just as its ring stopped dies
        # there (as a frame in flight does on a real switch-over): at most that one.
        checks["host.ping_stream"] = (sent >= PINGS and received >= sent - 1 and dups == 0,
                                      f"{sent} sent, {received} answered, {dups} duplicates, largest RTT {worst:.0f} ms")
        marked = {name: logged(proc.logs[-1]) for name, proc in self.backends.items() if name.startswith("source")}
        checks["host.logged"] = (bool(marked) and all(n > 0 for n in marked.values()),
                                 f"pages the source back-ends marked in QEMU's dirty log: {marked}")
        checks["host.io_across"] = self._io_across()
        checks["host.ring_layout"] = ring_layout({name: proc.logs[-1] for name, proc in self.backends.items()},
                                                 self.packed)
        if self.wire is not None:
            checks["host.tx_once"] = tx_once(self.wire, driver_counters(result)[0])
        # Each destination back-end must have started its rings: the guest's I/O after the
        # switch-over went through them, not through a source left running.
        alive = {name: proc.alive for name, proc in self.backends.items()}
        served = {name: len(ring_starts(proc.logs[-1])) for name, proc in self.backends.items()
                  if name.startswith("destination")}
        checks["host.back_ends"] = (bool(served) and all(alive.values()) and all(served.values()),
                                    f"still serving: {alive}; ring starts on the destination: {served}")
        return checks

    def _io_across(self) -> tuple[bool, str]:
        """``host.io_across``: fio and the ping stream both ended on the destination's
        console, so both ran across the switch-over (they had started on the source)."""
        source, destination = self.consoles
        where = {marker: ("source" if marker in source else "destination" if marker in destination else "nowhere")
                 for marker in (FIO_ENDED, PING_ENDED)}
        ok = all(place == "destination" for place in where.values())
        return ok, f"fio ended on the {where[FIO_ENDED]}'s console, ping on the {where[PING_ENDED]}'s"


def _joined(before: BootResult, after: BootResult) -> BootResult:
    """One result for a guest that ran on two QEMUs: both consoles, the destination's end."""
    lines = before.log.splitlines() + after.log.splitlines()
    return dataclasses.replace(
        after, log="\n".join(lines), checks=parse_checks(lines), done=any(DONE_MARKER in line for line in lines),
        elapsed=before.elapsed + after.elapsed, stderr=before.stderr + after.stderr)


def cases() -> list[Any]:
    """Migration rows: QEMU 7.2 split and packed, QEMU 11.1 split."""
    return [MigrationCase(QEMU_7_2), MigrationCase(QEMU_7_2, packed=True), MigrationCase(QEMU_11_1)]
