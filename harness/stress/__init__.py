"""The stress mode of the conformance suite (``devmodels conformance --stress``).

Every disk and NIC path of ours (``_paths.PATHS``: vhost-user, ``x-pci-proxy-dev``,
vfio-user) runs one guest at a time under load for ``duration`` seconds while two CPU hogs
keep the host busy: for a disk, fio ``randrw`` 4 KiB at queue depth 32 with every write
verified (``verify=crc32c``); for a NIC, a TCP stream out, TCP streams in and a ping flood
against a peer in a network namespace, every byte checked. Each path runs ``repeat``
times. A run fails on a hang (a bound on the guest's silence: ``_watch``), a verify or data
error, our server dying or being replaced, QEMU leaving our vhost-user device, or a driver
message saying the guest gave up on the device (``_results`` rule 2).

Rules:

1. ``run_stress`` builds the guest image once (``_guest``), then runs the paths in order,
   each ``repeat`` times (``_runner.run_once``), and adds each path's runs up
   (``_results.summarize``). A path whose prerequisites are missing (QEMU 11.1, root for
   the namespaces) fails its runs with the reason; nothing is skipped in silence.
2. The output is a table (``_report.format_table``) or JSON (``_report.as_json``); the
   exit status is 0 only when every path passed every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ._guest import build_stress_image
from ._paths import PATHS, StressPath, select_paths
from ._report import as_json, format_table
from ._results import PathSummary, RunResult, summarize
from ._runner import Limits, run_once

__all__ = ["run_stress", "select_paths", "PATHS", "StressPath", "Limits", "PathSummary", "RunResult", "format_table",
           "as_json"]


def run_stress(paths: Sequence[StressPath], limits: Limits, repeat: int, *, keep_dir: Path | None = None,
               progress: Callable[[str], None] = lambda line: None) -> tuple[list[PathSummary], list[RunResult]]:
    """Run every path ``repeat`` times (rule 1); the summaries in path order and every run."""
    image = build_stress_image(progress=None)
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
    summaries: list[PathSummary] = []
    runs: list[RunResult] = []
    for path in paths:
        reason = path.qemu.unavailable()
        mine: list[RunResult] = []
        for run in range(1, repeat + 1):
            began = time.monotonic()
            progress(f"stress: {path.name} run {run}/{repeat} ({path.device}, {path.attachment}, "
                     f"QEMU {path.qemu.label}, smp {path.cpus}) ...")
            if reason is not None:
                result = RunResult(path.name, run, problems=[f"not run: {reason}"])
                result.judge()
            else:
                result = run_once(path, image, run, limits, keep_dir=keep_dir, progress=progress)
            mine.append(result)
            verdict = "PASS" if result.passed else "FAIL: " + "; ".join(result.problems)
            progress(f"stress: {path.name} run {run}/{repeat}: {verdict} ({time.monotonic() - began:.0f} s)")
        runs += mine
        version = path.qemu.version() if reason is None else path.qemu.label
        summaries.append(summarize(path.name, path.kind, path.attachment, version, str(path.cpus), mine))
    return summaries, runs
