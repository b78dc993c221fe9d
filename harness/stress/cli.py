"""``devmodels conformance --stress``: every disk and NIC path under load, repeated; the table.

Called by ``harness.conformance.cli`` with its ``--only``, ``--json``, ``--list`` and
``--serial-dir`` (each guest's console and server log are kept there) and the stress
options ``--duration`` and ``--repeat``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._paths import select_paths
from ._runner import Limits

__all__ = ["run"]


def run(patterns: Sequence[str], *, duration: int, repeat: int, as_json: bool = False, listing: bool = False,
        serial_dir: Path | None = None) -> int:
    """Run the stress mode; 0 when every selected path passed every run, else 1."""
    from . import as_json as to_json
    from . import format_table, run_stress
    from ..qemu.launcher import qemu_available

    paths = select_paths(list(patterns))
    if listing:
        for path in paths:
            print(f"{path.name:<36} {path.kind:<5} {path.device:<48} {path.attachment} (QEMU {path.qemu.label}, "
                  f"smp {path.cpus})")
        return 0
    if not paths:
        print(f"devmodels conformance --stress: no path matches {' '.join(patterns)}", file=sys.stderr)
        return 1
    if duration <= 0 or repeat <= 0:
        print("devmodels conformance --stress: --duration and --repeat must be positive", file=sys.stderr)
        return 2
    reason = qemu_available()
    if reason is None and os.geteuid() != 0:
        reason = "the stress mode needs root (network namespaces, TAP devices)"
    if reason is not None:
        print(f"devmodels conformance --stress: {reason}", file=sys.stderr)
        return 1
    limits = Limits(duration=duration)
    began = time.monotonic()
    summaries, runs = run_stress(paths, limits, repeat, keep_dir=serial_dir,
                                 progress=lambda line: print(line, file=sys.stderr, flush=True))
    total = time.monotonic() - began
    if as_json:
        parameters = {"duration": duration, "repeat": repeat, "silence": limits.silence, "hogs": limits.hogs,
                      "paths": [p.name for p in paths]}
        print(json.dumps(to_json(summaries, runs, parameters, total), indent=2))
    else:
        print(format_table(summaries, runs, total))
    return 0 if summaries and all(s.passed for s in summaries) else 1
