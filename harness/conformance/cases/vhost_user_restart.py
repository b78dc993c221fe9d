"""Conformance: a vhost-user back-end killed with ``kill -9`` in the middle of the guest's
I/O, started again on the same socket; the guest must not notice beyond a pause.

QEMU 7.2 connects to the back-end with ``-chardev socket,...,reconnect=1``: when the
back-end dies it stops the vhost device (the rings' last positions are the used indices it
reads back), retries every second, and once a new back-end listens it sets the device up
again (issue 15 item 1, vhost-user.rst § Inflight I/O tracking).

- blk (split and packed rings, ours): ``devmodels vhost-user --device virtio-blk`` on a
  raw image, with a fault plan that makes three requests in ten complete 100 ms late, so
  requests are in flight, out of order, when the server dies. The guest runs fio randrw
  4 KiB at QD32 with ``verify=crc32c``; the host kills the server a few seconds in and
  starts it again at once. QEMU hands the new server the inflight buffer of the old one
  (SET_INFLIGHT_FD); the new one resubmits what was in flight. fio must finish with no
  error and its data verified (``blk.fio_verify``, and ``host.fio`` from its JSON), and
  the new server must have resubmitted something (``host.resubmitted``: else the kill
  proved nothing). The I/O gap the guest saw is fio's largest completion latency.
- blk against ``qemu-storage-daemon`` (``qsd=True``; split rings, libvhost-user has no
  packed rings): the same guest and kill, the daemon throttled so that requests wait in
  it: how QEMU's own back-end takes a restart. QEMU 7.2's offers no
  VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD: QEMU starts the new daemon at the used index it
  read back, so it takes again every request made available after that index. That is
  the set that was in flight only if requests completed in the order they were made
  available; the throttle queues reads and writes apart, so under randrw they often do
  not, and then a completed request is taken again and Linux reports "id N is not a
  head" (``BROKEN_RING``). Both outcomes are seen, run to run. It is QEMU's back-end, not
  a row of ours; ``tests/conformance/test_vhost_user_restart.py`` keeps the observation.
- net (ours): ``devmodels vhost-user --device virtio-net --backend socket:WIRE`` with the
  host's ``Wire`` (a responder at 10.0.2.2) at the far end. The guest pings every 0.2 s
  across the kill. QEMU keeps no inflight buffer for a NIC: the new server resumes the
  rings at their used indices, so a buffer the old one took and did not return is taken
  again. Every transmit buffer the guest's driver saw used must have reached the wire
  exactly once (``host.tx_once``: the driver's ``tx_packets`` against the frames the wire
  received, and no echo request twice), no frame may reach the guest twice
  (``host.rx_once``, and no duplicate reply), and the stream must resume. Frames are lost
  in the outage, not buffers: QEMU shows the guest the link down while the back-end is
  gone (its stack drops what it sends then), and replies the wire had handed to the
  killed server die with it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devmodels import HostError

from ...guest._protocol import DONE_MARKER
from .._case import Attachment
from ._vu_process import READY, BackEnd, devmodels_argv, qsd_argv, resubmitted, ring_layout
from ._vu_wire import Wire

if TYPE_CHECKING:
    from ...guest import ImageBuilder
    from ...qemu.launcher import BootResult, QemuLauncher

__all__ = ["cases", "RestartBlkCase", "RestartNetCase", "KILL_MARKER", "fio_summary", "ping_summary",
           "fio_command", "driver_counters", "tx_once", "NET_SETUP", "NET_COUNTERS", "SLOW_DISK_PLAN"]

KILL_MARKER = "DEVMODELS-VU-RESTART"
"""The guest prints it once its I/O runs: the host kills the back-end then."""
FIO_BEGIN = "DEVMODELS-FIO-JSON-BEGIN"
FIO_END = "DEVMODELS-FIO-JSON-END"
PING_BEGIN = "DEVMODELS-PING-BEGIN"
PING_END = "DEVMODELS-PING-END"
IMAGE_SIZE = 64 << 20
KILL_AFTER = 1.0  # seconds after the marker (fio has run ~3 s by then)
SMP_72 = ["-smp", "1,maxcpus=2"]  # QEMU 7.2 TCG keeps guest barriers with maxcpus > 1
SLOW_DISK_PLAN = {"seed": 15, "faults": [{"kind": "disk.slow", "id": "late", "delay_ms": 100, "rate": 0.3}]}
"""Three requests in ten complete 100 ms late: requests are in flight, out of order."""
QSD_IOPS = 400  # qemu-storage-daemon throttled: requests wait in it
BROKEN_RING = ("is not a head", "I/O error, dev vda")
"""What Linux prints when a back-end returns a request it had already returned (virtio_ring
``detach_buf``: "id N is not a head!") and the requests it then fails."""



def fio_command(name: str, loops: int = 1) -> str:
    """The guest's fio: randrw 4 KiB at QD32 on /dev/vda, every block it wrote read back
    and checked (crc32c), ``loops`` times over; its JSON goes to /tmp/fio.json."""
    return (f"/usr/bin/fio --name={name} --filename=/dev/vda --direct=1 --ioengine=libaio --rw=randrw --bs=4k "
            f"--iodepth=32 --size=32M --loops={loops} --verify=crc32c --do_verify=1 --verify_fatal=1 "
            "--eta=never --output-format=json --output=/tmp/fio.json")


NET_SETUP = r"""
# Only the frames the test sends: no IPv6 chatter beside them (the host counts every frame).
for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do [ -e "$f" ] && echo 1 > "$f"; done
ip addr add 10.0.2.15/24 dev eth0
check net.up ip link set eth0 up
sleep 1
check net.ping_before ping -c 3 -W 5 10.0.2.2
"""
"""The guest's eth0 at 10.0.2.15, up, and answered by the wire's responder at 10.0.2.2."""
NET_COUNTERS = ("report net.counters PASS tx=$(cat /sys/class/net/eth0/statistics/tx_packets) "
                "rx=$(cat /sys/class/net/eth0/statistics/rx_packets)")
"""What the guest's driver counted: transmit buffers the device used, frames received."""

