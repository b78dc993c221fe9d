"""``devmodels conformance``: boot guests whose devices devmodels serves; print the matrix."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ._case import Row
from ._registry import load_cases
from ._runner import format_matrix, run_cases

__all__ = ["main"]


def main(argv: Sequence[str] = ()) -> int:
    """Run the matrix; exit status 1 when any row fails (or none ran), 0 otherwise."""
    parser = argparse.ArgumentParser(prog="devmodels conformance", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN", help="case names (fnmatch)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per guest")
    parser.add_argument("--serial-dir", type=Path, default=None, help="keep each guest's console log here")
    parser.add_argument("--hostile", action="store_true",
                        help="the hostile-guest mode: abuse scenarios x device x path, ours beside QEMU's own devices "
                             "(--only matches DEVICE/PATH there)")
    parser.add_argument("--no-reference", action="store_true", help="with --hostile: leave out QEMU's own devices")
    parser.add_argument("--scenario", action="append", default=[], metavar="PATTERN",
                        help="with --hostile: only these scenarios (fnmatch)")
    parser.add_argument("--stress", action="store_true",
                        help="the stress mode: every disk and NIC path under load (fio randrw verified; TCP streams "
                             "and a ping flood) beside two CPU hogs, repeated (--only matches path names there)")
    parser.add_argument("--duration", type=int, default=60, metavar="S", help="with --stress: seconds of load per run")
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="with --stress: runs per path")
    parser.add_argument("--faults", action="store_true",
                        help="the fault rows: driver x fault -> expected / observed (docs/faults.md; --only matches "
                             "case names)")
    args = parser.parse_args(list(argv))
    if args.faults:
        from .faults import run as run_faults

        return run_faults(args.only, as_json=args.json, listing=args.list, serial_dir=args.serial_dir,
                          timeout=args.timeout)
    if args.stress:
        from ..stress.cli import run as run_stress

        return run_stress(args.only, duration=args.duration, repeat=args.repeat, as_json=args.json,
                          listing=args.list, serial_dir=args.serial_dir)
    from ..qemu.launcher import qemu_available

    if args.hostile:
        from ..hostile.cli import run

        return run(args.only, reference=not args.no_reference, scenarios=args.scenario, as_json=args.json,
                   listing=args.list, serial_dir=args.serial_dir)

    cases, broken = load_cases(args.only)
    if args.list:
        for case in cases:
            print(f"{case.name:<28} {case.driver:<12} {case.device:<22} {case.path}")
        for provider, error in broken:
            print(f"(provider {provider} failed: {error})")
        return 0
    reason = qemu_available()
    if reason is not None:
        print(f"devmodels conformance: {reason}", file=sys.stderr)
        return 1
    rows = run_cases(cases, timeout=args.timeout, progress=lambda line: print(line, file=sys.stderr, flush=True),
                     serial_dir=args.serial_dir)
    rows += [Row("?", provider, "?", False, {}, error=error) for provider, error in broken]
    if args.json:
        print(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        print(format_matrix(rows))
    return 0 if rows and all(row.passed for row in rows) else 1
