"""``python -m bench ahci``: devmodels' AHCI behind x-pci-proxy-dev against QEMU's built-in AHCI.

One TCG guest gets two AHCI controllers, each with one disk of the same size, both raw
image files in the same host directory:

- ``ours``: devmodels' ICH9 AHCI served by ``python -m mpqemu --device
  ahci --backend file:OURS.img`` to ``x-pci-proxy-dev`` at PCI ``00:04.0``;
- ``peer``: ``-device ahci`` at ``00:05.0`` with ``ide-hd`` on ``-drive ...,aio=threads``.

Both report 8086:2922, so the guest tells the disks apart by PCI path
(``/sys/block/sdX/device`` resolves under ``.../0000:00:04.0/ataN/...``). Caching matches on
both sides: by default our ``RawFileBackend`` is buffered, so the peer gets
``cache=writeback`` (host page cache, a volatile write cache the guest flushes); with
``--cache none`` ours opens its image ``O_DIRECT`` (``--opt direct=on``) and the peer gets
``cache=none``.

QEMU 7.2's proxy delivers INTx only through KVM irqfds, so the guest boots with ``irqpoll
nolapic_timer nohz=off``: every AHCI handler is polled at each 250 Hz timer tick. Both disks
live in that one guest, so the peer runs under the same command line.

The guest runs fio (libaio, O_DIRECT) on each disk, alternating disks: 4 KiB random read
at queue depth 32, 1 MiB sequential read and 1 MiB sequential write (queue depth 8),
``--runs`` times each for ``--runtime`` seconds. Figures are medians; ratios are ours /
peer. During each of our runs the bench asks the server for its counters (SIGUSR1) and
reports proxied BAR accesses per I/O.

Output: a table, or with ``--json`` one object with ``ours_iops``, ``peer_iops`` and
``ratio`` (4k random read), ``ours_seqread_mbps``/``peer_seqread_mbps``/``seqread_ratio``,
the same for ``seqwrite``, and ``jobs`` with every job's medians and raw runs.
Each job row also has ``ours_accesses_per_io`` (proxied BAR accesses per fio I/O) and
``ours_server_cpu_us_per_io`` (our server's user+system CPU per I/O, from /proc).
``--profile FILE`` runs our server under cProfile. ``--host`` skips the guest: a libahci-like
driver in this process drives our server over the same socket protocol (4 KiB NCQ reads at
QD32, ``--think-us`` of simulated guest time per command) and reports the round trip per
register. Needs qemu-system-x86_64 and fio on the host (fio and its libraries are copied
into the guest image).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "JOBS", "CACHE_MODES", "OURS_BDF", "PEER_BDF", "guest_script", "parse_results", "parse_stats",
           "summarize"]

TEST = "bench-ahci"
OURS_BDF = "0000:00:04.0"
PEER_BDF = "0000:00:05.0"

# name: (fio arguments, metric, data direction in fio's JSON)
JOBS: dict[str, tuple[str, str, str]] = {
    "randread-4k-qd32": ("--rw=randread --bs=4k --iodepth=32 --norandommap --randrepeat=0", "iops", "read"),
    "seqread-1m": ("--rw=read --bs=1M --iodepth=8", "bw", "read"),
    "seqwrite-1m": ("--rw=write --bs=1M --iodepth=8", "bw", "write"),
}

# --cache: (our server's --opt, the peer's -drive cache=)
CACHE_MODES: dict[str, tuple[tuple[str, ...], str]] = {
    "writeback": ((), "writeback"),
    "none": (("direct=on",), "none"),
}

_STATS = re.compile(r"mpqemu stats: (.*)")


def guest_script() -> str:
    """The guest side; its parameters come from the kernel command line (``dmbench.*``)."""
    lines = [
        "runs=$(cmdline_value dmbench.runs); runtime=$(cmdline_value dmbench.runtime)",
        "size=$(cmdline_value dmbench.size); jobs=$(cmdline_value dmbench.jobs)",
        "disk_at() {  # BDF -> /dev/sdX whose ATA port hangs off that PCI function",
        "    for d in /sys/block/sd*; do",
        '        case "$(readlink -f $d/device 2>/dev/null)" in */$1/ata*) echo /dev/${d##*/}; return 0 ;; esac',
        "    done",
        "    return 1",
        "}",
        "describe() {  # DEV BDF",
        '    echo "$1 $2 $(cat /sys/bus/pci/devices/$2/vendor):$(cat /sys/bus/pci/devices/$2/device)'
        ' qd=$(cat /sys/block/${1##*/}/device/queue_depth 2>/dev/null)"',
        "}",
        "n=0",
        "while :; do",
        f"    ours=$(disk_at {OURS_BDF}); peer=$(disk_at {PEER_BDF})",
        '    if [ -n "$ours" ] && [ -n "$peer" ]; then break; fi',
        "    n=$((n + 1)); if [ $n -ge 600 ]; then break; fi",
        "    sleep 0.1",
        "done",
        'if [ -z "$ours" ] || [ -z "$peer" ]; then',
        '    report bench.disks FAIL "ours=$ours peer=$peer: $(ls /sys/block | tr \'\\n\' \' \')"',
        "    exit 0",
        "fi",
        f'report bench.disks PASS "ours=$(describe $ours {OURS_BDF}) peer=$(describe $peer {PEER_BDF})"',
        "common=\"--ioengine=libaio --direct=1 --time_based --runtime=$runtime --size=${size}M --output-format=json\"",
    ]
    for job, (args, _, _) in JOBS.items():
        lines += [
            f'case ",$jobs," in *",{job},"*)',
            "    i=0",
            "    while [ $i -lt $runs ]; do",
            "        for label in ours peer; do",
            '            eval dev=\\$$label',
            f'            echo "BENCH-BEGIN $label {job} $i"',
            f"            /usr/bin/fio --name={job} --filename=$dev $common {args} 2>&1",
            f'            echo "BENCH-END $label {job} $i"',
            "        done",
            "        i=$((i + 1))",
            "    done ;;",
            "esac",
        ]
    lines.append("report bench.done PASS")
    return "\n".join(lines) + "\n"


def parse_results(log: str) -> dict[str, dict[str, list[dict[str, float]]]]:
    """``{job: {"ours": [run...], "peer": [run...]}}`` from the fio JSON blocks of a console log.

    Each run is ``{"value": ..., "ios": ...}``: IOPS for random jobs, MB/s (10**6 bytes)
    for sequential ones, and the number of I/Os fio completed.
    """
    out: dict[str, dict[str, list[dict[str, float]]]] = {job: {"ours": [], "peer": []} for job in JOBS}
    block: list[str] | None = None
    key: tuple[str, str] | None = None
    for line in log.splitlines():
        line = line.rstrip("\r")
        if line.startswith("BENCH-BEGIN "):
            words = line.split()
            block, key = ([], (words[1], words[2])) if len(words) == 4 else (None, None)
        elif line.startswith("BENCH-END ") and block is not None and key is not None:
            text = "\n".join(block)
            start = text.find("{")
            try:
                data = json.loads(text[start:]) if start >= 0 else None
            except ValueError:
                data = None
            label, job = key
            if isinstance(data, dict) and job in JOBS and label in ("ours", "peer") and data.get("jobs"):
                _, metric, side = JOBS[job]
                stats = data["jobs"][0][side]
                value = stats["iops"] if metric == "iops" else stats["bw_bytes"] / 1e6
                out[job][label].append({"value": float(value), "ios": float(stats.get("total_ios", 0))})
            block, key = None, None
        elif block is not None:
            block.append(line)
    return out


def parse_stats(server_log: str) -> list[dict[str, int]]:
    """The server's ``mpqemu stats:`` lines (one per SIGUSR1), in order."""
    out = []
    for match in _STATS.finditer(server_log):
        fields = {}
        for word in match.group(1).split():
            name, _, value = word.partition("=")
            if value.isdigit():
                fields[name] = int(value)
        out.append(fields)
    return out


