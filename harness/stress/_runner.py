"""One stress run: host side up, one guest under load beside CPU hogs, watched, then judged.

Rules:

1. Everything a run opens is on one ``ExitStack``: the work directory, the server and its
   peers, the hogs, QEMU. Closing it ends each of them by PID, whatever happened. The
   hogs start when the guest's load begins (``STRESS-BEGIN``) and run until the run is
   over: the load always runs beside them, and the boot is not slowed down for nothing.
2. The host loop looks twice a second at: our server (the same live process it started,
   ``ProcessIdentity``), QEMU (alive), the guest's progress (``LoadWatch``), and the bounds:
   ``boot_timeout`` until the load begins, ``silence`` without progress while it runs,
   ``duration + overrun`` for the load as a whole. A bound that runs out is a hang; the
   run then collects what it can for diagnosis (the guest's last progress lines, the
   server's stats line where it answers SIGUSR1, the ends of the logs) and stops QEMU.
3. The server is judged at ``STRESS-END``, while QEMU still runs: behind the proxy the
   server leaves on its own once QEMU closes its socket, which is not a death. For
   vhost-user the trace in its log must show one front-end connection, never closed, no
   ring failure, and no ring stopped or started during the load (QEMU would otherwise
   have dropped our device); QEMU's messages must not mention vhost. A virtio path's rings
   must have its layout (split or packed), as the server's trace shows.
4. The guest's results are read after QEMU exits, from the whole console log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._guest import DISK_TEST, NIC_TEST, PATTERN_SIZE, guest_append, pattern, pattern_sha256
from ._hogs import CpuHogs, ProcessIdentity
from ._paths import DISK, GUEST_IP, HOST_IP, VHOST_USER, Started, StressPath
from ._results import RunResult, parse_fio, parse_ping
from ._servers import VhostUserEvents
from ._watch import LoadWatch

if TYPE_CHECKING:
    from ..guest import GuestImage

__all__ = ["Limits", "OnBegin", "run_once", "expected_stream_sha256"]

_TICK = 0.5
_VIRTIO_F_RING_PACKED = 34  # virtio 1.2 §6
GUEST_APPEND = ("no_timer_check",)
"""Kernel words for every stress guest: on a host whose CPUs are busy (seen with the hogs
running during the boot), the kernel's early check that the timer reaches the IO-APIC can
time out under TCG and panic the guest ("IO-APIC + timer doesn't work!") before any device
is touched."""
_MEMORY_MB = 512


@dataclass(frozen=True)
class Limits:
    """The load and its bounds (rule 2), in seconds."""

    duration: int = 60
    silence: float = 30.0
    interval: float = 2.0
    boot_timeout: float = 300.0
    overrun: float = 120.0
    done_timeout: float = 120.0
    hogs: int = 2


def expected_stream_sha256(size: int) -> str:
    """SHA-256 of ``size`` bytes of the pattern repeated (what the guest's TCP stream sends)."""
    data = pattern()
    digest = hashlib.sha256()
    whole, part = divmod(size, len(data))
    for _ in range(whole):
        digest.update(data)
    digest.update(data[:part])
    return digest.hexdigest()


OnBegin = Callable[[contextlib.ExitStack, Started], None]
"""Called once when the load begins, with the run's stack and host side (to inject a fault)."""


def run_once(path: StressPath, image: GuestImage, run: int, limits: Limits, *,
             keep_dir: Path | None = None, progress: Callable[[str], None] = lambda line: None,
             on_begin: OnBegin | None = None) -> RunResult:
    """Run ``path`` once under load (rules 1–4); ``on_begin`` lets a test break something
    once the load runs, to see the run notice it."""
    result = RunResult(path.name, run)
    began = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"devmodels-stress-{path.name}-")))
            started = path.start(stack, workdir)
            _Run(path, image, run, limits, started, result, keep_dir, progress).execute(stack, on_begin)
    except Exception as exc:  # noqa: BLE001 - a run that cannot start is a failed run, named
        result.problems.append(f"{type(exc).__name__}: {exc}")
    result.seconds = time.monotonic() - began
    result.judge()
    return result


