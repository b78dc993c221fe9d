"""``python -m bench e1000``: devmodels' e1000 behind x-pci-proxy-dev against QEMU's built-in e1000.

The same guest image boots once per mode, each time with one e1000 on a TAP whose host side
sits in a fresh network namespace (``10.0.3.1/24``, the kernel's own stack answers ping; a
TCP sink from ``harness.conformance.cases.e1000_tap`` counts and hashes what arrives):

- ``ours``: devmodels' 82540EM served by ``python -m mpqemu --backend
  tap:NAME`` to ``x-pci-proxy-dev``. QEMU 7.2's proxy delivers INTx only through KVM
  irqfds, so this guest needs ``irqpoll nolapic_timer nohz=off`` (interrupts are serviced
  from the 250 Hz timer tick).
- ``peer``: ``-netdev tap,ifname=NAME,script=no,downscript=no -device e1000``, default
  kernel command line (real INTx).
- ``peer-polled``: the same built-in device with ours' kernel parameters, for fairness.

Per run the guest measures (i) ICMP echo round trips per second, ``ping -q -A -c COUNT``
timed with the guest clock, and (ii) TCP throughput guest -> namespace, ``nc`` sending
``--mib`` MiB from tmpfs, timed by the sink from first byte to end of stream (MB = 10**6
bytes). Figures are medians over ``--runs``; ratios are ours / peer.

Before the boots, ``access_latency`` times the per-access path without a guest: a stand-in
for QEMU's proxy (``mpqemu.testing.FakeProxy``, one ``sendmsg`` and one
blocking read per access, as proxy.c) drives the real server process over a socketpair,
guest RAM is a shared memfd, and the figure is the median time one access blocks the
caller (what a vCPU waits): a STATUS read, an IMC write, and a TDT write that queues one
64 KiB TSO packet (45 segments to a socket backend, 3 ms apart), with the device's deferred ring work
on (the default) and off (``--opt posted=off``, i.e. TX processed before the reply).

Output: a table, or with ``--json`` one object with ``ours_pps``, ``peer_pps``, ``ratio``
(echo, ours / peer), ``ours_mbps``, ``peer_mbps``, ``mbps_ratio``, the same against
``peer-polled`` (``peer_polled_pps``, ``ratio_polled``, ``peer_polled_mbps``,
``mbps_ratio_polled``), ``modes`` with every run, and ``access_us`` (per-access medians). ``--profile FILE`` runs our server
under cProfile. Needs root (namespaces, TAP), qemu-system-x86_64 and iproute2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "MODES", "guest_script", "parse_log", "summarize"]

# mode: (description, uses polled-INTx kernel parameters)
MODES: dict[str, tuple[str, bool]] = {
    "ours": ("devmodels e1000 (proxy, polled INTx)", True),
    "peer": ("QEMU e1000", False),
    "peer-polled": ("QEMU e1000, polled-INTx cmdline", True),
}
TEST = "bench-e1000"


def guest_script() -> str:
    """The guest side; its parameters come from the kernel command line (``dmbench.*``)."""
    from harness.conformance.cases.e1000_tap import GUEST_IP, HOST_IP, PREFIX_LEN, SINK_PORT

    return rf"""
runs=$(cmdline_value dmbench.runs); count=$(cmdline_value dmbench.count); mib=$(cmdline_value dmbench.mib)
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
dd if=/dev/urandom of=/tmp/bulk bs=1M count=$mib 2>/dev/null
i=0
while [ $i -lt $runs ]; do
    t0=$(now); out=$(ping -q -A -c $count -W 5 {HOST_IP} 2>&1); t1=$(now)
    got=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    echo "BENCH ping $i $t0 $t1 ${{got:-0}}"
    r0=$(retrans); t0=$(now); nc {HOST_IP} {SINK_PORT} < /tmp/bulk; rc=$?; t1=$(now); r1=$(retrans)
    echo "BENCH tcp $i $t0 $t1 $rc $((r1 - r0))"
    i=$((i + 1))
