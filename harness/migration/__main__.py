"""``python3 -m harness.migration``: run the vfio-user migration scenarios and print the downtime.

Usage::

    python3 -m harness.migration [--device testdev|e1000|ahci ...] [--runs N]

Each run starts two ``devmodels vfio-user`` servers, runs the device's scenario
(``harness.migration.scenarios``) and prints its downtime line; the end prints the median
total downtime per device. Exit 1 if a scenario's check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from devmodels import DevmodelsError

from .scenarios import SCENARIOS, run


def main(argv: Sequence[str] | None = None) -> int:
    """Run; 0 when every scenario passed."""
    parser = argparse.ArgumentParser(prog="python3 -m harness.migration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", action="append", choices=sorted(SCENARIOS), help="default: all")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    medians = {}
    for device in args.device or list(SCENARIOS):
        totals = []
        for number in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="devmodels-migration-") as workdir:
                try:
                    result = run(device, Path(workdir))
                except DevmodelsError as exc:
                    print(f"{device} run {number + 1}: FAILED: {exc}", flush=True)
                    return 1
            totals.append(result.downtime.total)
            print(f"{device} run {number + 1}: {result.downtime.line()}; {len(result.checks)} checks passed", flush=True)
        medians[device] = statistics.median(totals)
    for device, median in medians.items():
        print(f"{device}: median downtime {median * 1000:.2f} ms over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