def _cpu_ns(pid: int) -> int:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class _Signaller:
    """At every BEGIN/END of one of our fio runs (console callback): SIGUSR1 to our server
    (it logs its counters) and a note of its CPU time."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.marks: list[tuple[str, str, int]] = []  # (job, "begin"|"end", server CPU ns) in signal order

    def __call__(self, line: str) -> None:
        words = line.rstrip("\r").split()
        if len(words) == 4 and words[0] in ("BENCH-BEGIN", "BENCH-END") and words[1] == "ours" and self.pid:
            try:
                os.kill(self.pid, signal.SIGUSR1)
            except ProcessLookupError:
                return
            self.marks.append((words[2], "begin" if words[0] == "BENCH-BEGIN" else "end", _cpu_ns(self.pid)))


def _accesses(marks: list[tuple[str, str, int]], stats: list[dict[str, int]]) -> dict[str, list[dict[str, int]]]:
    """Per job, the server's counter deltas over each of our runs (``cpu_ns`` included)."""
    out: dict[str, list[dict[str, int]]] = {}
    begin: dict[str, int] | None = None
    for (job, edge, cpu), snap in zip(marks, stats, strict=False):  # a lost signal shortens stats
        snap = {**snap, "cpu_ns": cpu}
        if edge == "begin":
            begin = snap
        elif begin is not None:
            out.setdefault(job, []).append({k: snap.get(k, 0) - v for k, v in begin.items()})
            begin = None
    return out


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench ahci: {tool} not found (apt-get install qemu-system-x86 fio)")
    return path


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn_server(sock: socket.socket, image: Path, opts: Sequence[str], log: Any, profile: Path | None
                  ) -> subprocess.Popen[bytes]:
    """``python -m mpqemu --device ahci`` on ``sock``, as a user runs it."""
    argv = ["-m", "mpqemu", "--fd", str(sock.fileno()), "--device", "ahci", "--backend", f"file:{image}"]
    for opt in opts:
        argv += ["--opt", opt]
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, *prefix, *argv], pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def _make_image(path: Path, size_mb: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def run(*, runs: int, runtime: int, size_mb: int, jobs: Sequence[str], cache: str, workdir: Path,
        ours_opts: Sequence[str] = (), profile: Path | None = None) -> dict[str, Any]:
    """Boot the guest once; return ``{"results": parse_results(...), "accesses": ..., ...}``."""
    from harness.conformance.cases.e1000 import POLLED_INTX_APPEND
    from harness.guest import ImageBuilder
    from harness.qemu.launcher import QemuLauncher

    _need("qemu-system-x86_64")
    fio = _need("fio")
    builder = ImageBuilder()
    builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")
    builder.add_test(TEST, guest_script())
    image = builder.build(progress=False)
    ours_img, peer_img = workdir / "ours.img", workdir / "peer.img"
    for img in (ours_img, peer_img):
        _make_image(img, size_mb)
    server_opts, peer_cache = CACHE_MODES[cache]
    signaller = _Signaller()
    server_log = workdir / "server.log"
    with contextlib.ExitStack() as stack:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stack.callback(theirs.close)
        log = stack.enter_context(open(server_log, "wb"))
        server = _spawn_server(ours, ours_img, [*server_opts, *ours_opts], log, profile)
        stack.callback(_end, server)
        ours.close()
        signaller.pid = server.pid
        args = [
            "-device", f"x-pci-proxy-dev,id=dev0,fd={theirs.fileno()},addr={OURS_BDF[-4:]}",
            "-device", f"ahci,id=ahci1,addr={PEER_BDF[-4:]}",
            "-drive", f"if=none,id=d1,file={peer_img},format=raw,cache={peer_cache},aio=threads",
            "-device", "ide-hd,drive=d1,bus=ahci1.0",
        ]
        append = [*POLLED_INTX_APPEND, f"dmbench.runs={runs}", f"dmbench.runtime={runtime}",
                  f"dmbench.size={size_mb}", f"dmbench.jobs={','.join(jobs)}"]
        launcher = QemuLauncher.for_image(image, args=args, append=append, test=TEST, shared_memory=True,
                                          memory_mb=512, pass_fds=[theirs.fileno()], on_line=signaller,
                                          serial_log=workdir / "console.log")
        with launcher:
            result = launcher.wait(120.0 + 2 * len(jobs) * runs * (runtime + 20))
        # QEMU is gone: the server sees the disconnect and exits (writing its profile).
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            pass
    if "bench.disks" not in result.checks or not result.checks["bench.disks"][0]:
        raise SystemExit(f"bench ahci: the guest did not find both disks\n{result.summary()}")
    if "bench.done" not in result.checks:
        raise SystemExit(f"bench ahci: the guest did not finish\n{result.summary()}")
    stats = parse_stats(server_log.read_text(errors="replace"))
    return {"results": parse_results(result.log), "accesses": _accesses(signaller.marks, stats),
            "disks": result.checks["bench.disks"][1]}


_ABAR = 0xFEBF_0000


def run_host(*, seconds: float, size_mb: int, workdir: Path, ours_opts: Sequence[str] = (),
             profile: Path | None = None, tick_ms: float = 4.0, think_us: float = 100.0) -> dict[str, Any]:
    """Drive our server from the host, no guest: a libahci-like driver over ``FakeProxy``.

    4 KiB NCQ random reads at queue depth 32. Each command is issued as ``ahci_qc_issue``
    does (PxSACT, then PxCI); completions are taken as ``ahci_single_level_irq_intr`` does
    (IS, PxIS, PxIS write-clear, PxSACT, IS write-clear) when the irqfd fires or, failing
    that, every ``tick_ms`` (the guest's irqpoll tick). Before each command the driver spins
    for ``think_us`` (what a TCG guest spends per I/O in fio, the block layer and
    ``ahci_qc_prep``), so work the server does after a reply can overlap it as it would
    with a guest. Returns IOPS, accesses per I/O and the mean round trip per register.
    """
    import random
    import select
    import time

    from devmodels._memory import GuestMemory, MemoryRegion
    from devmodels.ahci import regs as r
    from devmodels.ahci.testing import AhciDriver
    from devmodels.pci._defs import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY
    from mpqemu.testing import FakeProxy

    image = workdir / "ours.img"
    _make_image(image, size_mb)
    ram = MemoryRegion.memfd(0, 64 << 20, "bench-ahci-ram")
    memory = GuestMemory([ram])
    rtt: dict[str, list[float]] = {}
    counts = {"ios": 0, "accesses": 0, "irqs": 0, "ticks": 0}
    names = {r.IS: "IS", r.PORT_BASE + r.PxIS: "PxIS", r.PORT_BASE + r.PxSACT: "PxSACT", r.PORT_BASE + r.PxCI: "PxCI"}
    with contextlib.ExitStack() as stack:
        stack.callback(ram.close)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stack.callback(theirs.close)
        log = stack.enter_context(open(workdir / "server.log", "wb"))
        server = _spawn_server(ours, image, ours_opts, log, profile)
        stack.callback(_end, server)
        ours.close()
        proxy = FakeProxy(theirs, timeout=30.0)
        proxy.sync_sysmem([(0, ram.size, 0, ram.fd if ram.fd is not None else -1)])
        irqfd, resample = proxy.set_irqfd()
        stack.callback(os.close, irqfd)
        stack.callback(os.close, resample)
        proxy.config_write(0x10 + 4 * r.AHCI_ABAR_INDEX, _ABAR, 4)
        proxy.config_write(PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, 2)

        def timed(label: str, call: Any, *args: int) -> int:
            t0 = time.perf_counter()
            value = int(call(*args))
            rtt.setdefault(label, []).append(time.perf_counter() - t0)
            counts["accesses"] += 1
            return value

        def read(offset: int, size: int) -> int:
            return timed(f"R {names.get(offset, hex(offset))}", proxy.bar_read, _ABAR + offset, size)

        def write(offset: int, size: int, value: int) -> None:
            timed(f"W {names.get(offset, hex(offset))}", proxy.bar_write, _ABAR + offset, value, size)

        driver = AhciDriver(read, write, memory, 1 << 20, 16 << 20, poll=lambda: time.sleep(0.001))
        driver.reset_hba()
        driver.start_port(0)
        buffers = [driver.alloc(4096, 4096) for _ in range(r.NUM_SLOTS)]
        sectors = (size_mb << 20) // 512
        rng = random.Random(1)
        free = list(range(r.NUM_SLOTS))
        busy = 0
        rtt.clear()
        counts["accesses"] = 0
        t_end = time.monotonic() + seconds
        t_start = time.monotonic()
        while time.monotonic() < t_end:
            for tag in free:  # fio refills the queue; the block layer issues one by one
                spin_until = time.perf_counter() + think_us / 1e6
                while time.perf_counter() < spin_until:
                    pass
                driver.fpdma(0, tag, rng.randrange(sectors // 8) * 8, 8, buffers[tag], write=False)
                driver.issue(0, 1 << tag, queued=True)
                busy |= 1 << tag
            free = []
            ready, _, _ = select.select([irqfd], [], [], tick_ms / 1000)
            if ready:
                os.eventfd_read(irqfd)
                counts["irqs"] += 1
            else:
                counts["ticks"] += 1
            status = read(r.IS, 4)
            if status & 1:
                pxis = driver.preg(0, r.PxIS)
                driver.set_preg(0, r.PxIS, pxis)
                if pxis & r.PxIS_FATAL:
                    raise SystemExit(f"bench ahci --host: port error, PxIS={pxis:#x}")
                done = busy & ~driver.preg(0, r.PxSACT)
                driver.set_reg(r.IS, status)
                free = [tag for tag in range(r.NUM_SLOTS) if done >> tag & 1]
                busy &= ~done
                counts["ios"] += len(free)
            if ready:
                os.eventfd_write(resample, 1)  # EOI
        elapsed = time.monotonic() - t_start
        theirs.close()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            pass
    per_reg = {k: {"n": len(v), "mean_us": 1e6 * sum(v) / len(v), "median_us": 1e6 * statistics.median(v)}
               for k, v in sorted(rtt.items())}
    ios = counts["ios"]
    return {"iops": ios / elapsed, "accesses_per_io": counts["accesses"] / ios if ios else None,
            "irqs": counts["irqs"], "ticks": counts["ticks"], "ios": ios, "seconds": elapsed, "round_trips": per_reg}


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians and ratios per job, accesses per I/O, and the headline figures."""
    jobs: dict[str, Any] = {}
    for job, sides in raw["results"].items():
        if not sides["ours"] and not sides["peer"]:
            continue
        ours = _median([r["value"] for r in sides["ours"]])
        peer = _median([r["value"] for r in sides["peer"]])
        per_io, cpu_per_io = [], []
        for run, delta in zip(sides["ours"], raw["accesses"].get(job, []), strict=False):
            if run["ios"]:
                per_io.append((delta.get("bar_reads", 0) + delta.get("bar_writes", 0)) / run["ios"])
                cpu_per_io.append(delta.get("cpu_ns", 0) / 1e3 / run["ios"])
        jobs[job] = {
            "metric": "iops" if JOBS[job][1] == "iops" else "MB/s",
            "ours": ours,
            "peer": peer,
            "ratio": (ours / peer) if ours and peer else None,
            "ours_runs": [r["value"] for r in sides["ours"]],
            "peer_runs": [r["value"] for r in sides["peer"]],
            "ours_accesses_per_io": _median(per_io),
            "ours_server_cpu_us_per_io": _median(cpu_per_io),
            "ours_counters": raw["accesses"].get(job, []),
        }
    out: dict[str, Any] = {}
    head = jobs.get("randread-4k-qd32", {})
    out.update(ours_iops=head.get("ours"), peer_iops=head.get("peer"), ratio=head.get("ratio"))
    for job, key in (("seqread-1m", "seqread"), ("seqwrite-1m", "seqwrite")):
        row = jobs.get(job, {})
        out.update({f"ours_{key}_mbps": row.get("ours"), f"peer_{key}_mbps": row.get("peer"),
                    f"{key}_ratio": row.get("ratio")})
    out["jobs"] = jobs
    out["disks"] = raw.get("disks", "")
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Sequence[str] = ()) -> int:
    """Run the benchmark; print a table or JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench ahci", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="runs per job and disk (default 3)")
    parser.add_argument("--runtime", type=int, default=10, help="seconds per fio run (default 10)")
    parser.add_argument("--size-mb", type=int, default=256, help="disk size in MiB (default 256)")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated subset of {', '.join(JOBS)}")
    parser.add_argument("--cache", choices=sorted(CACHE_MODES), default="writeback",
                        help="writeback (default): both buffered; none: both O_DIRECT on the host")
    parser.add_argument("--ours-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --opt for our mpqemu server")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of our server here")
    parser.add_argument("--host", action="store_true",
                        help="no guest: drive our server from the host with a libahci-like driver for --runtime s")
    parser.add_argument("--think-us", type=float, default=100.0,
                        help="with --host: guest time to simulate before each command (default 100)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep images, console and server logs here (default: a temporary directory)")
    args = parser.parse_args(list(argv))
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if not jobs or any(j not in JOBS for j in jobs) or min(args.runs, args.runtime, args.size_mb) <= 0:
        parser.error(f"bad --jobs {jobs} or a non-positive --runs/--runtime/--size-mb")
    if args.host:
        with tempfile.TemporaryDirectory(prefix="devmodels-bench-ahci-") as tmp:
            host = run_host(seconds=args.runtime, size_mb=args.size_mb, workdir=Path(tmp), ours_opts=args.ours_opt,
                            profile=args.profile.resolve() if args.profile is not None else None,
                            think_us=args.think_us)
        if args.json:
            print(json.dumps(host))
            return 0
        print(f"host driver, 4k NCQ random read QD32, {args.think_us:.0f} us per command: {host['iops']:.0f} IOPS, "
              f"{_fmt(host['accesses_per_io'], 2)} accesses/IO, {host['irqs']} irqfd wake-ups, {host['ticks']} ticks")
        for reg, row in host["round_trips"].items():
            print(f"  {reg:<10} n={row['n']:<8} round trip mean {row['mean_us']:7.1f} us  median {row['median_us']:7.1f} us")
        return 0
    from harness.qemu.launcher import qemu_available

    reason = qemu_available()
    if reason is not None:
        raise SystemExit(f"bench ahci: {reason}")
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = str(args.workdir.resolve())
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="devmodels-bench-ahci-"))
        raw = run(runs=args.runs, runtime=args.runtime, size_mb=args.size_mb, jobs=jobs, cache=args.cache,
                  workdir=Path(tmp), ours_opts=args.ours_opt,
                  profile=args.profile.resolve() if args.profile is not None else None)
    summary = summarize(raw)
    summary["parameters"] = {"runs": args.runs, "runtime": args.runtime, "size_mb": args.size_mb, "jobs": jobs,
                             "cache": args.cache, "peer_drive": f"cache={CACHE_MODES[args.cache][1]},aio=threads",
                             "ours_opts": [*CACHE_MODES[args.cache][0], *args.ours_opt]}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"disks: {summary['disks']}")
    print(f"cache: ours {'O_DIRECT' if args.cache == 'none' else 'buffered'}, "
          f"peer {summary['parameters']['peer_drive']}")
    print(f"{'job':<18} {'metric':<6} {'devmodels':>10} {'QEMU':>10} {'ratio':>6} {'accesses/IO':>12} "
          f"{'server CPU us/IO':>17}")
    for job, row in summary["jobs"].items():
        print(f"{job:<18} {row['metric']:<6} {_fmt(row['ours']):>10} {_fmt(row['peer']):>10} "
              f"{_fmt(row['ratio'], 2):>6} {_fmt(row['ours_accesses_per_io'], 2):>12} "
              f"{_fmt(row['ours_server_cpu_us_per_io'], 1):>17}")
    return 0