class _Run:
    """The host loop of one run and its reading of the results."""

    def __init__(self, path: StressPath, image: GuestImage, run: int, limits: Limits, started: Started,
                 result: RunResult, keep_dir: Path | None, progress: Callable[[str], None]) -> None:
        self.path, self.image, self.run, self.limits = path, image, run, limits
        self.started, self.result, self.keep_dir, self.progress = started, result, keep_dir, progress
        self.watch = LoadWatch(("io",) if path.kind == DISK else ("tcp", "icmp"))
        self.server = ProcessIdentity(started.server.pid)
        result.server_pid = self.server.pid
        self.events_begin: VhostUserEvents | None = None
        self.events_end: VhostUserEvents | None = None
        self.server_at_end: bool | None = None

    # -- the loop (rule 2) ---------------------------------------------------------------------

    def execute(self, stack: contextlib.ExitStack, on_begin: OnBegin | None = None) -> None:
        from ..qemu.launcher import QemuLauncher

        path, limits = self.path, self.limits
        values: dict[str, Any] = {"duration": limits.duration, "interval": limits.interval, "irq": path.irq}
        if path.kind == DISK:
            values["dev"] = path.guest_device
        else:
            values.update(host=HOST_IP, guest=GUEST_IP, rxsha=pattern_sha256())
        serial_log = self.keep_dir / f"{path.name}-{self.run}.console.log" if self.keep_dir else None
        hogs = CpuHogs(limits.hogs)
        stack.callback(hogs.stop)
        launcher = QemuLauncher.for_image(
            self.image, memory_mb=_MEMORY_MB, smp=path.cpus.online, args=[*self.started.qemu_args, *path.cpus.args()],
            append=[*self.started.append, *GUEST_APPEND, *guest_append(**values)], test=DISK_TEST if path.kind == DISK else NIC_TEST,
            shared_memory=True, pass_fds=self.started.pass_fds, qemu=path.qemu, serial_log=serial_log,
            on_line=self._on_line, done_grace=10.0)
        stack.callback(launcher.stop)
        launcher.start()
        assert launcher.pid is not None
        qemu = ProcessIdentity(launcher.pid)
        launched = time.monotonic()
        hogs_ok = True
        load_seen = False
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            if self.watch.begun_at is not None and not load_seen:
                load_seen = True
                hogs.start()  # the load began: from now on the host is kept busy
                if on_begin is not None:
                    on_begin(stack, self.started)
            hogs_ok = hogs_ok and hogs.alive()
            if self.server_at_end is not None:  # STRESS-END came: judged then, in _on_line
                break
            if not self.server.same():
                self._server_gone()
                break
            if not qemu.same():
                self.result.problems.append("QEMU exited before the load ended")
                break
            if self.watch.begun_at is None:
                if now - launched > limits.boot_timeout:
                    self._hang(f"the load did not begin within {limits.boot_timeout:.0f} s of QEMU's start")
                    break
                continue
            if self.path.vhost_user and self.events_begin is None:
                self.events_begin = self._events()
            stall = self.watch.stall(limits.silence)
            if stall is not None:
                self._hang(stall)
                break
            if now - self.watch.begun_at > limits.duration + limits.overrun:
                self._hang(f"the load did not end within {limits.duration + limits.overrun:.0f} s")
                break
        self.result.hogs = hogs_ok and hogs.alive() and (len(hogs.pids) == limits.hogs or self.watch.begun_at is None)
        boot = launcher.wait(limits.done_timeout if self.watch.ended_at is not None and not self.result.hung else 0.1)
        self.result.boot_seconds = (self.watch.begun_at - launched) if self.watch.begun_at is not None else 0.0
        self.result.began = self.watch.begun_at is not None
        self.result.ended = self.watch.ended_at is not None
        if self.watch.begun_at is not None:
            self.result.load_seconds = (self.watch.ended_at or time.monotonic()) - self.watch.begun_at
        self._judge_server(boot.stderr)
        self._judge_layout()
        self._read(boot.log)
        if self.result.hung or not self.result.ended:
            self.result.diagnosis.append(f"qemu exit status {boot.exit_code}, stderr: "
                                         + " | ".join(boot.stderr.strip().splitlines()[-5:]))
        if not self.result.began:
            self.result.diagnosis.append("console: " + " | ".join(boot.log.strip().splitlines()[-5:]))
        if self.keep_dir is not None:
            shutil.copyfile(self.started.server_log, self.keep_dir / f"{path.name}-{self.run}.server.log")

    def _events(self) -> VhostUserEvents:
        return VhostUserEvents.parse(self.started.server_log.read_text(errors="replace"))

    def _on_line(self, line: str) -> None:
        """Every console line (the launcher's reader thread): the watch, and rule 3 at the
        moment ``STRESS-END`` arrives, while QEMU is still printing."""
        self.watch.feed(line)
        if self.watch.ended_at is not None and self.server_at_end is None and not self.result.hung:
            if self.path.vhost_user:
                self.events_end = self._events()
            self.server_at_end = self.server.same()

    def _server_gone(self) -> None:
        status = self.started.server.poll()
        self.result.server_detail = f"server {self.server.pid} ended (exit status {status}) during the run"
        self.server_at_end = False
        self.result.problems.append(self.result.server_detail)
        self.result.diagnosis.append("server log: " + self._tail(self.started.server_log, 10))

    def _hang(self, what: str) -> None:
        """Rule 2: record the hang and what the guest and the server showed."""
        self.result.hung = True
        self.result.hang = what
        self.server_at_end = self.server.same()
        recent = self.watch.recent()
        self.result.diagnosis.append("last progress: " + (" | ".join(recent[-3:]) if recent else "none"))
        if self.path.attachment != VHOST_USER and self.server_at_end:
            with contextlib.suppress(OSError):
                os.kill(self.server.pid, signal.SIGUSR1)  # devmodels mpqemu / vfio-user print a stats line
            time.sleep(1.0)
        if self.path.vhost_user:
            self.events_end = self._events()
        self.result.diagnosis.append("server log: " + self._tail(self.started.server_log, 8))
        self.progress(f"stress: {self.path.name} run {self.run}: HANG: {what}")

    @staticmethod
    def _tail(path: Path, lines: int) -> str:
        try:
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError as exc:
            return f"unreadable: {exc}"

    # -- judging (rules 3 and 4) -----------------------------------------------------------------

    def _judge_server(self, qemu_stderr: str) -> None:
        result = self.result
        if self.server_at_end is None:  # QEMU left before the load ended: judged now
            self.server_at_end = self.server.same()
        if not result.server_detail:
            result.server_same = bool(self.server_at_end)
            result.server_detail = (f"pid {self.server.pid} alive throughout" if result.server_same
                                    else f"server {self.server.pid} was not the same live process at the end")
        if not self.path.vhost_user:
            return
        notes = []
        end = self.events_end
        if end is None:
            notes.append("no trace of the connection was read")
        else:
            if end.connects != 1:
                notes.append(f"{end.connects} front-end connections")
            if end.disconnects:
                notes.append(f"the front-end disconnected {end.disconnects} time(s) during the run")
            if end.ring_failures:
                notes.append(f"{end.ring_failures} ring failure(s)")
            if self.events_begin is not None:
                during = end - self.events_begin
                if during.ring_starts or during.ring_stops:
                    notes.append(f"rings started {during.ring_starts} / stopped {during.ring_stops} times during "
                                 "the load")
        vhost = [line.strip() for line in qemu_stderr.splitlines() if "vhost" in line.lower()]
        if vhost:
            notes.append(f"QEMU: {vhost[0][:160]}")
        result.fallback = "; ".join(notes)

    def _judge_layout(self) -> None:
        """The driver's rings had the path's layout (``StressPath.layout``): for vhost-user the
        last ring started, for our virtio-pci the features of the last DRIVER_OK."""
        want = self.path.layout
        if want is None or not self.result.began:
            return
        if self.path.vhost_user:
            packed = self.events_end.last_packed if self.events_end is not None else None
        else:
            from ..conformance.cases.virtio_pci import negotiated_features

            features = negotiated_features(self.started.server_log.read_text(errors="replace"))
            packed = None if features is None else bool(features >> _VIRTIO_F_RING_PACKED & 1)
        self.result.layout = "?" if packed is None else "packed" if packed else "split"
        if self.result.layout != want:
            self.result.problems.append(f"ring layout {self.result.layout}, the path wants {want}")

    def _read(self, log: str) -> None:
        lines = log.splitlines()
        self.result.driver_messages = [_after(line, "STRESS-DMESG").strip() for line in lines
                                       if "STRESS-DMESG" in line]
        if self.path.kind == DISK:
            self._read_fio(lines)
        else:
            self._read_net(lines)

    def _read_fio(self, lines: list[str]) -> None:
        status = next((_after(line, "STRESS-FIO-RC") for line in lines if "STRESS-FIO-RC" in line), None)
        text = _between(lines, "STRESS-FIO-BEGIN", "STRESS-FIO-END")
        if text is None:
            if self.result.ended:
                self.result.verify_errors += 1
                self.result.problems.append("fio printed no output")
            return
        fio = parse_fio(status, text)
        self.result.verify_errors += fio.verify_errors
        if fio.verify_errors:
            detail = fio.verify_messages[0] if fio.verify_messages else f"status {fio.status} errors {fio.job_errors}"
            self.result.diagnosis.append(f"fio: {detail}")
        self.result.bytes_moved = fio.read_bytes + fio.write_bytes
        if fio.runtime_ms:
            seconds = fio.runtime_ms / 1000
            self.result.mb_per_s = self.result.bytes_moved / seconds / 1e6
            self.result.iops = (fio.read_ios + fio.write_ios) / seconds

    def _read_net(self, lines: list[str]) -> None:
        result = self.result
        sent = _number(lines, r"STRESS-TX-SENT (\d+)")
        rx = next((re.search(r"conns=(\d+) bad=(\d+)", line) for line in lines if "STRESS-RX " in line), None)
        ping = next((parse_ping(line) for line in lines if "STRESS-PING" in line), None)
        netstat = next((dict(re.findall(r"(\w+)=(\d+)", _after(line, "STRESS-NETSTAT")))
                        for line in lines if "STRESS-NETSTAT" in line), {})
        result.ping = ping
        seconds = max(result.load_seconds, 1e-3)
        sink = self.started.sink
        received = sink.wait_received(1, 10.0) if sink is not None and result.ended else []
        tx_bytes = sum(int(c["bytes"]) for c in received)
        if result.ended:
            if sent is None or len(received) != 1:
                result.data_errors += 1
                result.problems.append(f"TCP stream out: the guest sent {sent} copies, the sink saw "
                                       f"{len(received)} connection(s)")
            else:
                want = sent * PATTERN_SIZE
                got = received[0]
                if got["bytes"] != want or got["sha256"] != expected_stream_sha256(want):
                    result.data_errors += 1
                    result.problems.append(f"TCP stream out: the sink got {got['bytes']} bytes "
                                           f"(sha256 {got['sha256'][:12]}), the guest sent {want}")
            if rx is None:
                result.data_errors += 1
                result.problems.append("TCP streams in: no result from the guest")
        rx_good = 0
        if rx is not None:
            conns, bad = int(rx.group(1)), int(rx.group(2))
            result.data_errors += bad
            rx_good = (conns - bad) * PATTERN_SIZE
        csum = int(netstat.get("tcp_csum_errs", 0)) + int(netstat.get("tcp_in_errs", 0))
        if csum:
            result.data_errors += csum
            result.problems.append(f"the guest's TCP dropped {csum} segment(s) with bad checksums or errors")
        if netstat:
            result.diagnosis.append("netstat: " + " ".join(f"{k}={v}" for k, v in netstat.items()))
        result.bytes_moved = tx_bytes + rx_good
        result.tcp_tx_mb_per_s = tx_bytes / seconds / 1e6
        result.tcp_rx_mb_per_s = rx_good / seconds / 1e6
        result.mb_per_s = result.bytes_moved / seconds / 1e6


def _after(line: str, marker: str) -> str:
    return line[line.find(marker) + len(marker):]


def _between(lines: list[str], begin: str, end: str) -> str | None:
    inside = False
    out: list[str] = []
    for line in lines:
        if not inside:
            if begin in line:
                inside = True
            continue
        if end in line:
            return "\n".join(out)
        out.append(line)
    return None


def _number(lines: list[str], pattern: str) -> int | None:
    for line in lines:
        match = re.search(pattern, line)
        if match:
            return int(match.group(1))
    return None
