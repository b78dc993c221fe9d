"""``python -m bench virtio-blk``: devmodels' virtio-blk on our virtio-pci transport over
vfio-user against QEMU 11.1's built-in ``virtio-blk-pci``, in one guest.

One QEMU 11.1 TCG guest gets two virtio-blk disks of the same size, raw image files in the
same host directory:

- ``ours``: ``devmodels vfio-user --device virtio-blk --backend file:OURS.img`` (our
  ``VirtioBlkDevice`` behind our modern virtio-pci transport with MSI-X, served by
  ``bench.vfio_user``), attached with ``vfio-user-pci`` at PCI ``00:04.0``;
- ``peer``: ``-device virtio-blk-pci`` at ``00:05.0`` on ``-drive ...,aio=threads``.

Both use split rings by default, QEMU's default (``--packed`` turns packed rings on for
both), one queue of 256 entries. Caching matches as in ``bench ahci``: by default both are
buffered (``cache=writeback`` for the peer); ``--cache none`` opens ours ``O_DIRECT`` and
gives the peer ``cache=none``. The guest tells the disks apart by serial (ours
``devmodels-bench``) and runs ``bench.common.FIO_JOBS`` (4 KiB random read at QD32, 1 MiB
sequential read and write at QD8, libaio O_DIRECT) on each, alternating disks, ``--runs``
times each for ``--runtime`` seconds. Figures are medians; ratios are ours / peer over
equally many runs.

Per run the bench samples our server's counters (SIGUSR1: socket messages, BAR accesses;
its CPU time from /proc) and the QEMU process's CPU time, for socket messages per I/O,
our server's CPU per I/O, QEMU's CPU per I/O for each disk (the whole process: vCPU,
QEMU's own virtio-blk and its vfio-user client), and the host's per I/O for ours (server +
QEMU). A job that hangs or ends without a figure stops the bench with exit status 1,
naming the job and the disk.

Output: a table, or with ``--json`` one object: ``ours_iops``, ``peer_iops``, ``ratio``
and ``ratio_runs`` (4k random read), ``guest``, ``jobs`` (per job: medians, ratio, runs,
the per-I/O figures with their ``_runs``) and ``parameters``. Needs root (QEMU 11.1 runs in
a chroot), QEMU 11.1 (``.ci/install-qemu11``) and fio on the host.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import vhost_user_blk
from .common import (
    Booted,
    FIO_JOBS,
    GuestConfig,
    GuestRuns,
    LauncherSession,
    PerIoField,
    Plan,
    Samplers,
    add_guest_options,
    fio_append,
    fio_deadlines,
    fio_figure,
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
from .vfio_user import QEMU_CPU, SERVER_CPU, VFIO_USER, qemu_cpu, serve

__all__ = ["main", "PATHS", "PER_IO", "CACHE_MODES", "Params", "Booted", "boot", "summarize"]

TEST = "bench-virtio-blk"
OURS_ADDR, PEER_ADDR = "04.0", "05.0"
PATHS = (VFIO_USER,)
PER_IO = (
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


@dataclass(frozen=True)
class Params:
    """What to run: runs per job and disk, seconds per run, disk size, jobs, cache mode, ring
    layout, extra ``--opt`` for our server, and where to write its profile."""

    runs: int
    runtime: int
    size_mb: int
    jobs: tuple[str, ...]
    cache: str = "writeback"
    packed: bool = False
    ours_opts: tuple[str, ...] = ()
    profile: Path | None = None


Boot = Callable[[GuestConfig, Params, Path], contextlib.AbstractContextManager[Booted]]


@contextlib.contextmanager
def boot(config: GuestConfig, params: Params, work: Path) -> Iterator[Booted]:
    """Build the image, start our server and QEMU 11.1; yield the booted guest; end them all."""
    from harness.guest import ImageBuilder
    from harness.qemu.launcher import QemuLauncher

    reason = config.qemu.unavailable()
    if reason is not None:
        raise SystemExit(f"bench virtio-blk: {reason}")
    fio = need("fio", "virtio-blk", "fio")
    builder = ImageBuilder()
    builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")
    builder.add_test(TEST, vhost_user_blk.guest_script())
    image = builder.build(progress=False)
    ours_img, peer_img = work / "ours.img", work / "peer.img"
    for img in (ours_img, peer_img):
        make_image(img, params.size_mb)
    server_opts, peer_cache = CACHE_MODES[params.cache]
    layout = "on" if params.packed else "off"
    with contextlib.ExitStack() as stack:
        served = serve(stack, work, "ours", "virtio-blk", [f"file:{ours_img}"],
                       [f"serial={vhost_user_blk.OUR_SERIAL}", f"packed={layout}", *server_opts, *params.ours_opts],
                       profile=params.profile)
        args = [
            *served.device_args(OURS_ADDR),
            "-drive", f"if=none,id=d1,file={peer_img},format=raw,cache={peer_cache},aio=threads",
            "-device", f"virtio-blk-pci,drive=d1,addr={PEER_ADDR},num-queues=1,queue-size=256,packed={layout}",
        ]
        append = fio_append(runs=params.runs, runtime=params.runtime, size_mb=params.size_mb, jobs=params.jobs)
        launcher = stack.enter_context(QemuLauncher.for_image(
            image, args=[*args, *config.qemu_args()], append=append, test=TEST, shared_memory=True, memory_mb=512,
            qemu=config.qemu, smp=config.smp, serial_log=work / "console.log"))
        yield Booted(LauncherSession(launcher), Samplers(served.sampler("ours"), qemu_cpu(launcher.pid, ("ours", "peer"))),
                     processes_alive({"ours": served.process}, {"ours": served.log}), {"ours": served.log})


def summarize(runs: GuestRuns, config: GuestConfig, params: Params, lost: str | None = None) -> dict[str, Any]:
    """The JSON summary: ``fio_summary`` with the per-I/O figures, the guest and parameters."""
    summary = fio_summary(runs, params.jobs, PER_IO)
    summary["guest"] = config.as_json(runs.qemu_version)
    summary["disks"] = runs.result.checks.get("bench.disks", (False, ""))[1]
    summary["warnings"] = [f"server counters: {lost}"] if lost else []
    summary["parameters"] = {"runs": params.runs, "runtime": params.runtime, "size_mb": params.size_mb,
                             "jobs": list(params.jobs), "cache": params.cache, "packed": params.packed,
                             "peer_drive": f"cache={CACHE_MODES[params.cache][1]},aio=threads",
                             "ours_opts": [*CACHE_MODES[params.cache][0], *params.ours_opts]}
    return summary


def _text(summary: dict[str, Any], config: GuestConfig) -> list[str]:
    p = summary["parameters"]
    return [f"guest: {config.describe(summary['guest']['qemu'])}",
            f"disks: {summary['disks']}",
            f"rings: {'packed' if p['packed'] else 'split'}; cache: ours "
            f"{'O_DIRECT' if p['cache'] == 'none' else 'buffered'}, peer {p['peer_drive']}",
            *fio_table(summary["jobs"], "QEMU", PER_IO),
            *(f"warning: {w}" for w in summary["warnings"])]


def main(argv: Sequence[str] = (), boot: Boot = boot) -> int:
    """Run the benchmark; print a table or JSON; 1 when any run failed (``bench.common``)."""
    parser = argparse.ArgumentParser(prog="python -m bench virtio-blk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="runs per job and disk (default 3)")
    parser.add_argument("--runtime", type=int, default=10, help="seconds per fio run (default 10)")
    parser.add_argument("--size-mb", type=int, default=256, help="disk size in MiB (default 256)")
    parser.add_argument("--jobs", default=",".join(FIO_JOBS), help=f"comma-separated subset of {', '.join(FIO_JOBS)}")
    parser.add_argument("--cache", choices=sorted(CACHE_MODES), default="writeback",
                        help="writeback (default): both buffered; none: both O_DIRECT on the host")
    parser.add_argument("--packed", action="store_true", help="packed rings on both disks (default: split)")
    parser.add_argument("--ours-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --opt for our vfio-user server")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of our server here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep images, console and server logs here (default: a temporary directory)")
    add_guest_options(parser, PATHS)
    args = parser.parse_args(list(argv))
    jobs = tuple(j.strip() for j in args.jobs.split(",") if j.strip())
    if not jobs or any(j not in FIO_JOBS for j in jobs) or min(args.runs, args.runtime, args.size_mb) <= 0:
        parser.error(f"bad --jobs {list(jobs)} or a non-positive --runs/--runtime/--size-mb")
    config = guest_config(parser, args, PATHS)
    params = Params(args.runs, args.runtime, args.size_mb, jobs, args.cache, args.packed, tuple(args.ours_opt),
                    args.profile.resolve() if args.profile is not None else None)

    def body() -> tuple[dict[str, Any], list[str]]:
        with workdir(args.workdir, "devmodels-bench-virtio-blk-") as work, boot(config, params, work) as booted:
            runs = watch(booted.session, Plan.interleaved(("ours", "peer"), jobs, params.runs), fio_figure,
                         fio_deadlines(params.runtime), sampler=booted.sampler, health=booted.health,
                         logs=booted.logs)
            lost = booted.sampler.lost if booted.sampler is not None else None
        summary = summarize(runs, config, params, lost)
        return summary, _text(summary, config)

    return run_main("virtio-blk", args.json, body, config)
