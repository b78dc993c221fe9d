"""``python -m bench vhost-user-blk``: devmodels' vhost-user-blk against qemu-storage-daemon.

One TCG guest gets two vhost-user-blk disks of the same size, each a raw image file on
the same host filesystem: one served by ``devmodels vhost-user blk`` (a separate process),
one by ``qemu-storage-daemon --export type=vhost-user-blk``. The guest tells them apart by
their serial (GET_ID) and runs fio (libaio, O_DIRECT) on each, alternating disks: 4 KiB
random read at queue depth 32, 1 MiB sequential read and 1 MiB sequential write, ``--runs``
times each. The figures are medians over the runs; the ratio is ours / QSD.

Output: a table, or with ``--json`` one object with ``ours_iops``, ``peer_iops`` and
``ratio`` for the 4k random read, and ``jobs`` with every job's medians and raw runs.
Needs qemu-system-x86_64, qemu-storage-daemon and fio on the host (fio and its libraries are
copied into the guest image).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "JOBS", "guest_script", "parse_results"]

OUR_SERIAL = "devmodels-bench"  # QSD's export has no serial: the other disk is the peer

# name: (fio arguments, metric)
JOBS: dict[str, tuple[str, str]] = {
    "randread-4k-qd32": ("--rw=randread --bs=4k --iodepth=32 --norandommap --randrepeat=0", "iops"),
    "seqread-1m": ("--rw=read --bs=1M --iodepth=8", "bw"),
    "seqwrite-1m": ("--rw=write --bs=1M --iodepth=8", "bw"),
}


def guest_script(runs: int, runtime: int, size_mb: int) -> str:
    """The guest side: find both disks by serial, run every job ``runs`` times on each."""
    lines = [
        "wait_for /dev/vdb 30",
        "ours=; peer=",
        "for d in /sys/block/vd*; do",
        '    s=$(cat $d/serial 2>/dev/null)',
        f'    if [ "$s" = "{OUR_SERIAL}" ]; then ours=/dev/${{d##*/}}; else peer=/dev/${{d##*/}}; fi',
        "done",
        'if [ -z "$ours" ] || [ -z "$peer" ]; then report bench.disks FAIL "ours=$ours peer=$peer"; exit 0; fi',
        'report bench.disks PASS "ours=$ours peer=$peer"',
    ]
    common = f"--ioengine=libaio --direct=1 --time_based --runtime={runtime} --size={size_mb}M --output-format=json"
    for job, (args, _) in JOBS.items():
        for run in range(runs):
            for label in ("ours", "peer"):
                lines += [
                    f'echo "BENCH-BEGIN {label} {job} {run}"',
                    f"/usr/bin/fio --name={job} --filename=${label} {common} {args} 2>&1",
                    f'echo "BENCH-END {label} {job} {run}"',
                ]
    lines.append("report bench.done PASS")
    return "\n".join(lines) + "\n"


def parse_results(log: str) -> dict[str, dict[str, list[float]]]:
    """``{job: {"ours": [...], "peer": [...]}}`` from the fio JSON blocks in the console log.

    The metric is IOPS for random jobs and MB/s (10**6 bytes) for sequential ones.
    """
    out: dict[str, dict[str, list[float]]] = {job: {"ours": [], "peer": []} for job in JOBS}
    block: list[str] | None = None
    key: tuple[str, str] | None = None
    for line in log.splitlines():
        line = line.rstrip("\r")
        if line.startswith("BENCH-BEGIN "):
            _, label, job, _run = line.split()
            block, key = [], (label, job)
        elif line.startswith("BENCH-END ") and block is not None and key is not None:
            text = "\n".join(block)
            start = text.find("{")
            try:
                data = json.loads(text[start:]) if start >= 0 else None
            except ValueError:
                data = None
            label, job = key
            if data is not None and job in JOBS:
                stats = data["jobs"][0]
                side = stats["write"] if "write" in JOBS[job][0] else stats["read"]
                value = side["iops"] if JOBS[job][1] == "iops" else side["bw_bytes"] / 1e6
                out[job][label].append(float(value))
            block, key = None, None
        elif block is not None:
            block.append(line)
    return out


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench vhost-user-blk: {tool} not found (apt-get install qemu-system-x86 fio)")
    return path


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"bench vhost-user-blk: {proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench vhost-user-blk: {path} did not appear")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(runs: int, runtime: int, size_mb: int, workdir: Path, ours_args: Sequence[str] = ()) -> dict[str, Any]:
    """Boot the guest once and return the parsed results (see ``parse_results``)."""
    from harness.guest import ImageBuilder
    from harness.qemu.launcher import QemuLauncher

    qsd = _need("qemu-storage-daemon")
    _need("qemu-system-x86_64")
    fio = _need("fio")
    builder = ImageBuilder()
    builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")
    builder.add_test("bench-vhost-user-blk", guest_script(runs, runtime, size_mb))
    image = builder.build(progress=False)
    ours_img, peer_img = workdir / "ours.img", workdir / "peer.img"
    for img in (ours_img, peer_img):
        with open(img, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(size_mb):
                f.write(block)
    ours_sock, peer_sock = workdir / "ours.sock", workdir / "peer.sock"
    with contextlib.ExitStack() as stack:
        ours = subprocess.Popen(
            [sys.executable, "-m", "devmodels", "vhost-user", "blk", "--socket", str(ours_sock), "--image",
             str(ours_img), "--serial", OUR_SERIAL, *ours_args],
            stdin=subprocess.DEVNULL,
        )
        stack.callback(_stop, ours)
        peer = subprocess.Popen(
            [qsd, "--blockdev", f"driver=file,node-name=disk,filename={peer_img}",
             "--export", f"type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={peer_sock},writable=on",
             ],
            stdin=subprocess.DEVNULL,
        )
        stack.callback(_stop, peer)
        _wait_for_socket(ours_sock, ours)
        _wait_for_socket(peer_sock, peer)
        args = [
            "-chardev", f"socket,id=ours,path={ours_sock}",
            "-device", "vhost-user-blk-pci,chardev=ours,num-queues=1",
            "-chardev", f"socket,id=peer,path={peer_sock}",
            "-device", "vhost-user-blk-pci,chardev=peer,num-queues=1",
        ]
        launcher = QemuLauncher.for_image(image, args=args, test="bench-vhost-user-blk", shared_memory=True,
                                          memory_mb=512)
        with launcher:
            # fio's own start-up and the guest's TCG overhead come on top of each run's
            # runtime; a loaded host stretches both, so the bound is generous.
            result = launcher.wait(120.0 + 2 * len(JOBS) * runs * (runtime + 30))
    if "bench.disks" not in result.checks or not result.checks["bench.disks"][0]:
        raise SystemExit(f"bench vhost-user-blk: the guest did not find both disks\n{result.summary()}")
    return parse_results(result.log)


def summarize(results: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Medians and ratios per job, and the headline 4k random read figures."""
    jobs = {}
    for job, sides in results.items():
        ours = statistics.median(sides["ours"]) if sides["ours"] else None
        peer = statistics.median(sides["peer"]) if sides["peer"] else None
        jobs[job] = {
            "metric": "iops" if JOBS[job][1] == "iops" else "MB/s",
            "ours": ours,
            "peer": peer,
            "ratio": (ours / peer) if ours and peer else None,
            "ours_runs": sides["ours"],
            "peer_runs": sides["peer"],
        }
    head = jobs.get("randread-4k-qd32", {"ours": None, "peer": None, "ratio": None})
    return {"ours_iops": head["ours"], "peer_iops": head["peer"], "ratio": head["ratio"], "jobs": jobs}


def main(argv: Sequence[str] = ()) -> int:
    """Run the benchmark; print a table or JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench vhost-user-blk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="runs per job and disk (default 3)")
    parser.add_argument("--runtime", type=int, default=5, help="seconds per fio run (default 5)")
    parser.add_argument("--size-mb", type=int, default=256, help="disk size in MiB (default 256)")
    parser.add_argument("--ours-arg", action="append", default=[], help="extra argument for devmodels vhost-user blk")
    args = parser.parse_args(list(argv))
    with tempfile.TemporaryDirectory(prefix="devmodels-bench-") as tmp:
        summary = summarize(run(args.runs, args.runtime, args.size_mb, Path(tmp), args.ours_arg))
    summary["parameters"] = {"runs": args.runs, "runtime": args.runtime, "size_mb": args.size_mb}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{'job':<18} {'metric':<6} {'devmodels':>10} {'QSD':>10} {'ratio':>6}")
    for job, row in summary["jobs"].items():
        ours = f"{row['ours']:.0f}" if row["ours"] is not None else "-"
        peer = f"{row['peer']:.0f}" if row["peer"] is not None else "-"
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        print(f"{job:<18} {row['metric']:<6} {ours:>10} {peer:>10} {ratio:>6}")
    return 0
