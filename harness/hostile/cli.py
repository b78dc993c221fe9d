"""``devmodels conformance --hostile``: run the hostile guest and print the matrix.

Exit status 1 when any cell of ours is not PASS (QEMU's column is information only), or
when QEMU or the guest program cannot be built or run; 0 otherwise.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from devmodels import HostError

__all__ = ["run"]


def run(patterns: Sequence[str], *, reference: bool = True, scenarios: Sequence[str] = (), as_json: bool = False,
        listing: bool = False, serial_dir: Path | None = None) -> int:
    """The ``--hostile`` mode of ``devmodels conformance``."""
    from ..qemu.launcher import qemu_available
    from . import as_json as cells_json
    from . import format_matrix, our_failures, run_hostile, select_targets

    targets = select_targets(patterns, reference=reference)
    if listing:
        for device, path in targets:
            print(f"{device + '/' + path.name:<28} {path.label}")
        return 0
    if not targets:
        print("devmodels conformance --hostile: no device/path matches", file=sys.stderr)
        return 1
    reason = qemu_available()
    if reason is not None:
        print(f"devmodels conformance --hostile: {reason}", file=sys.stderr)
        return 1
    try:
        columns = run_hostile(targets, scenarios=scenarios, serial_dir=serial_dir,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    except HostError as exc:
        print(f"devmodels conformance --hostile: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(cells_json(columns), indent=2))
    else:
        print(format_matrix(columns))
    return 1 if our_failures(columns) else 0
