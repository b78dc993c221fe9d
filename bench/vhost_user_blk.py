"""``python -m bench vhost-user-blk``: devmodels' vhost-user-blk against qemu-storage-daemon.

One TCG guest gets two vhost-user-blk disks of the same size, each a raw image file on
the same host filesystem: one served by ``devmodels vhost-user --device virtio-blk`` (a separate process),
one by ``qemu-storage-daemon --export type=vhost-user-blk``. The guest tells them apart by
their serial (GET_ID) and runs fio (libaio, O_DIRECT) on each, alternating disks:
``bench.common.FIO_JOBS`` (4 KiB random read at queue depth 32, 1 MiB sequential read and
write), ``--runs`` times each. The figures are medians over the runs; the ratio is ours /
QSD, over equally many runs of each. At each run's begin and end the bench reads the CPU
time of the server serving that disk (``/proc``), for server CPU per I/O on both sides, and
the QEMU process's (the guest and both vhost-user front-ends) for QEMU CPU per I/O.

The guest boots under ``--qemu`` (7.2 by default; 11.1 drives vhost-user-blk-pci too) with
``--smp``/``--maxcpus`` vCPUs: under 7.2 one online of two by default, because 7.2's TCG
elides the guest's memory barriers when ``maxcpus`` is 1 and the event-idx driver then
loses interrupts (``bench.common`` rule 5). A job that hangs or ends without a figure stops
the bench with exit status 1, naming the job and the disk.

Output: a table, or with ``--json`` one object: ``ours_iops``, ``peer_iops``, ``ratio`` and
``ratio_runs`` (4k random read, when run), ``guest`` (QEMU version, vCPUs, barriers),
``peer_server`` (the daemon's version), ``jobs`` (per job: medians, ``ratio`` and
``ratio_runs``, every run, ``ours_server_cpu_us_per_io`` and ``peer_server_cpu_us_per_io``,
``ours_qemu_cpu_us_per_io`` and ``peer_qemu_cpu_us_per_io``, each with its ``_runs``), and
``parameters``. Needs qemu-system-x86_64, qemu-storage-daemon and
fio on the host (fio and its libraries are copied into the guest image).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    FIO_JOBS,
    GUEST_FUNCTIONS,
    Attachment,
    GuestConfig,
    GuestRuns,
    GuestSession,
    Health,
    LauncherSession,
    PerIoField,
    Plan,
    ProcessCpu,
    Sampler,
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
    run_main,
    watch,
    workdir,
)
from .vfio_user import QEMU_CPU, qemu_cpu

__all__ = ["main", "PATHS", "Params", "Booted", "boot", "guest_script", "summarize"]

TEST = "bench-vhost-user-blk"
OUR_SERIAL = "devmodels-bench"  # QSD's export has no serial: the other disk is the peer
PATHS = (Attachment("vhost-user", ("7.2", "11.1"), "QEMU's vhost-user-blk-pci, our server in its own process"),)
PER_IO = (
    PerIoField("ours_server_cpu_us_per_io", "ours CPU us/IO", "ours", ("cpu_ns",), 1e-3, 1),
    PerIoField("peer_server_cpu_us_per_io", "QSD CPU us/IO", "peer", ("cpu_ns",), 1e-3, 1),
    PerIoField("ours_qemu_cpu_us_per_io", "QEMU CPU us/IO ours", "ours", (QEMU_CPU,), 1e-3, 1),
    PerIoField("peer_qemu_cpu_us_per_io", "QEMU CPU us/IO QSD", "peer", (QEMU_CPU,), 1e-3, 1),
)


def guest_script() -> str:
    """The guest side: find both disks by serial, then ``fio_guest_loop``."""
    find = "\n".join([
        "wait_for /dev/vdb 30",
        "ours=; peer=",
        "for d in /sys/block/vd*; do",
        '    s=$(cat $d/serial 2>/dev/null)',
        f'    if [ "$s" = "{OUR_SERIAL}" ]; then ours=/dev/${{d##*/}}; else peer=/dev/${{d##*/}}; fi',
        "done",
        'if [ -z "$ours" ] || [ -z "$peer" ]; then report bench.disks FAIL "ours=$ours peer=$peer"; exit 0; fi',
        'report bench.disks PASS "ours=$ours peer=$peer"',
    ])
    return GUEST_FUNCTIONS + find + "\n" + fio_guest_loop() + "report bench.done PASS\n"


@dataclass(frozen=True)
class Params:
    """What to run: runs per job and disk, seconds per run, disk size, jobs, and extra
    arguments for our server."""

    runs: int
    runtime: int
    size_mb: int
    jobs: tuple[str, ...]
    ours_args: tuple[str, ...] = ()


@dataclass
class Booted:
    """A booted guest (``session``), the counters sampler, the servers' health, what serves
    the peer disk, and the servers' logs by side."""

    session: GuestSession
    sampler: Sampler | None = None
    health: Health | None = None
    peer_server: str = "qemu-storage-daemon"
    logs: dict[str, Path] = field(default_factory=dict)


Boot = Callable[[GuestConfig, Params, Path], contextlib.AbstractContextManager[Booted]]


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"bench vhost-user-blk: {proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench vhost-user-blk: {path} did not appear")
        time.sleep(0.05)


def _version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30, check=False,
                             stdin=subprocess.DEVNULL).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out[2] if len(out) > 2 and out[1] == "version" else "?"


