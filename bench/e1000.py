"""``python -m bench e1000``: devmodels' e1000 against QEMU's built-in e1000, behind
x-pci-proxy-dev (QEMU 7.2) or over vfio-user (QEMU 11.1).

Each e1000 sits on a TAP whose host side is in a fresh network namespace of its own, on its
own subnet (``NICS``: 10.0.N.1 in the namespace, 10.0.N.2 in the guest; the kernel's own
stack answers ping; a TCP sink from ``harness.conformance.cases.e1000_tap`` counts and
hashes what arrives). The guest finds each NIC by its PCI function:

- ``ours`` (``00:04.0``): devmodels' 82540EM. ``--path proxy``: served by ``devmodels
  mpqemu --backend tap:NAME`` to ``x-pci-proxy-dev`` (QEMU 7.2, whose proxy delivers INTx
  only through KVM irqfds, so the guest needs ``irqpoll nolapic_timer nohz=off``: interrupts
  are serviced from the 250 Hz tick). ``--path vfio-user``: served by ``devmodels vfio-user``
  to QEMU 11.1's ``vfio-user-pci`` (``bench.vfio_user``), real INTx, default command line.
- ``peer`` (``00:05.0``): ``-netdev tap,... -device e1000``, default kernel command line.
- ``peer-polled``: the same built-in device with the proxy path's kernel parameters, for
  fairness (proxy path only).

Behind the proxy each mode boots its own guest (the polled command line is the whole
guest's). Over vfio-user ours and peer share one guest and take turns within each run, so
their ratio comes from the same guest and the same minutes of host load. Guests get
``--smp``/``--maxcpus`` vCPUs (under 7.2 one online of two by default, so that its TCG keeps
the guest's memory barriers: ``bench.common`` rule 5).

Per run the guest measures (i) ICMP echo round trips per second, ``ping -q -A -c COUNT``
timed with the guest clock (job ``echo``; every request must be answered), and (ii) TCP
throughput guest -> namespace, ``nc`` sending ``--mib`` MiB from tmpfs, timed by the sink
from first byte to end of stream (job ``tcp``; MB = 10**6 bytes; every byte must arrive).
Figures are medians over ``--runs``; ratios are ours / peer over equally many runs. At each
run's begin and end the bench samples our server's counters (SIGUSR1: socket messages, BAR
accesses), its CPU time and the QEMU process's CPU time (``/proc``: user + system, all
threads), for per echo and per MiB: messages, our server's CPU, QEMU's CPU (each mode's
own; for the peer that is all the host spends) and the host's for ours (server + QEMU). A
job that hangs or ends without a figure stops the bench with exit status 1, naming the job
and the mode.

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
per mode ``MODE_messages_per_echo``, ``MODE_server_cpu_us_per_echo``,
``MODE_qemu_cpu_us_per_echo``, ``MODE_host_cpu_us_per_echo`` (those measured, each with its
``_runs``), ``modes`` with every run and the per-MiB figures, ``guest`` (QEMU version,
vCPUs, barriers) and ``access_us`` (per-access medians). ``--profile FILE`` runs our server
under cProfile. Needs root (namespaces, TAP; QEMU 11.1 runs in a chroot),
qemu-system-x86_64 and iproute2.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    Samplers,
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
from .vfio_user import QEMU_CPU, SERVER_CPU, VFIO_USER, qemu_cpu, serve

__all__ = ["main", "MODES", "PATHS", "JOBS", "Params", "Booted", "boot", "guest_script", "figure", "summarize",
           "access_latency"]

# mode: (description, uses polled-INTx kernel parameters on the proxy path)
MODES: dict[str, tuple[str, bool]] = {
    "ours": ("devmodels e1000", True),
    "peer": ("QEMU e1000", False),
    "peer-polled": ("QEMU e1000, polled-INTx cmdline", True),
}
JOBS = ("echo", "tcp")
TEST = "bench-e1000"
PATHS = (Attachment("proxy", ("7.2",), "x-pci-proxy-dev to devmodels mpqemu; 11.1's proxy segfaults under TCG"),
         VFIO_USER)
# mode: (the NIC's PCI function in the guest, its subnet 10.0.N.0/24: host .1, guest .2)
NICS: dict[str, tuple[str, int]] = {
    "ours": ("0000:00:04.0", 3),
    "peer": ("0000:00:05.0", 4),
    "peer-polled": ("0000:00:05.0", 4),
}


def host_ip(mode: str) -> str:
    """The namespace's address on ``mode``'s subnet."""
    return f"10.0.{NICS[mode][1]}.1"


def boots(modes: Sequence[str], path: str) -> list[tuple[str, ...]]:
    """The guests to boot, each with the modes it carries: over vfio-user ours and peer share
    one guest (both NICs, runs taking turns); behind the proxy each mode boots alone (its
    polled-INTx command line applies to the whole guest)."""
    if path == VFIO_USER.name:
        return [tuple(m for m in modes if m != "peer-polled")]
    return [(mode,) for mode in modes]


def polled(mode: str, path: str) -> bool:
    """Whether ``mode``'s guest needs the polled-INTx command line."""
    return MODES[mode][1] and path != VFIO_USER.name


