"""``python -m bench paradigms``: full emulation against paravirtualization, with our own devices:
our e1000 against our virtio-net, our AHCI against our virtio-blk.

The claim that motivates paravirtualization is that emulating a real part costs two to four
times what a paravirtual device costs. Here everything else is held equal: one QEMU 11.1 TCG
guest, one attachment (each device served by its own ``devmodels vfio-user`` process to
``vfio-user-pci``, ``bench.vfio_user``), the same host backends (each NIC on a TAP in its own
network namespace; each disk a raw image file in the same directory), the same guest kernel
and its stock drivers (e1000, ahci, virtio_pci + virtio_net/virtio_blk with MSI-X):

- ``e1000`` at ``00:04.0`` and ``virtio-net`` at ``00:05.0`` (subnets 10.0.3.0/24 and
  10.0.4.0/24; jobs ``echo``: ``ping -A`` round trips, one in flight, and ``tcp``: ``--mib``
  MiB to a sink in the namespace, as ``bench e1000``);
- ``ahci`` at ``00:06.0`` and ``virtio-blk`` at ``00:07.0`` (jobs ``randread-4k-qd32`` and
  ``randread-4k-qd1``: fio 4 KiB random reads, libaio O_DIRECT, for ``--runtime`` s).

Per pair the table gives throughput (echo round trips/s, TCP MB/s, 4k QD32 IOPS), latency
at queue depth 1 (1e6 / rate: one echo round trip, one 4k read), guest-visible exits per
I/O (the socket messages the device's server handled: every register access the guest made
and every interrupt unmask, as a hypervisor would take them as exits) and host CPU per I/O
(the server's, and the host's: server + the whole QEMU process), each with the
emulated / paravirtual ratio: above 1 for a cost means emulation costs more (the claim says
2-4), below 1 for a throughput means emulation moves less. Ratios of throughput and latency
compare equally many runs (``bench.common`` rule 3); counter ratios compare the medians of
the runs that have counters, whose count stands beside them.

Output: a table, or with ``--json`` one object: ``pairs`` (per pair ``emulated``,
``paravirtual`` and ``metrics``: per metric ``emulated``, ``paravirtual``, ``unit``,
``ratio`` and ``ratio_runs``), ``claim``, ``guest``, ``parameters``. Needs root (TAP,
namespaces, QEMU 11.1 in its chroot), QEMU 11.1 (``.ci/install-qemu11``), fio and iproute2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import e1000
from .common import (
    Booted,
    GUEST_FUNCTIONS,
    Deadlines,
    Figure,
    FioJob,
    GuestConfig,
    GuestRuns,
    LauncherSession,
    Plan,
    Run,
    Sampler,
    Samplers,
    add_guest_options,
    compare,
    fio_figure,
    guest_config,
    make_image,
    need,
    per_io,
    processes_alive,
    run_main,
    watch,
    workdir,
)
from .vfio_user import QEMU_CPU, SERVER_CPU, VFIO_USER, Served, qemu_cpu, serve

__all__ = ["main", "PAIRS", "DEVICES", "JOBS", "CLAIM", "Params", "Booted", "boot", "guest_script", "plan",
           "figure", "summarize"]

TEST = "bench-paradigms"
PATHS = (VFIO_USER,)
CLAIM = "full emulation costs 2-4x what a paravirtual device costs"


@dataclass(frozen=True)
class Pair:
    """An emulated device and its paravirtual counterpart, and the jobs both run."""

    name: str
    emulated: str
    paravirtual: str
    jobs: tuple[str, ...]


PAIRS = (Pair("net", "e1000", "virtio-net", ("echo", "tcp")),
         Pair("disk", "ahci", "virtio-blk", ("randread-4k-qd32", "randread-4k-qd1")))
# side: (PCI function, for NICs the subnet 10.0.N.0/24 and the driver that owns the function)
DEVICES: dict[str, tuple[str, int, str]] = {
    "e1000": ("0000:00:04.0", 3, "e1000"),
    "virtio-net": ("0000:00:05.0", 4, "virtio-pci"),
    "ahci": ("0000:00:06.0", 0, "ahci"),
    "virtio-blk": ("0000:00:07.0", 0, "virtio-pci"),
}
FIO: dict[str, FioJob] = {
    "randread-4k-qd32": FioJob("--rw=randread --bs=4k --iodepth=32 --norandommap --randrepeat=0", "iops", "read"),
    "randread-4k-qd1": FioJob("--rw=randread --bs=4k --iodepth=1 --norandommap --randrepeat=0", "iops", "read"),
}
JOBS = tuple(job for pair in PAIRS for job in pair.jobs)
_MACS = {"e1000": "52:54:00:00:00:01", "virtio-net": "52:54:00:00:00:02"}


def guest_script() -> str:
    """The guest side: bring up both NICs (``bench.e1000.nic_setup_script``), find both disks
    by PCI function, then run every job on each device of its pair in turn, per run."""
    nics = {side: DEVICES[side] for pair in PAIRS if pair.name == "net" for side in (pair.emulated, pair.paravirtual)}
    disks = [side for pair in PAIRS if pair.name == "disk" for side in (pair.emulated, pair.paravirtual)]
    find = "\n".join(f'{side.replace("-", "_")}=$(disk_at {DEVICES[side][0]})' for side in disks)
    check = " && ".join(f'[ -n "${side.replace("-", "_")}" ]' for side in disks)
    fio = "\n".join(
        f"    for side in {' '.join(disks)}; do eval dev=\\$$(echo $side | tr - _); bench_job $side {job} $i "
        f"/usr/bin/fio --name={job} --filename=$dev $common {spec.args} 2>&1; done"
        for job, spec in FIO.items())
    return GUEST_FUNCTIONS + r"""
