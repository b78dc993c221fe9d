"""``python -m bench e1000``: devmodels' e1000 behind x-pci-proxy-dev against QEMU's built-in e1000.

The same guest image boots once per mode, each time with one e1000 on a TAP whose host side
sits in a fresh network namespace (``10.0.3.1/24``, the kernel's own stack answers ping; a
TCP sink from ``harness.conformance.cases.e1000_tap`` counts and hashes what arrives):

- ``ours``: devmodels' 82540EM served by ``python -m devmodels mpqemu --backend
  tap:NAME`` to ``x-pci-proxy-dev``. QEMU 7.2's proxy delivers INTx only through KVM
  irqfds, so this guest needs ``irqpoll nolapic_timer nohz=off`` (interrupts are serviced
  from the 250 Hz timer tick).
- ``peer``: ``-netdev tap,ifname=NAME,script=no,downscript=no -device e1000``, default
  kernel command line (real INTx).
- ``peer-polled``: the same built-in device with ours' kernel parameters, for fairness.

Every mode boots under the same QEMU (``--qemu``; the proxy path, ``--path proxy``, needs
7.2, whose proxy segfaults under 11.1 TCG) with ``--smp``/``--maxcpus`` vCPUs (one online of
two by default, so that 7.2's TCG keeps the guest's memory barriers: ``bench.common`` rule 5).

Per run the guest measures (i) ICMP echo round trips per second, ``ping -q -A -c COUNT``
timed with the guest clock (job ``echo``; every request must be answered), and (ii) TCP
throughput guest -> namespace, ``nc`` sending ``--mib`` MiB from tmpfs, timed by the sink
from first byte to end of stream (job ``tcp``; MB = 10**6 bytes; every byte must arrive).
Figures are medians over ``--runs``; ratios are ours / peer over equally many runs. For our
server the bench samples its counters (SIGUSR1) and CPU time at each run's begin and end:
socket messages and server CPU per echo and per MiB sent. A job that hangs or ends without
a figure stops the bench with exit status 1, naming the job and the mode.

Before the boots, ``access_latency`` times the per-access path without a guest: a stand-in
for QEMU's proxy (``mpqemu.testing.FakeProxy``, one ``sendmsg`` and one
blocking read per access, as proxy.c) drives the real server process over a socketpair,
guest RAM is a shared memfd, and the figure is the median time one access blocks the
caller (what a vCPU waits): a STATUS read, an IMC write, and a TDT write that queues one
64 KiB TSO packet (45 segments to a socket backend, 3 ms apart), with the device's posted
ring work on (the default) and off (``--opt posted=off``, i.e. TX processed before the reply).

Output: a table, or with ``--json`` one object with ``ours_pps``, ``peer_pps``, ``ratio``
and ``ratio_runs`` (echo, ours / peer), ``ours_mbps``, ``peer_mbps``, ``mbps_ratio`` and
``mbps_ratio_runs``, the same against ``peer-polled`` (``peer_polled_pps``, ``ratio_polled``,
``peer_polled_mbps``, ``mbps_ratio_polled``, each ratio with its ``_runs``) for the modes run,
``modes`` with every run, ``guest`` (QEMU version, vCPUs, barriers) and ``access_us``
(per-access medians). ``--profile FILE`` runs our server under cProfile. Needs root
(namespaces, TAP), qemu-system-x86_64 and iproute2.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    GUEST_FUNCTIONS,
    Attachment,
    BenchFailure,
    Deadlines,
    Figure,
    GuestConfig,
    GuestRuns,
    GuestSession,
    Health,
    LauncherSession,
    MpqemuStats,
    Plan,
    Run,
    RunFailed,
    Sampler,
    add_guest_options,
    compare,
    end_process,
    fmt,
    guest_config,
    per_io,
    processes_alive,
    python_env,
    run_main,
    runs_text,
    watch,
    workdir,
)

__all__ = ["main", "MODES", "PATHS", "JOBS", "Params", "Booted", "boot", "guest_script", "figure", "summarize",
           "access_latency"]

# mode: (description, uses polled-INTx kernel parameters)
MODES: dict[str, tuple[str, bool]] = {
    "ours": ("devmodels e1000 (proxy, polled INTx)", True),
    "peer": ("QEMU e1000", False),
    "peer-polled": ("QEMU e1000, polled-INTx cmdline", True),
}
JOBS = ("echo", "tcp")
TEST = "bench-e1000"
PATHS = (Attachment("proxy", ("7.2",), "x-pci-proxy-dev to devmodels mpqemu; 11.1's proxy segfaults under TCG"),)


def guest_script() -> str:
    """The guest side; its parameters come from the kernel command line (``dmbench.*``)."""
    from harness.conformance.cases.e1000_tap import GUEST_IP, HOST_IP, PREFIX_LEN, SINK_PORT

    return GUEST_FUNCTIONS + rf"""