def nic_setup_script(nics: Mapping[str, tuple[str, int, str]]) -> str:
    """Guest shell that brings up the NIC of each side in ``$sides``: ``nics`` maps a side to
    (its PCI function, its subnet N of 10.0.N.0/24, the Linux driver that must own it). The
    guest takes .2, the host's namespace has .1; ``host_of SIDE`` prints the host's address.
    A NIC that is missing, owned by another driver or unreachable fails a ``bench.*`` check."""
    cases = "\n".join(f"        {side}) echo {bdf} {net} {driver} ;;" for side, (bdf, net, driver) in nics.items())
    return rf"""
nic_of() {{  # SIDE -> "BDF NET DRIVER"
    case $1 in
{cases}
    esac
}}
host_of() {{ set -- $(nic_of $1); echo 10.0.$2.1; }}
for side in $sides; do
    set -- $(nic_of $side); bdf=$1; net=$2; want=$3
    n=0
    while [ ! -d /sys/bus/pci/devices/$bdf/net ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    drv=$(readlink /sys/bus/pci/devices/$bdf/driver 2>/dev/null); drv=${{drv##*/}}
    dev=$(ls /sys/bus/pci/devices/$bdf/net 2>/dev/null | head -n 1)
    if [ -z "$dev" ]; then dev=$(ls /sys/bus/pci/devices/$bdf/virtio*/net 2>/dev/null | head -n 1); fi
    if [ "$drv" != "$want" ] || [ -z "$dev" ]; then
        report bench.bound FAIL "$side: $bdf driver=$drv, want $want, netdev=$dev"; exit 0
    fi
    ip link set $dev up
    ip addr add 10.0.$net.2/24 dev $dev
    n=0
    while [ "$(cat /sys/class/net/$dev/carrier 2>/dev/null)" != 1 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    n=0
    while ! ping -c 1 -W 1 10.0.$net.1 >/dev/null 2>&1 && [ $n -lt 30 ]; do n=$((n + 1)); done
    check bench.ping.$side ping -c 3 -W 5 10.0.$net.1 || exit 0
done
report bench.bound PASS "$sides"
"""


def net_job_functions() -> str:
    """Guest shell: ``echo_run HOST`` (``$count`` echo round trips, ``ECHO T0 T1 RECEIVED``)
    and ``tcp_run HOST`` (``/tmp/bulk`` to the sink, ``TCP T0 T1 RETRANSMITS``), guest clock
    in ns; ``figure`` reads them."""
    from harness.conformance.cases.e1000_tap import SINK_PORT

    return rf"""
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
echo_run() {{  # HOST
    t0=$(now); out=$(ping -q -A -c $count -W 5 $1 2>&1); rc=$?; t1=$(now)
    got=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    echo "ECHO $t0 $t1 ${{got:-0}}"
    return $rc
}}
tcp_run() {{  # HOST
    r0=$(retrans); t0=$(now); nc $1 {SINK_PORT} < /tmp/bulk; rc=$?; t1=$(now); r1=$(retrans)
    echo "TCP $t0 $t1 $((r1 - r0))"
    return $rc
}}
"""