runs=$(cmdline_value dmbench.runs); count=$(cmdline_value dmbench.count); mib=$(cmdline_value dmbench.mib)
runtime=$(cmdline_value dmbench.runtime); size=$(cmdline_value dmbench.size)
common="--ioengine=libaio --direct=1 --time_based --runtime=$runtime --size=${size}M --output-format=json"
sides=""" + '"' + " ".join(nics) + '"' + e1000.nic_setup_script(nics) + e1000.net_job_functions() + r"""
disk_at() {  # BDF -> /dev/NAME of the disk behind that PCI function
    for d in /sys/block/sd* /sys/block/vd*; do
        case "$(readlink -f $d/device 2>/dev/null)" in */$1/*) echo /dev/${d##*/}; return 0 ;; esac
    done
    return 1
}
n=0
while :; do
""" + "\n".join("    " + line for line in find.splitlines()) + f"""
    if {check}; then break; fi
    n=$((n + 1)); if [ $n -ge 600 ]; then break; fi
    sleep 0.1
done
if ! {{ {check}; }}; then report bench.disks FAIL "$(ls /sys/block | tr '\\n' ' ')"; exit 0; fi
report bench.disks PASS "{' '.join(f'{s}=${s.replace("-", "_")}' for s in disks)}"
dd if=/dev/urandom of=/tmp/bulk bs=1M count=$mib 2>/dev/null
i=0
while [ $i -lt $runs ]; do
    for side in $sides; do bench_job $side echo $i echo_run $(host_of $side); done
    for side in $sides; do bench_job $side tcp $i tcp_run $(host_of $side); done
{fio}
    i=$((i + 1))