BLK_SCRIPT = rf"""
check blk.vda.appears wait_for /dev/vda 30 || exit 0
{fio_command('restart')} &
fio_pid=$!
sleep 3
echo {KILL_MARKER}
wait $fio_pid
rc=$?
echo {FIO_BEGIN}; cat /tmp/fio.json; echo {FIO_END}
if [ $rc -eq 0 ]; then report blk.fio_verify PASS; else report blk.fio_verify FAIL "fio exited with $rc"; fi
check blk.flush sync
"""

NET_SCRIPT = rf"""
check net.eth0.appears wait_for /sys/class/net/eth0 30 || exit 0
{NET_SETUP}
ping -i 0.2 -c 75 -W 15 10.0.2.2 > /tmp/ping.log 2>&1 &
ping_pid=$!
sleep 3
echo {KILL_MARKER}
wait $ping_pid
echo {PING_BEGIN}; cat /tmp/ping.log; echo {PING_END}
check net.ping_after ping -c 3 -W 5 10.0.2.2
sleep 1
{NET_COUNTERS}
"""

BLK_REQUIRED = frozenset({"blk.vda.appears", "blk.fio_verify", "blk.flush", "host.killed", "host.restarted",
                          "host.fio", "host.server"})
NET_REQUIRED = frozenset({"net.eth0.appears", "net.up", "net.ping_before", "net.ping_stream", "net.ping_after",
                          "net.counters", "host.killed", "host.restarted", "host.tx_once", "host.rx_once", "host.server",
                          "host.ring_layout"})


def _between(log: str, begin: str, end: str) -> str:
    lines = log.splitlines()
    try:
        first = next(i for i, line in enumerate(lines) if line.strip() == begin)
        last = next(i for i in range(first + 1, len(lines)) if lines[i].strip() == end)
    except StopIteration:
        return ""
    return "\n".join(lines[first + 1 : last])