done
report bench.done PASS "$runs runs"
"""


def parse_log(log: str) -> dict[str, list[dict[str, int]]]:
    """``{"ping": [...], "tcp": [...]}`` from the ``BENCH`` lines of a console log: ping
    runs with ``received``, TCP runs with ``rc`` and ``retrans`` (segments the guest's TCP
    retransmitted during the run)."""
    out: dict[str, list[dict[str, int]]] = {"ping": [], "tcp": []}
    keys = {"ping": ("received",), "tcp": ("rc", "retrans")}
    for line in log.splitlines():
        words = line.rstrip("\r").split()
        if len(words) < 3 or words[0] != "BENCH" or words[1] not in out:
            continue
        names = ("run", "t0", "t1", *keys[words[1]])
        try:
            values = [int(w) for w in words[2:]]
        except ValueError:
            continue
        if len(values) == len(names):
            out[words[1]].append(dict(zip(names, values, strict=True)))
    return out


def _spawn_server(sock: socket.socket, backend: str, opts: Sequence[str], log: Path | None,
                  profile: Path | None = None, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    args = ["-m", "mpqemu", "--fd", str(sock.fileno()), "--device", "e1000", "--backend", backend]
    for opt in opts:
        args += ["--opt", opt]
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    with open(log if log is not None else os.devnull, "wb") as out:
        return subprocess.Popen([sys.executable, *prefix, *args], pass_fds=[sock.fileno(), *pass_fds],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)


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
        _end(server)
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


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_mode(mode: str, image: Any, *, runs: int, count: int, mib: int, workdir: Path,
             ours_opts: Sequence[str] = (), profile: Path | None = None) -> dict[str, Any]:
    """Boot once in ``mode`` and return its raw figures."""
    from harness.conformance.cases.e1000 import POLLED_INTX_APPEND
    from harness.conformance.cases.e1000_tap import HOST_IP, PREFIX_LEN, NetNamespace, TcpSink
    from harness.qemu.launcher import QemuLauncher

    polled = MODES[mode][1]
    append = [*(POLLED_INTX_APPEND if polled else ()), f"dmbench.runs={runs}", f"dmbench.count={count}",
              f"dmbench.mib={mib}"]
    tap = f"dmb{os.getpid() % 100000}{mode[:6]}"[:15]
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(NetNamespace.unique("bench-e1000"))
        kwargs: dict[str, Any] = {"append": append, "test": TEST, "memory_mb": 512}
        server: subprocess.Popen[bytes] | None = None
        theirs: socket.socket | None = None
        if mode == "ours":
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            stack.callback(theirs.close)
            server = _spawn_server(ours, f"tap:{tap}", ours_opts, workdir / f"server-{mode}.log", profile)
            stack.callback(_end, server)
            ours.close()
            proc = server
            ns.adopt(tap, f"{HOST_IP}/{PREFIX_LEN}", alive=lambda: proc.poll() is None)
            kwargs.update(args=["-device", f"x-pci-proxy-dev,id=dev0,fd={theirs.fileno()}"],
                          pass_fds=[theirs.fileno()], shared_memory=True)
        else:
            kwargs.update(args=["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                                "-device", "e1000,netdev=n0"])
        sink = stack.enter_context(TcpSink(ns, HOST_IP))
        launcher = stack.enter_context(QemuLauncher.for_image(image, serial_log=workdir / f"{mode}.log", **kwargs))
        if theirs is not None:
            theirs.close()  # QEMU holds its copy; the server sees end of stream when QEMU exits
        else:
            ns.adopt(tap, f"{HOST_IP}/{PREFIX_LEN}", alive=lambda: launcher.result().exit_code is None)
        result = launcher.wait(120.0 + runs * (count / 50.0 + mib * 3.0))
        received = sink.wait_received(runs, 5.0)
        if server is not None:
            # QEMU is gone: the server sees the disconnect and exits (writing its profile).
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                pass
    if "bench.done" not in result.checks:
        raise SystemExit(f"bench e1000: the {mode} guest did not finish\n{result.summary()}")
    parsed = parse_log(result.log)
    pps = [count / ((p["t1"] - p["t0"]) / 1e9) for p in parsed["ping"] if p["received"] == count and p["t1"] > p["t0"]]
    lost = [count - p["received"] for p in parsed["ping"]]
    mbps = [r["bytes"] / ((r["eof_ns"] - r["first_ns"]) / 1e3) for r in received
            if r["bytes"] == mib << 20 and r["eof_ns"] > r["first_ns"]]
    guest_mbps = [(mib << 20) / ((t["t1"] - t["t0"]) / 1e3) for t in parsed["tcp"] if t["rc"] == 0 and t["t1"] > t["t0"]]
    return {"pps_runs": pps, "lost": lost, "mbps_runs": mbps, "guest_mbps_runs": guest_mbps,
            "retrans": [t["retrans"] for t in parsed["tcp"]],
            "sink_bytes": [r["bytes"] for r in received], "boot_seconds": result.elapsed}


def summarize(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Medians per mode and the ratios ours / peer (``None`` where a side is missing)."""
    def med(mode: str, key: str) -> float | None:
        runs = modes.get(mode, {}).get(key) or []
        return statistics.median(runs) if runs else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out: dict[str, Any] = {}
    for mode in modes:
        modes[mode]["pps"] = med(mode, "pps_runs")
        modes[mode]["mbps"] = med(mode, "mbps_runs")
    ours_pps, ours_mbps = med("ours", "pps_runs"), med("ours", "mbps_runs")
    for peer, suffix in (("peer", ""), ("peer-polled", "_polled")):
        peer_pps, peer_mbps = med(peer, "pps_runs"), med(peer, "mbps_runs")
        out[f"peer{suffix}_pps"] = peer_pps
        out[f"peer{suffix}_mbps"] = peer_mbps
        out[f"ratio{suffix}"] = ratio(ours_pps, peer_pps)
        out[f"mbps_ratio{suffix}"] = ratio(ours_mbps, peer_mbps)
    out.update(ours_pps=ours_pps, ours_mbps=ours_mbps, modes=modes)
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Sequence[str] = ()) -> int:
    """Run the benchmark; print a table or JSON."""
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
    args = parser.parse_args(list(argv))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or min(args.runs, args.count, args.mib) <= 0 or args.access < 0:
        parser.error(f"bad --modes {unknown or modes} or a non-positive --runs/--count/--mib")
    if modes and os.geteuid() != 0:
        raise SystemExit("bench e1000: needs root (network namespaces and TAP devices)")
    access: dict[str, dict[str, float]] = {}
    if args.access:
        access["posted_on"] = access_latency(args.access, args.ours_opt)
        access["posted_off"] = access_latency(args.access, [*args.ours_opt, "posted=off"])
    from harness.guest import ImageBuilder
    from harness.qemu.launcher import qemu_available

    reason = qemu_available()
    if reason is not None:
        raise SystemExit(f"bench e1000: {reason}")
    results: dict[str, dict[str, Any]] = {}
    image = None
    if modes:
        builder = ImageBuilder()
        builder.add_test(TEST, guest_script())
        image = builder.build(progress=False)
    with tempfile.TemporaryDirectory(prefix="devmodels-bench-e1000-") as tmp:
        for mode in modes:
            results[mode] = run_mode(mode, image, runs=args.runs, count=args.count, mib=args.mib, workdir=Path(tmp),
                                     ours_opts=args.ours_opt, profile=args.profile if mode == "ours" else None)
    summary = summarize(results)
    summary["access_us"] = access
    summary["parameters"] = {"runs": args.runs, "count": args.count, "mib": args.mib, "ours_opts": args.ours_opt}
    if args.json:
        print(json.dumps(summary))
        return 0
    for name, figures in access.items():
        print(f"per-access round trip, {name.replace('_', ' ')}: "
              + ", ".join(f"{key} {value:.1f} us" for key, value in figures.items()))
    if not results:
        return 0
    names = [m for m in MODES if m in results]
    header = f"{'metric':<26}" + "".join(f"{MODES[m][0]:>38}" for m in names)
    print(header)
    print(f"{'echo round trips/s':<26}" + "".join(f"{_fmt(results[m]['pps']):>38}" for m in names))
    print(f"{'TCP guest->host MB/s':<26}" + "".join(f"{_fmt(results[m]['mbps'], 2):>38}" for m in names))
    for peer, suffix in (("peer", ""), ("peer-polled", "_polled")):
        if "ours" in results and peer in results:
            print(f"ours/{peer}: echo {_fmt(summary[f'ratio{suffix}'], 3)}  "
                  f"TCP {_fmt(summary[f'mbps_ratio{suffix}'], 3)}")
    return 0