done
report bench.done PASS "$runs runs"
"""


@dataclass(frozen=True)
class Params:
    """What to run: runs per job and device, echo requests per run, MiB per TCP run, fio
    seconds per run, disk size."""

    runs: int
    count: int
    mib: int
    runtime: int
    size_mb: int

    def append(self) -> list[str]:
        """The kernel command-line words ``guest_script`` reads."""
        return [f"dmbench.runs={self.runs}", f"dmbench.count={self.count}", f"dmbench.mib={self.mib}",
                f"dmbench.runtime={self.runtime}", f"dmbench.size={self.size_mb}"]

    def deadlines(self) -> Deadlines:
        """Generous bounds: TCG and a loaded host stretch everything."""
        return Deadlines(start=300.0, job=2.0 * self.runtime + 90.0, gap=60.0, finish=60.0,
                         per_job={"echo": self.count / 20.0 + 60.0, "tcp": self.mib * 3.0 + 60.0})


def plan(params: Params) -> Plan:
    """Every (device, job, run), as ``guest_script`` runs them."""
    keys = []
    for run in range(params.runs):
        for pair in PAIRS:
            for job in pair.jobs:
                keys += [(side, job, run) for side in (pair.emulated, pair.paravirtual)]
    return Plan(tuple(keys))


def figure(params: Params) -> Callable[[Run], Figure]:
    """A run's figure: ``bench.e1000.figure`` for echo and TCP, fio's IOPS for the disks."""
    net = e1000.figure(e1000.Params(params.runs, params.count, params.mib))

    def of(run: Run) -> Figure:
        return fio_figure(run, FIO[run.job]) if run.job in FIO else net(run)
    return of


Boot = Callable[[GuestConfig, Params, Path], contextlib.AbstractContextManager[Booted]]


@contextlib.contextmanager
def boot(config: GuestConfig, params: Params, work: Path) -> Iterator[Booted]:
    """Build the image, start the four servers (TAPs in their namespaces, images) and QEMU."""
    from harness.conformance.cases.e1000_tap import PREFIX_LEN, NetNamespace, TcpSink
    from harness.guest import ImageBuilder
    from harness.qemu.launcher import QemuLauncher

    if os.geteuid() != 0:
        raise SystemExit("bench paradigms: needs root (network namespaces, TAP devices, QEMU 11.1's chroot)")
    reason = config.qemu.unavailable()
    if reason is not None:
        raise SystemExit(f"bench paradigms: {reason}")
    fio = need("fio", "paradigms", "fio")
    builder = ImageBuilder()
    builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")
    builder.add_test(TEST, guest_script())
    image = builder.build(progress=False)
    with contextlib.ExitStack() as stack:
        args: list[str] = []
        servers: dict[str, Served] = {}
        samplers: list[Sampler] = []
        for side, (bdf, net, _driver) in DEVICES.items():
            tap = f"dmp{os.getpid() % 100000}{side[:5]}"[:15]
            if net:
                backends, opts = [f"tap:{tap}"], [f"mac={_MACS[side]}"]
            else:
                img = work / f"{side}.img"
                make_image(img, params.size_mb)
                backends, opts = [f"file:{img}"], []
            served = serve(stack, work, side, side, backends, opts)
            servers[side] = served
            samplers.append(served.sampler(side))
            args += served.device_args(bdf[-4:])
            if net:
                space = stack.enter_context(NetNamespace.unique("bench-paradigms"))
                space.adopt(tap, f"10.0.{net}.1/{PREFIX_LEN}", alive=served.alive)
                stack.enter_context(TcpSink(space, f"10.0.{net}.1"))
        launcher = stack.enter_context(QemuLauncher.for_image(
            image, args=[*args, *config.qemu_args()], append=params.append(), test=TEST, shared_memory=True,
            memory_mb=512, qemu=config.qemu, smp=config.smp, serial_log=work / "console.log"))
        sampler = Samplers(*samplers, qemu_cpu(launcher.pid, tuple(DEVICES)))
        logs = {side: s.log for side, s in servers.items()}
        yield Booted(LauncherSession(launcher), sampler,
                     processes_alive({side: s.process for side, s in servers.items()}, logs), logs)


# per pair: (key, label, unit, job, what); what: ("value",) the run's figure, ("latency",) 1e6 / figure,
# or the counters summed per I/O (scaled to us for CPU).
_METRICS: dict[str, list[tuple[str, str, str, str, tuple[str, ...]]]] = {
    "net": [
        ("echo_rate", "echo round trips/s (QD1)", "1/s", "echo", ("value",)),
        ("echo_latency", "echo latency (QD1)", "us", "echo", ("latency",)),
        ("tcp", "TCP guest->host", "MB/s", "tcp", ("value",)),
        ("exits_per_echo", "exits per echo", "messages", "echo", ("messages",)),
        ("server_cpu_per_echo", "server CPU per echo", "us", "echo", (SERVER_CPU,)),
        ("host_cpu_per_echo", "host CPU per echo", "us", "echo", (SERVER_CPU, QEMU_CPU)),
        ("exits_per_mib", "exits per MiB (TCP)", "messages", "tcp", ("messages",)),
        ("host_cpu_per_mib", "host CPU per MiB (TCP)", "us", "tcp", (SERVER_CPU, QEMU_CPU)),
    ],
    "disk": [
        ("iops_qd32", "4k randread QD32", "IOPS", "randread-4k-qd32", ("value",)),
        ("latency_qd1", "4k randread latency (QD1)", "us", "randread-4k-qd1", ("latency",)),
        ("exits_per_io_qd32", "exits per I/O (QD32)", "messages", "randread-4k-qd32", ("messages",)),
        ("exits_per_io_qd1", "exits per I/O (QD1)", "messages", "randread-4k-qd1", ("messages",)),
        ("server_cpu_per_io", "server CPU per I/O (QD32)", "us", "randread-4k-qd32", (SERVER_CPU,)),
        ("host_cpu_per_io", "host CPU per I/O (QD32)", "us", "randread-4k-qd32", (SERVER_CPU, QEMU_CPU)),
        ("host_cpu_per_io_qd1", "host CPU per I/O (QD1)", "us", "randread-4k-qd1", (SERVER_CPU, QEMU_CPU)),
    ],
}


def _metric(runs: GuestRuns, pair: Pair, job: str, what: tuple[str, ...]) -> dict[str, Any] | None:
    if what[0] in ("value", "latency"):
        emulated, paravirtual = runs.values(pair.emulated, job), runs.values(pair.paravirtual, job)
        if what[0] == "latency":
            emulated, paravirtual = [1e6 / v for v in emulated], [1e6 / v for v in paravirtual]
        c = compare(emulated, paravirtual, what=f"{pair.name} {job}, emulated/paravirtual")
        return {"emulated": c.ours, "paravirtual": c.peer, "ratio": c.ratio, "ratio_runs": c.runs}
    scale = 1e-3 if what[0].endswith("cpu_ns") else 1.0
    a = per_io(runs, pair.emulated, job, what, scale)
    b = per_io(runs, pair.paravirtual, job, what, scale)
    if a is None or b is None or b.median <= 0:
        return None
    return {"emulated": a.median, "paravirtual": b.median, "ratio": a.median / b.median,
            "ratio_runs": min(a.runs, b.runs)}


def summarize(runs: GuestRuns, config: GuestConfig, params: Params, lost: str | None = None) -> dict[str, Any]:
    """The JSON summary: per pair and metric, both devices' figures and emulated/paravirtual.

    Raises:
        BenchFailure: unequal run counts (``compare``).
    """
    pairs: dict[str, Any] = {}
    for pair in PAIRS:
        metrics: dict[str, Any] = {}
        for key, label, unit, job, what in _METRICS[pair.name]:
            row = _metric(runs, pair, job, what)
            if row is not None:
                metrics[key] = {"label": label, "unit": unit, **row}
        pairs[pair.name] = {"emulated": pair.emulated, "paravirtual": pair.paravirtual, "metrics": metrics,
                            "runs": {side: {job: runs.values(side, job) for job in pair.jobs}
                                     for side in (pair.emulated, pair.paravirtual)}}
    return {"claim": CLAIM, "pairs": pairs, "guest": config.as_json(runs.qemu_version),
            "warnings": [f"server counters: {lost}"] if lost else [],
            "parameters": {"runs": params.runs, "count": params.count, "mib": params.mib,
                           "runtime": params.runtime, "size_mb": params.size_mb}}


def _text(summary: dict[str, Any], config: GuestConfig) -> list[str]:
    lines = [f"guest: {config.describe(summary['guest']['qemu'])}",
             f"claim: {summary['claim']} (emulated/paravirtual: 2-4 for a cost, 0.25-0.5 for a throughput)",
             f"{'metric':<32} {'unit':<9} {'emulated':>10} {'paravirt':>10} {'emul/para':>9} {'runs':>4}"]
    for name, pair in summary["pairs"].items():
        lines.append(f"{name}: {pair['emulated']} (emulated) vs {pair['paravirtual']} (paravirtual)")
        for row in pair["metrics"].values():
            digits = 2 if row["unit"] == "messages" or row["emulated"] < 100 else 0
            lines.append(f"  {row['label']:<30} {row['unit']:<9} {row['emulated']:>10.{digits}f} "
                         f"{row['paravirtual']:>10.{digits}f} {row['ratio']:>9.2f} {row['ratio_runs']:>4}")
    lines += [f"warning: {w}" for w in summary["warnings"]]
    return lines


def main(argv: Sequence[str] = (), boot: Boot = boot) -> int:
    """Run the benchmark; print a table or JSON; 1 when any run failed (``bench.common``)."""
    parser = argparse.ArgumentParser(prog="python -m bench paradigms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="runs per job and device (default 3)")
    parser.add_argument("--count", type=int, default=2000, help="echo requests per run (default 2000)")
    parser.add_argument("--mib", type=int, default=20, help="MiB sent over TCP per run (default 20)")
    parser.add_argument("--runtime", type=int, default=10, help="seconds per fio run (default 10)")
    parser.add_argument("--size-mb", type=int, default=256, help="disk size in MiB (default 256)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep images, console and server logs here (default: a temporary directory)")
    add_guest_options(parser, PATHS)
    args = parser.parse_args(list(argv))
    if min(args.runs, args.count, args.mib, args.runtime, args.size_mb) <= 0:
        parser.error("--runs, --count, --mib, --runtime and --size-mb must be positive")
    config = guest_config(parser, args, PATHS)
    params = Params(args.runs, args.count, args.mib, args.runtime, args.size_mb)

    def body() -> tuple[dict[str, Any], list[str]]:
        with workdir(args.workdir, "devmodels-bench-paradigms-") as work, boot(config, params, work) as booted:
            runs = watch(booted.session, plan(params), figure(params), params.deadlines(), sampler=booted.sampler,
                         health=booted.health, logs=booted.logs)
            lost = booted.sampler.lost if booted.sampler is not None else None
        summary = summarize(runs, config, params, lost)
        return summary, _text(summary, config)

    return run_main("paradigms", args.json, body, config)