@contextlib.contextmanager
def boot(config: GuestConfig, params: Params, work: Path) -> Iterator[Booted]:
    """Build the image, start both servers and QEMU; yield the booted guest; end them all."""
    from harness.guest import ImageBuilder
    from harness.qemu.launcher import QemuLauncher

    qsd = need("qemu-storage-daemon", "vhost-user-blk", "qemu-system-x86")
    fio = need("fio", "vhost-user-blk", "fio")
    reason = config.qemu.unavailable()
    if reason is not None:
        raise SystemExit(f"bench vhost-user-blk: {reason}")
    builder = ImageBuilder()
    builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")
    builder.add_test(TEST, guest_script())
    image = builder.build(progress=False)
    ours_img, peer_img = work / "ours.img", work / "peer.img"
    for img in (ours_img, peer_img):
        make_image(img, params.size_mb)
    ours_sock, peer_sock = work / "ours.sock", work / "peer.sock"
    with contextlib.ExitStack() as stack:
        logs = {"ours": work / "ours.log", "peer": work / "peer.log"}
        ours = subprocess.Popen(
            [sys.executable, "-m", "devmodels", "vhost-user", "--socket", str(ours_sock), "--device", "virtio-blk",
             "--backend", f"file:{ours_img}", "--opt", f"serial={OUR_SERIAL}", *params.ours_args],
            stdin=subprocess.DEVNULL, stdout=stack.enter_context(open(logs["ours"], "wb")), stderr=subprocess.STDOUT,
        )
        stack.callback(end_process, ours)
        peer = subprocess.Popen(
            [qsd, "--blockdev", f"driver=file,node-name=disk,filename={peer_img}",
             "--export", f"type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={peer_sock},writable=on",
             ],
            stdin=subprocess.DEVNULL, stdout=stack.enter_context(open(logs["peer"], "wb")), stderr=subprocess.STDOUT,
        )
        stack.callback(end_process, peer)
        _wait_for_socket(ours_sock, ours)
        _wait_for_socket(peer_sock, peer)
        args = [
            "-chardev", f"socket,id=ours,path={ours_sock}",
            "-device", "vhost-user-blk-pci,chardev=ours,num-queues=1",
            "-chardev", f"socket,id=peer,path={peer_sock}",
            "-device", "vhost-user-blk-pci,chardev=peer,num-queues=1",
        ]
        append = fio_append(runs=params.runs, runtime=params.runtime, size_mb=params.size_mb, jobs=params.jobs)
        launcher = stack.enter_context(QemuLauncher.for_image(
            image, args=[*args, *config.qemu_args()], append=append, test=TEST, shared_memory=True, memory_mb=512,
            qemu=config.qemu, smp=config.smp, serial_log=work / "console.log"))
        cpu = Samplers(ProcessCpu({"ours": ours.pid, "peer": peer.pid}), qemu_cpu(launcher.pid, ("ours", "peer")))
        yield Booted(LauncherSession(launcher), cpu,
                     processes_alive({"ours": ours, "peer": peer}, logs), f"qemu-storage-daemon {_version(qsd)}", logs)


def summarize(booted: Booted, config: GuestConfig, params: Params, boot_runs: GuestRuns) -> dict[str, Any]:
    """The JSON summary of one boot's runs (``bench.common.fio_summary`` plus the setting)."""
    summary = fio_summary(boot_runs, params.jobs, PER_IO)
    summary["guest"] = config.as_json(boot_runs.qemu_version)
    summary["peer_server"] = booted.peer_server
    summary["parameters"] = {"runs": params.runs, "runtime": params.runtime, "size_mb": params.size_mb,
                             "jobs": list(params.jobs), "ours_args": list(params.ours_args)}
    return summary


def _text(summary: dict[str, Any], config: GuestConfig) -> list[str]:
    return [f"guest: {config.describe(summary['guest']['qemu'])}",
            f"peer: {summary['peer_server']}",
            *fio_table(summary["jobs"], "QSD", PER_IO)]


def main(argv: Sequence[str] = (), boot: Boot = boot) -> int:
    """Run the benchmark; print a table or JSON; 1 when any run failed (``bench.common``)."""
    parser = argparse.ArgumentParser(prog="python -m bench vhost-user-blk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="runs per job and disk (default 3)")
    parser.add_argument("--runtime", type=int, default=5, help="seconds per fio run (default 5)")
    parser.add_argument("--size-mb", type=int, default=256, help="disk size in MiB (default 256)")
    parser.add_argument("--jobs", default=",".join(FIO_JOBS), help=f"comma-separated subset of {', '.join(FIO_JOBS)}")
    parser.add_argument("--ours-arg", action="append", default=[], help="extra argument for devmodels vhost-user (e.g. --opt=inline-reads=off)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep images, console and server logs here (default: a temporary directory)")
    add_guest_options(parser, PATHS)
    args = parser.parse_args(list(argv))
    jobs = tuple(j.strip() for j in args.jobs.split(",") if j.strip())
    if not jobs or any(j not in FIO_JOBS for j in jobs) or min(args.runs, args.runtime, args.size_mb) <= 0:
        parser.error(f"bad --jobs {list(jobs)} or a non-positive --runs/--runtime/--size-mb")
    config = guest_config(parser, args, PATHS)
    params = Params(args.runs, args.runtime, args.size_mb, jobs, tuple(args.ours_arg))

    def body() -> tuple[dict[str, Any], list[str]]:
        with workdir(args.workdir, "devmodels-bench-vub-") as work, boot(config, params, work) as booted:
            runs = watch(booted.session, Plan.interleaved(("ours", "peer"), jobs, params.runs), fio_figure,
                         fio_deadlines(params.runtime), sampler=booted.sampler, health=booted.health,
                         logs=booted.logs)
            summary = summarize(booted, config, params, runs)
        return summary, _text(summary, config)

    return run_main("vhost-user-blk", args.json, body, config)