runs=$(cmdline_value dmbench.runs); count=$(cmdline_value dmbench.count); mib=$(cmdline_value dmbench.mib)
side=$(cmdline_value dmbench.side)
check_pci_driver bench.bound 8086:100e e1000 || exit 0
if ! wait_for /sys/class/net/eth0 5; then report bench.eth0 FAIL "no eth0"; exit 0; fi
ip link set eth0 up
ip addr add {GUEST_IP}/{PREFIX_LEN} dev eth0
n=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
n=0
while ! ping -c 1 -W 1 {HOST_IP} >/dev/null 2>&1 && [ $n -lt 30 ]; do n=$((n + 1)); done
check bench.ping ping -c 3 -W 5 {HOST_IP} || exit 0
now() {{
    if [ -r /proc/timer_list ]; then
        head -n 3 /proc/timer_list | sed -n 's/^now at \([0-9]*\) nsecs.*/\1/p'
    else
        awk '{{ printf "%d\n", $1 * 1000000000 }}' /proc/uptime
    fi
}}
retrans() {{
    awk '/^Tcp:/ {{ if (!h) {{ for (i = 1; i <= NF; i++) if ($i == "RetransSegs") c = i; h = 1 }} else print $c }}' /proc/net/snmp
}}
echo_run() {{
    t0=$(now); out=$(ping -q -A -c $count -W 5 {HOST_IP} 2>&1); rc=$?; t1=$(now)
    got=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    echo "ECHO $t0 $t1 ${{got:-0}}"
    return $rc
}}
tcp_run() {{
    r0=$(retrans); t0=$(now); nc {HOST_IP} {SINK_PORT} < /tmp/bulk; rc=$?; t1=$(now); r1=$(retrans)
    echo "TCP $t0 $t1 $((r1 - r0))"
    return $rc
}}
dd if=/dev/urandom of=/tmp/bulk bs=1M count=$mib 2>/dev/null
i=0
while [ $i -lt $runs ]; do
    bench_job $side echo $i echo_run
    bench_job $side tcp $i tcp_run
    i=$((i + 1))
done
report bench.done PASS "$runs runs"
"""


@dataclass(frozen=True)
class Params:
    """What to run: runs per job, echo requests per run, MiB per TCP run, extra ``--opt``
    for our server, and where to write its profile."""

    runs: int
    count: int
    mib: int
    ours_opts: tuple[str, ...] = ()
    profile: Path | None = None

    def plan(self, mode: str) -> Plan:
        """A boot's runs: echo then TCP, ``runs`` times."""
        return Plan(tuple((mode, job, i) for i in range(self.runs) for job in JOBS))

    def deadlines(self) -> Deadlines:
        """Generous bounds: our polled echo runs at a few hundred round trips a second."""
        return Deadlines(start=240.0, job=120.0, gap=60.0, finish=60.0,
                         per_job={"echo": self.count / 20.0 + 60.0, "tcp": self.mib * 3.0 + 60.0})