def guest_script() -> str:
    """The guest side; its parameters come from the kernel command line (``dmbench.*``):
    each side's NIC is found by its PCI function and put on its own subnet (``NICS``)."""
    nics = {mode: (bdf, net, "e1000") for mode, (bdf, net) in NICS.items()}
    return GUEST_FUNCTIONS + r"""
runs=$(cmdline_value dmbench.runs); count=$(cmdline_value dmbench.count); mib=$(cmdline_value dmbench.mib)
sides=$(cmdline_value dmbench.sides | tr , ' ')
""" + nic_setup_script(nics) + net_job_functions() + r"""
dd if=/dev/urandom of=/tmp/bulk bs=1M count=$mib 2>/dev/null
i=0
while [ $i -lt $runs ]; do
    for side in $sides; do bench_job $side echo $i echo_run $(host_of $side); done
    for side in $sides; do bench_job $side tcp $i tcp_run $(host_of $side); done
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

    def plan(self, *modes: str) -> Plan:
        """A boot's runs, as ``guest_script`` runs them: per run, echo on each mode's NIC in
        turn, then TCP on each."""
        return Plan(tuple((mode, job, i) for i in range(self.runs) for job in JOBS for mode in modes))

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
    """A booted guest (``session``) with the NICs of ``modes``: per mode ``received[mode](count,
    timeout)``, the TCP sink's finished connections; the counters (our server's messages and
    CPU, QEMU's CPU), our server's health and logs."""

    session: GuestSession
    received: Mapping[str, Callable[[int, float], list[dict[str, Any]]]]
    sampler: Sampler | None = None
    health: Health | None = None
    logs: dict[str, Path] = field(default_factory=dict)


Boot = Callable[[tuple[str, ...], GuestConfig, Params, Path, Any], contextlib.AbstractContextManager[Booted]]


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
def boot(modes: tuple[str, ...], config: GuestConfig, params: Params, work: Path, image: Any) -> Iterator[Booted]:
    """Boot ``image`` once with the NICs of ``modes``, each on its own TAP, namespace and sink;
    ours served by ``devmodels mpqemu`` (proxy) or ``devmodels vfio-user`` (``config.path``)."""
    from harness.conformance.cases.e1000 import POLLED_INTX_APPEND
    from harness.conformance.cases.e1000_tap import PREFIX_LEN, NetNamespace, TcpSink
    from harness.qemu.launcher import QemuLauncher

    slow = any(polled(mode, config.path) for mode in modes)
    append = [*(POLLED_INTX_APPEND if slow else ()), f"dmbench.runs={params.runs}", f"dmbench.count={params.count}",
              f"dmbench.mib={params.mib}", f"dmbench.sides={','.join(modes)}"]
    with contextlib.ExitStack() as stack:
        args: list[str] = []
        pass_fds: list[int] = []
        spaces: dict[str, Any] = {}
        taps = {mode: f"dmb{os.getpid() % 100000}{mode[:6]}"[:15] for mode in modes}
        server: subprocess.Popen[bytes] | None = None
        theirs: socket.socket | None = None
        stats: Sampler | None = None
        logs: dict[str, Path] = {}
        for mode in modes:
            spaces[mode] = stack.enter_context(NetNamespace.unique("bench-e1000"))
            addr = NICS[mode][0][-4:]
            if mode != "ours":
                netdev = "n" + mode.replace("-", "")
                args += ["-netdev", f"tap,id={netdev},ifname={taps[mode]},script=no,downscript=no",
                         "-device", f"e1000,netdev={netdev},addr={addr}"]
                continue
            if config.path == VFIO_USER.name:
                served = serve(stack, work, "ours", "e1000", [f"tap:{taps[mode]}"], params.ours_opts,
                               profile=params.profile)
                server, stats, logs["ours"] = served.process, served.sampler("ours"), served.log
                args += served.device_args(addr)
            else:
                log = work / "server-ours.log"
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                stack.callback(theirs.close)
                server = _spawn_server(ours, f"tap:{taps[mode]}", params.ours_opts, log, params.profile)
                stack.callback(_wait_then_end, server)
                ours.close()
                stats, logs["ours"] = MpqemuStats(server.pid, log), log
                args += ["-device", f"x-pci-proxy-dev,id=dev0,fd={theirs.fileno()},addr={addr}"]
                pass_fds.append(theirs.fileno())
            spaces[mode].adopt(taps[mode], f"{host_ip(mode)}/{PREFIX_LEN}", alive=lambda p=server: p.poll() is None)
        launcher = stack.enter_context(QemuLauncher.for_image(
            image, serial_log=work / f"{'+'.join(modes)}.log", append=append, test=TEST, memory_mb=512,
            qemu=config.qemu, smp=config.smp, args=[*args, *config.qemu_args()], pass_fds=pass_fds,
            shared_memory=server is not None))
        if theirs is not None:
            theirs.close()  # QEMU holds its copy; the server sees end of stream when QEMU exits
        sinks = {}
        for mode in modes:
            if mode != "ours":
                spaces[mode].adopt(taps[mode], f"{host_ip(mode)}/{PREFIX_LEN}",
                                   alive=lambda: launcher.result().exit_code is None)
            sinks[mode] = stack.enter_context(TcpSink(spaces[mode], host_ip(mode))).wait_received
        sampler = Samplers(*(s for s in (stats, qemu_cpu(launcher.pid, modes)) if s is not None))
        health = processes_alive({"ours": server}, logs) if server is not None else None
        yield Booted(LauncherSession(launcher), sinks, sampler, health, logs)


# Per-echo and per-MiB counters: (key, counters summed, scale). Our server's messages and
# CPU; the QEMU process's CPU (the whole guest: vCPU, devices, the vfio-user client); and
# the host's, ours + QEMU's (for QEMU's own device, QEMU's alone).
COUNTERS = (("messages", ("messages",), 1.0), ("accesses", ("bar_reads", "bar_writes"), 1.0),
            ("server_cpu_us", (SERVER_CPU,), 1e-3), ("qemu_cpu_us", (QEMU_CPU,), 1e-3),
            ("host_cpu_us", (SERVER_CPU, QEMU_CPU), 1e-3))


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
        for key, counters, scale in COUNTERS:
            value = per_io(runs, mode, job, counters, scale)
            if value is None and key == "host_cpu_us":  # QEMU's own device: QEMU is all the host spends
                value = per_io(runs, mode, job, (QEMU_CPU,), scale)
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
    # Beside the ratio: CPU per echo (bench.common rule 4), ours and each peer's.
    for mode, figures in modes.items():
        for key in ("messages_per_echo", "server_cpu_us_per_echo", "qemu_cpu_us_per_echo", "host_cpu_us_per_echo"):
            if key in figures:
                out[f"{mode.replace('-', '_')}_{key}"] = figures[key]
                out[f"{mode.replace('-', '_')}_{key}_runs"] = figures[f"{key}_runs"]
    out["modes"] = modes
    return out


_ROWS = (("messages_per_echo", "messages/echo", 1), ("accesses_per_echo", "BAR accesses/echo", 1),
         ("server_cpu_us_per_echo", "server CPU us/echo", 1), ("qemu_cpu_us_per_echo", "QEMU CPU us/echo", 1),
         ("host_cpu_us_per_echo", "host CPU us/echo", 1), ("messages_per_mib", "messages/MiB", 0),
         ("server_cpu_us_per_mib", "server CPU us/MiB", 0), ("qemu_cpu_us_per_mib", "QEMU CPU us/MiB", 0),
         ("host_cpu_us_per_mib", "host CPU us/MiB", 0))


def _text(summary: dict[str, Any], access: dict[str, dict[str, float]], config: GuestConfig | None) -> list[str]:
    lines = [f"per-access round trip, {name.replace('_', ' ')}: "
             + ", ".join(f"{key} {value:.1f} us" for key, value in figures.items())
             for name, figures in access.items()]
    modes = summary["modes"]
    if not modes or config is None:
        return lines
    names = [m for m in MODES if m in modes]
    lines.append(f"guest: {config.describe(summary['guest']['qemu'])}")
    lines.append(f"{'metric':<26}" + "".join(f"{MODES[m][0]:>34}" for m in names))
    lines.append(f"{'echo round trips/s':<26}" + "".join(f"{fmt(modes[m]['pps']):>34}" for m in names))
    lines.append(f"{'TCP guest->host MB/s':<26}" + "".join(f"{fmt(modes[m]['mbps'], 2):>34}" for m in names))
    for key, label, digits in _ROWS:
        if not any(key in modes[m] for m in names):
            continue
        cells = []
        for m in names:
            cell = fmt(modes[m].get(key), digits)
            if key in modes[m] and modes[m][f"{key}_runs"] != len(modes[m]["pps_runs"]):
                cell += f" ({runs_text(modes[m][f'{key}_runs'])})"
            cells.append(f"{cell:>34}")
        lines.append(f"{label:<26}" + "".join(cells))
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
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {', '.join(MODES)} (peer-polled: proxy path only)")
    parser.add_argument("--ours-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="--opt for our server (e.g. mitigation=off)")
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
                for group in boots(modes, config.path):
                    group_params = params if "ours" in group else Params(args.runs, args.count, args.mib)
                    with boot(group, config, group_params, work, guest_image) as booted:
                        runs = watch(booted.session, params.plan(*group), figure(params), params.deadlines(),
                                     sampler=booted.sampler, health=booted.health, logs=booted.logs)
                        received = {mode: booted.received[mode](params.runs, 5.0) for mode in group}
                    for mode in group:
                        results[mode] = run_mode(mode, runs, received[mode], params)
                    version = runs.qemu_version
        summary = summarize(results)
        summary["access_us"] = access
        if config is not None:
            summary["guest"] = config.as_json(version)
        summary["parameters"] = {"runs": args.runs, "count": args.count, "mib": args.mib, "ours_opts": args.ours_opt}
        return summary, _text(summary, access, config)

    return run_main("e1000", args.json, body, config)
