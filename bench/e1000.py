"""``python -m bench e1000``: devmodels' e1000 behind x-pci-proxy-dev against QEMU's built-in e1000.

The same guest image boots once per mode, each time with one e1000 on a TAP whose host side
sits in a fresh network namespace (``10.0.3.1/24``, the kernel's own stack answers ping; a
TCP sink from ``devmodels.conformance.cases.e1000_tap`` counts and hashes what arrives):

- ``ours``: devmodels' 82540EM served by ``python -m devmodels.qemu.mpqemu --backend
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

Output: a table, or with ``--json`` one object with ``ours_pps``, ``peer_pps``, ``ratio``
(echo, ours / peer), ``ours_mbps``, ``peer_mbps``, ``mbps_ratio``, the same against
``peer-polled`` (``peer_polled_pps``, ``ratio_polled``, ``peer_polled_mbps``,
``mbps_ratio_polled``) and ``modes`` with every run. ``--profile FILE`` runs our server
under cProfile. Needs root (namespaces, TAP), qemu-system-x86_64 and iproute2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
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
    from devmodels.conformance.cases.e1000_tap import GUEST_IP, HOST_IP, PREFIX_LEN, SINK_PORT

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
dd if=/dev/urandom of=/tmp/bulk bs=1M count=$mib 2>/dev/null
i=0
while [ $i -lt $runs ]; do
    t0=$(now); out=$(ping -q -A -c $count -W 5 {HOST_IP} 2>&1); t1=$(now)
    got=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    echo "BENCH ping $i $t0 $t1 ${{got:-0}}"
    t0=$(now); nc {HOST_IP} {SINK_PORT} < /tmp/bulk; rc=$?; t1=$(now)
    echo "BENCH tcp $i $t0 $t1 $rc"
    i=$((i + 1))
done
report bench.done PASS "$runs runs"
"""


def parse_log(log: str) -> dict[str, list[dict[str, int]]]:
    """``{"ping": [...], "tcp": [...]}`` from the ``BENCH`` lines of a console log."""
    out: dict[str, list[dict[str, int]]] = {"ping": [], "tcp": []}
    for line in log.splitlines():
        words = line.rstrip("\r").split()
        if len(words) != 6 or words[0] != "BENCH" or words[1] not in out:
            continue
        try:
            run, t0, t1, value = (int(w) for w in words[2:])
        except ValueError:
            continue
        key = "received" if words[1] == "ping" else "rc"
        out[words[1]].append({"run": run, "t0": t0, "t1": t1, key: value})
    return out


def _spawn_server(sock: socket.socket, tap: str, opts: Sequence[str], log: Path, profile: Path | None
                  ) -> subprocess.Popen[bytes]:
    args = ["-m", "devmodels.qemu.mpqemu", "--fd", str(sock.fileno()), "--device", "e1000", "--backend", f"tap:{tap}"]
    for opt in opts:
        args += ["--opt", opt]
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, *prefix, *args], pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env)


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
    from devmodels.conformance.cases.e1000 import POLLED_INTX_APPEND
    from devmodels.conformance.cases.e1000_tap import HOST_IP, PREFIX_LEN, NetNamespace, TcpSink
    from devmodels.qemu.launcher import QemuLauncher

    polled = MODES[mode][1]
    append = [*(POLLED_INTX_APPEND if polled else ()), f"dmbench.runs={runs}", f"dmbench.count={count}",
              f"dmbench.mib={mib}"]
    tap = f"dmb{os.getpid() % 100000}{mode[:6]}"[:15]
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(NetNamespace.unique("bench-e1000"))
        kwargs: dict[str, Any] = {"append": append, "test": TEST, "memory_mb": 512}
        server: subprocess.Popen[bytes] | None = None
        if mode == "ours":
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            stack.callback(theirs.close)
            server = _spawn_server(ours, tap, ours_opts, workdir / f"server-{mode}.log", profile)
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
        if mode != "ours":
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
    args = parser.parse_args(list(argv))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes or min(args.runs, args.count, args.mib) <= 0:
        parser.error(f"bad --modes {unknown or modes} or a non-positive --runs/--count/--mib")
    if os.geteuid() != 0:
        raise SystemExit("bench e1000: needs root (network namespaces and TAP devices)")
    from devmodels.guest import ImageBuilder
    from devmodels.qemu.launcher import qemu_available

    reason = qemu_available()
    if reason is not None:
        raise SystemExit(f"bench e1000: {reason}")
    builder = ImageBuilder()
    builder.add_test(TEST, guest_script())
    image = builder.build(progress=False)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="devmodels-bench-e1000-") as tmp:
        for mode in modes:
            results[mode] = run_mode(mode, image, runs=args.runs, count=args.count, mib=args.mib, workdir=Path(tmp),
                                     ours_opts=args.ours_opt, profile=args.profile if mode == "ours" else None)
    summary = summarize(results)
    summary["parameters"] = {"runs": args.runs, "count": args.count, "mib": args.mib, "ours_opts": args.ours_opt}
    if args.json:
        print(json.dumps(summary))
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