def _numbers(run: Run, tag: str, count: int) -> list[int]:
    for line in run.output:
        words = line.split()
        if len(words) == count + 1 and words[0] == tag and all(w.isdigit() for w in words[1:]):
            return [int(w) for w in words[1:]]
    raise RunFailed(f"no {tag} line in the output (exit status {run.status}): {' | '.join(run.output[-2:])}")


def figure(params: Params) -> Callable[[Run], Figure]:
    """The figure of one run: echo round trips per second (all ``count`` answered), or for
    TCP the guest-timed MB/s (all sent; ``summarize`` takes the sink's timing instead)."""
    def of(run: Run) -> Figure:
        if run.job == "echo":
            t0, t1, received = _numbers(run, "ECHO", 3)
            if received != params.count:
                raise RunFailed(f"{params.count - received} of {params.count} echo requests unanswered "
                                f"(ping exit status {run.status})")
            if t1 <= t0:
                raise RunFailed("the guest clock did not advance")
            return Figure(params.count / ((t1 - t0) / 1e9), params.count)
        t0, t1, retrans = _numbers(run, "TCP", 3)
        if run.status != 0:
            raise RunFailed(f"nc exited with status {run.status}")
        if t1 <= t0:
            raise RunFailed("the guest clock did not advance")
        return Figure((params.mib << 20) / ((t1 - t0) / 1e3), params.mib, {"retrans": retrans})
    return of


@dataclass
class Booted:
    """A booted guest (``session``), ``received(count, timeout)``: the TCP sink's finished
    connections, and for mode ``ours`` our server's counters, health and log."""

    session: GuestSession
    received: Callable[[int, float], list[dict[str, Any]]]
    sampler: Sampler | None = None
    health: Health | None = None
    logs: dict[str, Path] = field(default_factory=dict)


Boot = Callable[[str, GuestConfig, Params, Path, Any], contextlib.AbstractContextManager[Booted]]