def fio_summary(log: str) -> tuple[bool, str, float]:
    """From fio's JSON between the markers: (no error and I/O in both directions, a
    detail, the largest completion latency in ms: the longest I/O pause the guest saw)."""
    text = _between(log, FIO_BEGIN, FIO_END)
    try:
        job = json.loads(text[text.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError):
        return False, "no fio JSON in the console", 0.0
    error = int(job.get("error", -1))
    ios = {kind: int(job[kind]["total_ios"]) for kind in ("read", "write")}
    worst = max(job[kind]["clat_ns"]["max"] for kind in ("read", "write")) / 1e6
    ok = error == 0 and all(ios.values())
    return ok, f"error={error} reads={ios['read']} writes={ios['write']} max completion latency {worst:.0f} ms", worst


_PING_REPLY = re.compile(r"seq=(\d+) .*time=([\d.]+) ms")
_PING_TOTALS = re.compile(r"(\d+) packets transmitted, (\d+) packets received(?:, \+(\d+) duplicates)?")


def ping_summary(log: str) -> tuple[int, int, int, float]:
    """From the guest's ping stream: (transmitted, received, duplicates, largest RTT ms)."""
    text = _between(log, PING_BEGIN, PING_END)
    totals = _PING_TOTALS.search(text)
    if totals is None:
        return 0, 0, 0, 0.0
    dups = text.count("DUP!")
    rtts = [float(m.group(2)) for m in _PING_REPLY.finditer(text)]
    return int(totals.group(1)), int(totals.group(2)), max(dups, int(totals.group(3) or 0)), max(rtts, default=0.0)


@dataclass
class _Restart:
    """What the kill and restart did (host side)."""

    marker_at: float | None = None
    killed: bool = False
    restart_seconds: float = 0.0
    error: str = ""
    guest_error: str = ""  # the guest's driver found its ring broken (BROKEN_RING)


class _RestartCase:
    """What the blk and net rows share: the back-end, the kill at the marker, the checks."""

    backend: BackEnd | None
    restart: _Restart

    def _kill_and_restart(self, launcher: QemuLauncher, timeout: float) -> BootResult:
        deadline = time.monotonic() + timeout
        line = launcher.wait_for(KILL_MARKER, timeout)
        if line is not None and self.backend is not None:
            self.restart.marker_at = time.monotonic()
            time.sleep(KILL_AFTER)
            try:
                self.backend.kill()
                self.restart.killed = True
                self.restart.restart_seconds = self.backend.start()
            except HostError as exc:
                self.restart.error = str(exc)
            # A ring the guest's driver found broken (a used id it does not have out, I/O
            # errors) never recovers: end the row then instead of at the timeout.
            for line in launcher.lines(max(deadline - time.monotonic(), 1.0)):
                if DONE_MARKER in line:
                    break
                if any(sign in line for sign in BROKEN_RING):
                    self.restart.guest_error = line.strip()
                    return launcher.wait(3.0)
        return launcher.wait(max(deadline - time.monotonic(), 1.0))

    def _ring_layout(self, packed: bool) -> tuple[bool, str]:
        """``host.ring_layout``: both incarnations started their rings with the row's layout."""
        if self.backend is None:
            return False, "no back-end"
        return ring_layout({f"incarnation {i}": log for i, log in enumerate(self.backend.logs)}, packed)

    def _restart_checks(self) -> dict[str, tuple[bool, str]]:
        backend, restart = self.backend, self.restart
        if backend is None:
            return {"host.killed": (False, "no back-end")}
        killed = (restart.killed, "kill -9 while the guest ran its I/O" if restart.killed
                  else restart.error or "the guest never asked for the kill")
        started = len(backend.logs) == 2 and not restart.error
        detail = f"listening {restart.restart_seconds:.2f} s after the kill" if started else restart.error
        if restart.guest_error:
            detail += f"; then the guest printed: {restart.guest_error}"
        return {
            "host.killed": killed,
            "host.restarted": (started, detail),
            "host.server": (backend.alive, "still serving" if backend.alive else "the restarted back-end exited"),
        }


@dataclass
class RestartBlkCase(_RestartCase):
    """fio verify across a ``kill -9`` of the vhost-user-blk back-end (module docstring)."""

    packed: bool = False
    qsd: bool = False
    driver: str = "virtio_blk"
    guest_script: str = BLK_SCRIPT
    backend: BackEnd | None = field(default=None, repr=False)
    restart: _Restart = field(default_factory=_Restart, repr=False)

    @property
    def path(self) -> str:
        """The matrix's path column."""
        return "vhost-user restart (qemu-storage-daemon)" if self.qsd else "vhost-user restart"

    @property
    def device(self) -> str:
        """The matrix's device column."""
        return "vhost-user-blk" + (" (packed)" if self.packed else "")

    @property
    def name(self) -> str:
        """The case (and embedded test) name."""
        return "vhost-user-blk-restart" + ("-packed" if self.packed else "") + ("-qsd" if self.qsd else "")

    @property
    def required_checks(self) -> frozenset[str]:
        """Ours must also show that it resubmitted what was in flight, and the ring layout
        it served (qemu-storage-daemon writes no trace to read it from)."""
        return BLK_REQUIRED if self.qsd else BLK_REQUIRED | {"host.resubmitted", "host.ring_layout"}

    def image_extras(self, builder: ImageBuilder) -> None:
        """fio and its libraries, when the host has fio."""
        fio = shutil.which("fio")
        if fio is not None:
            builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """The image and the first back-end process."""
        self.restart = _Restart()
        image = workdir / "disk.img"
        with open(image, "wb") as f:
            f.truncate(IMAGE_SIZE)
        sock = workdir / "blk.sock"
        if self.qsd:
            if shutil.which("qemu-storage-daemon") is None:
                raise HostError("qemu-storage-daemon not found: install qemu-system-common")
            argv = qsd_argv(sock, image, iops=QSD_IOPS)
        else:
            plan = workdir / "slow-disk.json"
            plan.write_text(json.dumps(SLOW_DISK_PLAN))
            argv = devmodels_argv(sock, "virtio-blk", [f"file:{image}"], faults=plan)
        self.backend = BackEnd("qsd" if self.qsd else "blk", argv, sock, workdir, None if self.qsd else READY)
        stack.callback(self.backend.stop)
        self.backend.start()
        options = ",packed=on" if self.packed else ""
        return Attachment(
            qemu_args=[*SMP_72, "-chardev", f"socket,id=vublk,path={sock},reconnect=1",
                       "-device", f"vhost-user-blk-pci,chardev=vublk,num-queues=1{options}"],
            shared_memory=True,
        )

    def run_guest(self, launcher: QemuLauncher, timeout: float) -> BootResult:
        """Kill the back-end at the guest's marker and start it again (runner rule 5)."""
        return self._kill_and_restart(launcher, timeout)

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The kill and restart, fio's own account, and what the new back-end resubmitted."""
        checks = self._restart_checks()
        ok, detail, _gap = fio_summary(result.log)
        checks["host.fio"] = (ok, detail)
        if not self.qsd and self.backend is not None and len(self.backend.logs) > 1:
            counts = resubmitted(self.backend.logs[-1])
            checks["host.resubmitted"] = (sum(counts) > 0, f"ring starts of the restarted server resubmitted {counts}")
            checks["host.ring_layout"] = self._ring_layout(self.packed)
        return checks


@dataclass
class RestartNetCase(_RestartCase):
    """A ping stream across a ``kill -9`` of the vhost-user-net back-end (module docstring)."""

    driver: str = "virtio_net"
    path: str = "vhost-user restart"
    device: str = "vhost-user-net"
    guest_script: str = NET_SCRIPT
    required_checks: frozenset[str] = NET_REQUIRED
    backend: BackEnd | None = field(default=None, repr=False)
    restart: _Restart = field(default_factory=_Restart, repr=False)
    wire: Wire | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The case (and embedded test) name."""
        return "vhost-user-net-restart"

    def image_extras(self, builder: ImageBuilder) -> None:
        """Nothing beyond busybox."""

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """The wire and the first back-end process."""
        self.restart = _Restart()
        self.wire = Wire(workdir / "wire.sock")
        stack.callback(self.wire.stop)
        sock = workdir / "net.sock"
        argv = devmodels_argv(sock, "virtio-net", [f"socket:{self.wire.path}"])
        self.backend = BackEnd("net", argv, sock, workdir, READY)
        stack.callback(self.backend.stop)
        self.backend.start()
        return Attachment(
            qemu_args=[*SMP_72, "-chardev", f"socket,id=vunet,path={sock},reconnect=1",
                       "-netdev", "vhost-user,id=n0,chardev=vunet",
                       "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,vectors=0"],
            shared_memory=True,
        )

    def run_guest(self, launcher: QemuLauncher, timeout: float) -> BootResult:
        """Kill the back-end at the guest's marker and start it again (runner rule 5)."""
        return self._kill_and_restart(launcher, timeout)

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The kill and restart; the guest's ping stream; every transmit buffer the guest's
        driver saw used reached the wire once, and no frame reached the guest twice."""
        checks = self._restart_checks()
        sent, received, dups, worst = ping_summary(result.log)
        # The stream resumed and nothing came twice. Requests the guest's stack dropped while
        # QEMU showed the link down, and replies the killed server took with it, are lost.
        checks["net.ping_stream"] = (sent > 0 and dups == 0 and received >= sent // 2 and _tail_answered(result.log),
                                     f"{sent} sent, {received} answered, {dups} duplicates, largest RTT {worst:.0f} ms")
        if self.wire is None:
            return checks | {"host.tx_once": (False, "no wire"), "host.rx_once": (False, "no wire")}
        checks["host.ring_layout"] = self._ring_layout(False)
        tx, rx = driver_counters(result)
        checks["host.tx_once"] = tx_once(self.wire, tx)
        checks["host.rx_once"] = (0 <= rx <= self.wire.replies,
                                  f"wire: {self.wire.replies} frames sent; guest driver: {rx} received "
                                  f"({self.wire.replies - rx} lost with the killed server)")
        return checks


def driver_counters(result: BootResult) -> tuple[int, int]:
    """(transmit buffers used, frames received) as the guest's driver counted them
    (``NET_COUNTERS``); -1 for what the guest did not report."""
    words = result.checks.get("net.counters", (False, ""))[1].split()
    counters = dict(word.split("=", 1) for word in words if "=" in word)
    try:
        return int(counters.get("tx", -1)), int(counters.get("rx", -1))
    except ValueError:
        return -1, -1


def tx_once(wire: Wire, tx: int) -> tuple[bool, str]:
    """``host.tx_once``: the driver's ``tx_packets`` counts the transmit buffers the device
    returned as used (virtio 1.2 §5.1.6, transmission): each must have reached the wire once (one
    more frame: a buffer sent twice; one fewer: used but never sent), and no echo request
    may have come twice."""
    twice = sorted(key for key, n in wire.echo_counts().items() if n > 1)
    return (tx == wire.frames and not twice,
            f"guest driver: {tx} transmit buffers used; wire: {wire.frames} frames, echo requests twice: "
            f"{twice or 'none'}; {wire.connections} connections")


def _tail_answered(log: str, count: int = 10) -> bool:
    """The last ``count`` requests of the ping stream were answered: traffic resumed."""
    text = _between(log, PING_BEGIN, PING_END)
    totals = _PING_TOTALS.search(text)
    if totals is None:
        return False
    sent = int(totals.group(1))
    answered = {int(m.group(1)) for m in _PING_REPLY.finditer(text)}
    return all(seq in answered for seq in range(max(sent - count, 0), sent))


def cases() -> list[Any]:
    """The restart rows of our back-ends: blk split and packed, net. The same blk case with
    ``qsd=True`` runs qemu-storage-daemon instead (``tests/conformance``): it is QEMU's
    back-end, not a row of ours."""
    return [RestartBlkCase(packed=False), RestartBlkCase(packed=True), RestartNetCase()]
