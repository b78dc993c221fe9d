"""``python -m bench ahci``: devmodels' AHCI against QEMU's built-in AHCI in one guest, behind
x-pci-proxy-dev (QEMU 7.2) or over vfio-user (QEMU 11.1).

One TCG guest gets two AHCI controllers, each with one disk of the same size, both raw
image files in the same host directory:

- ``ours``: devmodels' ICH9 AHCI at PCI ``00:04.0``. ``--path proxy``: served by ``python -m
  devmodels mpqemu --device ahci --backend file:OURS.img`` to ``x-pci-proxy-dev``.
  ``--path vfio-user``: served by ``devmodels vfio-user`` (with its MSI capability) to QEMU
  11.1's ``vfio-user-pci`` (``bench.vfio_user``);
- ``peer``: ``-device ahci`` at ``00:05.0`` with ``ide-hd`` on ``-drive ...,aio=threads``.

Both report 8086:2922, so the guest tells the disks apart by PCI path
(``/sys/block/sdX/device`` resolves under ``.../0000:00:04.0/ataN/...``). Caching matches on
both sides: by default our ``RawFileBackend`` is buffered, so the peer gets
``cache=writeback`` (host page cache, a volatile write cache the guest flushes); with
``--cache none`` ours opens its image ``O_DIRECT`` (``--opt direct=on``) and the peer gets
``cache=none``.

QEMU 7.2's proxy delivers INTx only through KVM irqfds, so on that path the guest boots with
``irqpoll nolapic_timer nohz=off``: every AHCI handler is polled at each 250 Hz timer tick.
Both disks live in that one guest, so the peer runs under the same command line. Over
vfio-user interrupts are real (MSI) and the command line is the default. The proxy path needs
QEMU 7.2 (``--path proxy``; 11.1's proxy segfaults under TCG); the guest gets ``--smp``/
``--maxcpus`` vCPUs, one online of two by default so that TCG keeps its memory barriers
(``bench.common`` rule 5).

The guest runs ``bench.common.FIO_JOBS`` (libaio, O_DIRECT) on each disk, alternating disks:
4 KiB random read at queue depth 32, 1 MiB sequential read and 1 MiB sequential write
(queue depth 8), ``--runs`` times each for ``--runtime`` seconds. Figures are medians; ratios
are ours / peer over equally many runs. At the begin and end of each of our runs the bench
asks the server for its counters (SIGUSR1, waiting for the answer) and reads its CPU time,
so per-I/O figures pair each run with its own counters. A job that hangs or ends without a
figure stops the bench with exit status 1, naming the job and the disk.

Output: a table, or with ``--json`` one object with ``ours_iops``, ``peer_iops``, ``ratio``
and ``ratio_runs`` (4k random read), ``ours_seqread_mbps``/``peer_seqread_mbps``/
``seqread_ratio``/``seqread_ratio_runs``, the same for ``seqwrite`` (for the jobs run),
``guest`` (QEMU version, vCPUs, barriers), and ``jobs`` with every job's medians and runs.
Each job row also has ``ours_accesses_per_io`` (proxied BAR accesses per fio I/O),
``ours_messages_per_io`` and ``ours_server_cpu_us_per_io`` (our server's user+system CPU per
I/O, from /proc), ``ours_qemu_cpu_us_per_io`` and ``peer_qemu_cpu_us_per_io`` (the whole QEMU
process's CPU over each disk's runs: for the peer, all the host spends), and
``ours_host_cpu_us_per_io`` (server + QEMU), each with its ``_runs``, and ``ours_counters``
(the deltas of every run).
``--profile FILE`` runs our server under cProfile. ``--host`` skips the guest: a libahci-like
driver in this process drives our server over the same socket protocol (4 KiB NCQ reads at
QD32, ``--think-us`` of simulated guest time per command) and reports the round trip per
register. Needs qemu-system-x86_64 and fio on the host (fio and its libraries are copied
into the guest image).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    Booted,
    FIO_JOBS,
    GUEST_FUNCTIONS,
    Attachment,
    BenchFailure,
    GuestConfig,
    GuestRuns,
    LauncherSession,
    MpqemuStats,
    PerIoField,
    Plan,
    Samplers,
    add_guest_options,
    end_process,
    fio_append,
    fio_deadlines,
    fio_figure,
    fio_guest_loop,
    fio_summary,
    fio_table,
    guest_config,
    make_image,
    need,
    processes_alive,
    python_env,
    run_main,
    watch,
    workdir,
)
from .vfio_user import QEMU_CPU, SERVER_CPU, VFIO_USER, qemu_cpu, serve

__all__ = ["main", "CACHE_MODES", "OURS_BDF", "PEER_BDF", "PATHS", "Params", "Booted", "boot", "guest_script",
           "run_host", "summarize"]

TEST = "bench-ahci"
HOST_JOB = "host-randread-4k-qd32"
OURS_BDF = "0000:00:04.0"
PEER_BDF = "0000:00:05.0"
PATHS = (Attachment("proxy", ("7.2",), "x-pci-proxy-dev to devmodels mpqemu; 11.1's proxy segfaults under TCG"),
         VFIO_USER)
PER_IO = (
    PerIoField("ours_accesses_per_io", "accesses/IO", "ours", ("bar_reads", "bar_writes")),
    PerIoField("ours_messages_per_io", "messages/IO", "ours", ("messages",)),
    PerIoField("ours_server_cpu_us_per_io", "server CPU us/IO", "ours", (SERVER_CPU,), 1e-3, 1),
    PerIoField("ours_qemu_cpu_us_per_io", "QEMU CPU us/IO ours", "ours", (QEMU_CPU,), 1e-3, 1),
    PerIoField("peer_qemu_cpu_us_per_io", "QEMU CPU us/IO peer", "peer", (QEMU_CPU,), 1e-3, 1),
    PerIoField("ours_host_cpu_us_per_io", "host CPU us/IO ours", "ours", (SERVER_CPU, QEMU_CPU), 1e-3, 1),
)

# --cache: (our server's --opt, the peer's -drive cache=)
CACHE_MODES: dict[str, tuple[tuple[str, ...], str]] = {
    "writeback": ((), "writeback"),
    "none": (("direct=on",), "none"),
}


def guest_script() -> str:
    """The guest side: find both disks by PCI function, then ``fio_guest_loop``."""
    find = "\n".join([
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
    ])
    return GUEST_FUNCTIONS + find + "\n" + fio_guest_loop() + "report bench.done PASS\n"


@dataclass(frozen=True)
class Params:
    """What to run: runs per job and disk, seconds per run, disk size, jobs, cache mode, extra
    ``--opt`` for our server, and where to write its profile."""

    runs: int
    runtime: int
    size_mb: int
    jobs: tuple[str, ...]
    cache: str = "writeback"
    ours_opts: tuple[str, ...] = ()
    profile: Path | None = None


Boot = Callable[[GuestConfig, Params, Path], contextlib.AbstractContextManager[Booted]]


def _spawn_server(sock: socket.socket, image: Path, opts: Sequence[str], log: Any, profile: Path | None
                  ) -> subprocess.Popen[bytes]:
    """``python -m devmodels mpqemu --device ahci`` on ``sock``, as a user runs it."""
    argv = ["-m", "devmodels", "mpqemu", "--fd", str(sock.fileno()), "--device", "ahci", "--backend", f"file:{image}"]
    for opt in opts:
        argv += ["--opt", opt]
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    return subprocess.Popen([sys.executable, *prefix, *argv], pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, env=python_env())


def _wait_then_end(server: subprocess.Popen[bytes]) -> None:
    # QEMU is gone: the server sees the disconnect and exits (writing its profile).
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(60)
    end_process(server, 30.0)


@contextlib.contextmanager
def boot(config: GuestConfig, params: Params, work: Path) -> Iterator[Booted]:
    """Build the image, start our server and QEMU; yield the booted guest; end them all."""
    from harness.conformance.cases import POLLED_INTX_APPEND
    from harness.guest import ImageBuilder
    from harness.qemu.launcher import QemuLauncher

    reason = config.qemu.unavailable()
    if reason is not None:
        raise SystemExit(f"bench ahci: {reason}")
    fio = need("fio", "ahci", "fio")
    builder = ImageBuilder()
    builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")
    builder.add_test(TEST, guest_script())
    image = builder.build(progress=False)
    ours_img, peer_img = work / "ours.img", work / "peer.img"
    for img in (ours_img, peer_img):
        make_image(img, params.size_mb)
    server_opts, peer_cache = CACHE_MODES[params.cache]
    peer = [
        "-device", f"ahci,id=ahci1,addr={PEER_BDF[-4:]}",
        "-drive", f"if=none,id=d1,file={peer_img},format=raw,cache={peer_cache},aio=threads",
        "-device", "ide-hd,drive=d1,bus=ahci1.0",
    ]
    fio_words = fio_append(runs=params.runs, runtime=params.runtime, size_mb=params.size_mb, jobs=params.jobs)
    with contextlib.ExitStack() as stack:
        pass_fds: list[int] = []
        if config.path == VFIO_USER.name:
            # ICH9 AHCI with its MSI capability: vfio-user delivers it, no polling.
            served = serve(stack, work, "ours", "ahci", [f"file:{ours_img}"], [*server_opts, *params.ours_opts],
                           profile=params.profile)
            server, server_log, stats = served.process, served.log, served.sampler("ours")
            args, append = [*served.device_args(OURS_BDF[-4:]), *peer], fio_words
        else:
            server_log = work / "server.log"
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            stack.callback(theirs.close)
            log = stack.enter_context(open(server_log, "wb"))
            server = _spawn_server(ours, ours_img, [*server_opts, *params.ours_opts], log, params.profile)
            stack.callback(_wait_then_end, server)
            ours.close()
            stats = MpqemuStats(server.pid, server_log)
            pass_fds = [theirs.fileno()]
            args = ["-device", f"x-pci-proxy-dev,id=dev0,fd={theirs.fileno()},addr={OURS_BDF[-4:]}", *peer]
            append = [*POLLED_INTX_APPEND, *fio_words]
        launcher = stack.enter_context(QemuLauncher.for_image(
            image, args=[*args, *config.qemu_args()], append=append, test=TEST, shared_memory=True, memory_mb=512,
            pass_fds=pass_fds, qemu=config.qemu, smp=config.smp, serial_log=work / "console.log"))
        if pass_fds:
            theirs.close()  # QEMU holds its copy: the server sees end of stream when QEMU exits
        yield Booted(LauncherSession(launcher), Samplers(stats, qemu_cpu(launcher.pid, ("ours", "peer"))),
                     processes_alive({"ours": server}, {"ours": server_log}), {"ours": server_log})


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

    from devmodels import GuestMemory, MemoryRegion
    from devmodels.ahci import regs as r
    from devmodels.ahci.testing import AhciDriver
    from devmodels.pci.defs import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY
    from mpqemu.testing import FakeProxy

    image = workdir / "ours.img"
    make_image(image, size_mb)
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
        stack.callback(end_process, server, 30.0)
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
                    raise BenchFailure(f"port error, PxIS={pxis:#x}", job=HOST_JOB, side="ours")
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
    if not ios:
        raise BenchFailure(f"no command completed in {elapsed:.1f} s", job=HOST_JOB, side="ours")
    return {"iops": ios / elapsed, "accesses_per_io": counts["accesses"] / ios,
            "irqs": counts["irqs"], "ticks": counts["ticks"], "ios": ios, "seconds": elapsed, "round_trips": per_reg}


def summarize(runs: GuestRuns, config: GuestConfig, params: Params, lost: str | None = None) -> dict[str, Any]:
    """The JSON summary: ``fio_summary`` with our server's counters, the sequential headline
    keys, the guest and the parameters."""
    summary = fio_summary(runs, params.jobs, PER_IO)
    for job, key in (("seqread-1m", "seqread"), ("seqwrite-1m", "seqwrite")):
        if job in params.jobs:
            row = summary["jobs"][job]
            summary.update({f"ours_{key}_mbps": row["ours"], f"peer_{key}_mbps": row["peer"],
                            f"{key}_ratio": row["ratio"], f"{key}_ratio_runs": row["ratio_runs"]})
    for job, row in summary["jobs"].items():
        row["ours_counters"] = [runs.counters.get(key) for key in runs.plan.runs_of("ours", job)]
    summary["guest"] = config.as_json(runs.qemu_version)
    summary["disks"] = runs.result.checks.get("bench.disks", (False, ""))[1]
    summary["warnings"] = [f"server counters: {lost}"] if lost else []
    summary["parameters"] = {"runs": params.runs, "runtime": params.runtime, "size_mb": params.size_mb,
                             "jobs": list(params.jobs), "cache": params.cache,
                             "peer_drive": f"cache={CACHE_MODES[params.cache][1]},aio=threads",
                             "ours_opts": [*CACHE_MODES[params.cache][0], *params.ours_opts]}
    return summary


def _text(summary: dict[str, Any], config: GuestConfig) -> list[str]:
    cache = summary["parameters"]
    return [f"guest: {config.describe(summary['guest']['qemu'])}",
            f"disks: {summary['disks']}",
            f"cache: ours {'O_DIRECT' if cache['cache'] == 'none' else 'buffered'}, peer {cache['peer_drive']}",
            *fio_table(summary["jobs"], "QEMU", PER_IO),
            *(f"warning: {w}" for w in summary["warnings"])]


def _host_main(args: argparse.Namespace) -> int:
    def body() -> tuple[dict[str, Any], list[str]]:
        with workdir(None, "devmodels-bench-ahci-") as work:
            host = run_host(seconds=args.runtime, size_mb=args.size_mb, workdir=work, ours_opts=args.ours_opt,
                            profile=args.profile.resolve() if args.profile is not None else None,
                            think_us=args.think_us)
        lines = [f"host driver, 4k NCQ random read QD32, {args.think_us:.0f} us per command: {host['iops']:.0f} IOPS, "
                 f"{host['accesses_per_io']:.2f} accesses/IO, {host['irqs']} irqfd wake-ups, {host['ticks']} ticks"]
        for reg, row in host["round_trips"].items():
            lines.append(f"  {reg:<10} n={row['n']:<8} round trip mean {row['mean_us']:7.1f} us  "
                         f"median {row['median_us']:7.1f} us")
        return host, lines

    return run_main("ahci", args.json, body)


def main(argv: Sequence[str] = (), boot: Boot = boot) -> int:
    """Run the benchmark; print a table or JSON; 1 when any run failed (``bench.common``)."""
    parser = argparse.ArgumentParser(prog="python -m bench ahci", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="runs per job and disk (default 3)")
    parser.add_argument("--runtime", type=int, default=10, help="seconds per fio run (default 10)")
    parser.add_argument("--size-mb", type=int, default=256, help="disk size in MiB (default 256)")
    parser.add_argument("--jobs", default=",".join(FIO_JOBS), help=f"comma-separated subset of {', '.join(FIO_JOBS)}")
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
    add_guest_options(parser, PATHS)
    args = parser.parse_args(list(argv))
    jobs = tuple(j.strip() for j in args.jobs.split(",") if j.strip())
    if not jobs or any(j not in FIO_JOBS for j in jobs) or min(args.runs, args.runtime, args.size_mb) <= 0:
        parser.error(f"bad --jobs {list(jobs)} or a non-positive --runs/--runtime/--size-mb")
    if args.host:
        return _host_main(args)
    config = guest_config(parser, args, PATHS)
    params = Params(args.runs, args.runtime, args.size_mb, jobs, args.cache, tuple(args.ours_opt),
                    args.profile.resolve() if args.profile is not None else None)

    def body() -> tuple[dict[str, Any], list[str]]:
        with workdir(args.workdir, "devmodels-bench-ahci-") as work, boot(config, params, work) as booted:
            runs = watch(booted.session, Plan.interleaved(("ours", "peer"), jobs, params.runs), fio_figure,
                         fio_deadlines(params.runtime), sampler=booted.sampler, health=booted.health,
                         logs=booted.logs)
            lost = booted.sampler.lost if booted.sampler is not None else None
        summary = summarize(runs, config, params, lost)
        return summary, _text(summary, config)

    return run_main("ahci", args.json, body, config)