def _spawn_server(sock: socket.socket, backend: str, opts: Sequence[str], log: Path | None,
                  profile: Path | None = None, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    args = ["-m", "devmodels", "mpqemu", "--fd", str(sock.fileno()), "--device", "e1000", "--backend", backend]
    for opt in opts:
        args += ["--opt", opt]
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    with open(log if log is not None else os.devnull, "wb") as out:
        return subprocess.Popen([sys.executable, *prefix, *args], pass_fds=[sock.fileno(), *pass_fds],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=python_env())


# Layout of the access benchmark's guest RAM (a memfd shared with the server).
_RAM = 4 << 20
_BAR0 = 0xC000_0000
_TX_RING, _TX_COUNT = 0x1000, 256
_TX_BUF = 0x10_0000
_TSO_HDR, _TSO_MSS, _TSO_PAYLOAD = 54, 1448, 65_000
_DESC = struct.Struct("<QII")
_TDT_GAP = 0.003  # seconds between timed TDT writes


def _tso_packet() -> bytes:
    """An IPv4/TCP packet as Linux hands it to e1000 for TSO (lengths 0, pseudo sum seed)."""
    ip = bytearray(20)
    ip[0], ip[8], ip[9], ip[12:20] = 0x45, 64, 6, bytes([10, 0, 3, 2, 10, 0, 3, 1])
    tcp = bytearray(20)
    tcp[0:4], tcp[12], tcp[13] = bytes([0x13, 0x88, 0x13, 0x89]), 0x50, 0x18
    seed = (sum(int.from_bytes(ip[i:i + 2], "big") for i in range(12, 20, 2)) + 6) % 0xFFFF
    tcp[16:18] = seed.to_bytes(2, "big")
    eth = bytes.fromhex("020000000001525400123456") + b"\x08\x00"
    return eth + bytes(ip) + bytes(tcp) + bytes(i & 0xFF for i in range(_TSO_PAYLOAD))


def access_latency(count: int, opts: Sequence[str] = ()) -> dict[str, float]:
    """Median microseconds one access blocks the proxy (see the module docstring)."""
    from devmodels.e1000 import regs as r
    from mpqemu.testing import FakeProxy

    host, wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with contextlib.suppress(OSError):  # room for bursts of segments (root may force it)
        wire.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), 16 << 20)
    drainer = _Drainer(host, wire)  # forked first: it must hold no other descriptor of ours
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ram_fd = os.memfd_create("bench-e1000-ram", os.MFD_CLOEXEC)
    os.ftruncate(ram_fd, _RAM)
    ram = mmap.mmap(ram_fd, _RAM)
    wire_fd = wire.fileno()
    server = _spawn_server(ours, f"socket-fd:{wire_fd}", opts, None, pass_fds=[wire_fd])
    ours.close()
    wire.close()
    try:
        proxy = FakeProxy(theirs, timeout=30.0)
        proxy.sync_sysmem([(0, _RAM, 0, ram_fd)])
        proxy.config_write(0x10, _BAR0, 4)
        proxy.config_write(0x04, 0x6, 2)  # memory space, bus master
        for reg, value in ((r.TDBAL, _TX_RING), (r.TDBAH, 0), (r.TDLEN, 16 * _TX_COUNT), (r.TDH, 0), (r.TDT, 0),
                           (r.TCTL, r.TCTL_EN | r.TCTL_PSP)):
            proxy.bar_write(_BAR0 + reg, value, 4)
        packet = _tso_packet()
        ram[_TX_BUF:_TX_BUF + len(packet)] = packet
        chunks = [(_TX_BUF + off, min(4096, len(packet) - off)) for off in range(0, len(packet), 4096)]
        tail = 0

        def queue_tso() -> int:
            nonlocal tail
            context = (14 | 24 << 8 | 33 << 16 | 34 << 32 | 50 << 40,
                       (r.TUCMD_TCP | r.TUCMD_IP | r.TUCMD_TSE | r.TXD_CMD_DEXT) << 24 | (len(packet) - _TSO_HDR),
                       _TSO_HDR << 8 | _TSO_MSS << 16)
            descs = [context]
            data = (r.TXD_CMD_IFCS | r.TXD_CMD_DEXT | r.TXD_CMD_TSE) << 24 | r.TXD_DTYP_DATA << 20
            for n, (addr, length) in enumerate(chunks):
                last = (r.TXD_CMD_EOP | r.TXD_CMD_RS | r.TXD_CMD_IDE) << 24 if n == len(chunks) - 1 else 0
                descs.append((addr, data | last | length, (r.POPTS_TXSM | r.POPTS_IXSM) << 8))
            for desc in descs:
                _DESC.pack_into(ram, _TX_RING + 16 * tail, *desc)
                tail = (tail + 1) % _TX_COUNT
            return tail

        def timed(action: Callable[[], object], prepare: Callable[[], int] | None = None) -> float:
            samples = []
            for _ in range(count):
                arg = 0
                if prepare is not None:
                    arg = prepare()
                    # A guest does other work between packets: leave the server idle first,
                    # so the figure is what this one access costs, not a backlog.
                    time.sleep(_TDT_GAP)
                t0 = time.perf_counter_ns()
                action() if prepare is None else proxy.bar_write(_BAR0 + r.TDT, arg, 4)
                samples.append(time.perf_counter_ns() - t0)
            return statistics.median(samples) / 1e3

        result = {
            "read_status": timed(lambda: proxy.bar_read(_BAR0 + r.STATUS, 4)),
            "write_imc": timed(lambda: proxy.bar_write(_BAR0 + r.IMC, 0, 4)),
            "write_tdt_tso64k": timed(lambda: None, queue_tso),
        }
        theirs.close()
        server.wait(30)  # it saw the end of stream; its end of the wire is closed
        want = count * -(-(len(packet) - _TSO_HDR) // _TSO_MSS)
        got = drainer.frames()
        if got != want:
            raise SystemExit(f"bench e1000: access benchmark sent {got} frames, expected {want}")
        return result
    finally:
        theirs.close()
        end_process(server)
        drainer.close()
        ram.close()
        os.close(ram_fd)


class _Drainer:
    """A child process that reads frames from ``sock`` until end of stream and counts them
    (a process, so the timing loop never waits for a GIL held by the reader)."""

    def __init__(self, sock: socket.socket, other_end: socket.socket) -> None:
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: count, report, leave without running parent cleanup
            count = 0
            try:
                os.close(read_end)
                other_end.close()
                sock.setblocking(True)
                while sock.recv(1 << 17):
                    count += 1
                os.write(write_end, str(count).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        sock.close()
        self._read_end = read_end
        self._count: int | None = None

    def frames(self) -> int:
        """Frames counted (waits for the child: the wire must be closed on the far side)."""
        if self._count is None:
            data = os.read(self._read_end, 64)
            self._count = int(data) if data else -1
        return self._count

    def close(self) -> None:
        """End the child by its PID if it still runs, and reap it."""
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self._read_end)


def _wait_then_end(server: subprocess.Popen[bytes]) -> None:
    # QEMU is gone: the server sees the disconnect and exits (writing its profile).
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(30)
    end_process(server)


def build_image(config: GuestConfig) -> Any:
    """The guest image (root and ``config``'s QEMU checked first)."""
    from harness.guest import ImageBuilder

    if os.geteuid() != 0:
        raise SystemExit("bench e1000: needs root (network namespaces and TAP devices)")
    reason = config.qemu.unavailable()
    if reason is not None:
        raise SystemExit(f"bench e1000: {reason}")
    builder = ImageBuilder()
    builder.add_test(TEST, guest_script())
    return builder.build(progress=False)


@contextlib.contextmanager
def boot(mode: str, config: GuestConfig, params: Params, work: Path, image: Any) -> Iterator[Booted]:
    """Boot ``image`` once in ``mode`` with its namespace, sink and (ours) server."""
    from harness.conformance.cases.e1000 import POLLED_INTX_APPEND
    from harness.conformance.cases.e1000_tap import HOST_IP, PREFIX_LEN, NetNamespace, TcpSink
    from harness.qemu.launcher import QemuLauncher

    append = [*(POLLED_INTX_APPEND if MODES[mode][1] else ()), f"dmbench.runs={params.runs}",
              f"dmbench.count={params.count}", f"dmbench.mib={params.mib}", f"dmbench.side={mode}"]
    tap = f"dmb{os.getpid() % 100000}{mode[:6]}"[:15]
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(NetNamespace.unique("bench-e1000"))
        kwargs: dict[str, Any] = {"append": append, "test": TEST, "memory_mb": 512, "qemu": config.qemu,
                                  "smp": config.smp}
        server: subprocess.Popen[bytes] | None = None
        theirs: socket.socket | None = None
        log = work / f"server-{mode}.log"
        if mode == "ours":
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            stack.callback(theirs.close)
            server = _spawn_server(ours, f"tap:{tap}", params.ours_opts, log, params.profile)
            stack.callback(_wait_then_end, server)
            ours.close()
            proc = server
            ns.adopt(tap, f"{HOST_IP}/{PREFIX_LEN}", alive=lambda: proc.poll() is None)
            kwargs.update(args=["-device", f"x-pci-proxy-dev,id=dev0,fd={theirs.fileno()}", *config.qemu_args()],
                          pass_fds=[theirs.fileno()], shared_memory=True)
        else:
            kwargs.update(args=["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                                "-device", "e1000,netdev=n0", *config.qemu_args()])
        sink = stack.enter_context(TcpSink(ns, HOST_IP))
        launcher = stack.enter_context(QemuLauncher.for_image(image, serial_log=work / f"{mode}.log", **kwargs))
        if theirs is not None:
            theirs.close()  # QEMU holds its copy; the server sees end of stream when QEMU exits
        else:
            ns.adopt(tap, f"{HOST_IP}/{PREFIX_LEN}", alive=lambda: launcher.result().exit_code is None)
        if server is None:
            yield Booted(LauncherSession(launcher), sink.wait_received)
        else:
            yield Booted(LauncherSession(launcher), sink.wait_received, MpqemuStats(server.pid, log),
                         processes_alive({"ours": server}, {"ours": log}), {"ours": log})


def run_mode(mode: str, runs: GuestRuns, received: list[dict[str, Any]], params: Params) -> dict[str, Any]:
    """One mode's figures: echo rates, the sink-timed TCP rates (every connection complete,
    one per run), and for ours the counters per echo and per MiB.

    Raises:
        BenchFailure: the sink did not get one complete stream per TCP run.
    """
    want = params.mib << 20
    for i in range(params.runs):
        if i >= len(received) or received[i]["bytes"] != want or received[i]["eof_ns"] <= received[i]["first_ns"]:
            got = received[i]["bytes"] if i < len(received) else 0
            raise BenchFailure(f"no figure: the sink received {got} of {want} bytes ({len(received)} connections)",
                               job="tcp", side=mode, run=i, runs=params.runs)
    out: dict[str, Any] = {
        "pps_runs": runs.values(mode, "echo"),
        "mbps_runs": [r["bytes"] / ((r["eof_ns"] - r["first_ns"]) / 1e3) for r in received[:params.runs]],
        "guest_mbps_runs": runs.values(mode, "tcp"),
        "retrans": [runs.figures[k].extra.get("retrans", 0) for k in runs.plan.runs_of(mode, "tcp")],
        "sink_bytes": [r["bytes"] for r in received],
        "boot_seconds": runs.result.elapsed,
    }
    out["pps"], out["mbps"] = statistics.median(out["pps_runs"]), statistics.median(out["mbps_runs"])
    for job, unit in (("echo", "echo"), ("tcp", "mib")):
        for key, counters, scale in (("messages", ("messages",), 1.0), ("server_cpu_us", ("cpu_ns",), 1e-3)):
            value = per_io(runs, mode, job, counters, scale)
            if value is not None:
                out[f"{key}_per_{unit}"], out[f"{key}_per_{unit}_runs"] = value.median, value.runs
    return out


def summarize(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Medians per mode and the ratios ours / peer with their run counts, for the modes run."""
    out: dict[str, Any] = {}
    for peer, suffix in (("peer", ""), ("peer-polled", "_polled")):
        if peer not in modes:
            continue
        key = peer.replace("-", "_")
        out[f"{key}_pps"], out[f"{key}_mbps"] = modes[peer]["pps"], modes[peer]["mbps"]
        if "ours" in modes:
            out.update(compare(modes["ours"]["pps_runs"], modes[peer]["pps_runs"], what=f"echo, ours/{peer}")
                       .fields(f"ratio{suffix}", "ours_pps", f"{key}_pps"))
            out.update(compare(modes["ours"]["mbps_runs"], modes[peer]["mbps_runs"], what=f"tcp, ours/{peer}")
                       .fields(f"mbps_ratio{suffix}", "ours_mbps", f"{key}_mbps"))
    if "ours" in modes:
        out.update(ours_pps=modes["ours"]["pps"], ours_mbps=modes["ours"]["mbps"])
    out["modes"] = modes
    return out


def _text(summary: dict[str, Any], access: dict[str, dict[str, float]], config: GuestConfig | None) -> list[str]:
    lines = [f"per-access round trip, {name.replace('_', ' ')}: "
             + ", ".join(f"{key} {value:.1f} us" for key, value in figures.items())
             for name, figures in access.items()]
    modes = summary["modes"]
    if not modes or config is None:
        return lines
    names = [m for m in MODES if m in modes]
    lines.append(f"guest: {config.describe(summary['guest']['qemu'])}")
    lines.append(f"{'metric':<26}" + "".join(f"{MODES[m][0]:>38}" for m in names))
    lines.append(f"{'echo round trips/s':<26}" + "".join(f"{fmt(modes[m]['pps']):>38}" for m in names))
    lines.append(f"{'TCP guest->host MB/s':<26}" + "".join(f"{fmt(modes[m]['mbps'], 2):>38}" for m in names))
    if "ours" in modes:
        ours = modes["ours"]
        for key, label in (("messages_per_echo", "messages/echo"), ("server_cpu_us_per_echo", "server CPU us/echo"),
                           ("messages_per_mib", "messages/MiB"), ("server_cpu_us_per_mib", "server CPU us/MiB")):
            if key in ours:
                runs = "" if ours[f"{key}_runs"] == len(ours["pps_runs"]) else f" ({runs_text(ours[f'{key}_runs'])})"
                lines.append(f"ours {label}: {ours[key]:.1f}{runs}")
    for peer, suffix in (("peer", ""), ("peer-polled", "_polled")):
        if f"ratio{suffix}" in summary:
            echo, tcp = f"ratio{suffix}", f"mbps_ratio{suffix}"
            lines.append(f"ours/{peer}: echo {summary[echo]:.3f} ({runs_text(summary[f'{echo}_runs'])})  "
                         f"TCP {summary[tcp]:.3f} ({runs_text(summary[f'{tcp}_runs'])})")
    return lines


def main(argv: Sequence[str] = (), boot: Boot = boot, image: Callable[[GuestConfig], Any] = build_image) -> int:
    """Run the benchmark; print a table or JSON; 1 when any run failed (``bench.common``)."""
    parser = argparse.ArgumentParser(prog="python -m bench e1000", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="runs per metric and mode (default 3)")
    parser.add_argument("--count", type=int, default=2000, help="echo requests per run (default 2000)")
    parser.add_argument("--mib", type=int, default=20, help="MiB sent over TCP per run (default 20)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--ours-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="--opt for our mpqemu server (e.g. mitigation=off)")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of our server here")
    parser.add_argument("--access", type=int, default=2000, help="accesses per access-latency figure (0: skip)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep console and server logs here (default: a temporary directory)")
    add_guest_options(parser, PATHS)
    args = parser.parse_args(list(argv))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or min(args.runs, args.count, args.mib) <= 0 or args.access < 0:
        parser.error(f"bad --modes {unknown or modes} or a non-positive --runs/--count/--mib")
    config = guest_config(parser, args, PATHS) if modes else None
    params = Params(args.runs, args.count, args.mib, tuple(args.ours_opt),
                    args.profile.resolve() if args.profile is not None else None)

    def body() -> tuple[dict[str, Any], list[str]]:
        access: dict[str, dict[str, float]] = {}
        if args.access:
            access["posted_on"] = access_latency(args.access, args.ours_opt)
            access["posted_off"] = access_latency(args.access, [*args.ours_opt, "posted=off"])
        results: dict[str, dict[str, Any]] = {}
        version = None
        if modes and config is not None:
            guest_image = image(config)
            with workdir(args.workdir, "devmodels-bench-e1000-") as work:
                for mode in modes:
                    mode_params = params if mode == "ours" else Params(args.runs, args.count, args.mib)
                    with boot(mode, config, mode_params, work, guest_image) as booted:
                        runs = watch(booted.session, params.plan(mode), figure(params), params.deadlines(),
                                     sampler=booted.sampler, health=booted.health, logs=booted.logs)
                        received = booted.received(params.runs, 5.0)
                    results[mode] = run_mode(mode, runs, received, params)
                    version = runs.qemu_version
        summary = summarize(results)
        summary["access_us"] = access
        if config is not None:
            summary["guest"] = config.as_json(version)
        summary["parameters"] = {"runs": args.runs, "count": args.count, "mib": args.mib, "ours_opts": args.ours_opt}
        return summary, _text(summary, access, config)

    return run_main("e1000", args.json, body, config)
