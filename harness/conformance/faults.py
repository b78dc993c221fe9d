"""``devmodels conformance --faults``: the fault rows as driver x fault -> expected / observed.

The rows are the conformance cases that are ``FaultCase``s (``cases/faults_*.py``,
registered like every other case); ``--only`` selects among them by case name. Each row
prints what a correct Linux driver does, what this one did, and the verdict on the driver
("as expected" or "DEVIATES: ..."); the row's PASS/FAIL says whether the fault was applied
and reported as the real part reports it and the checks the row requires held
(``cases/_faults`` rules 4–5). Exit status 1 when a row failed or none ran.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from ._case import Row
from ._registry import load_cases
from ._runner import format_matrix, run_cases
from .cases._faults import FaultCase

__all__ = ["run", "fault_cases", "format_fault_matrix"]


def fault_cases(patterns: Sequence[str] = ()) -> tuple[list[FaultCase], list[tuple[str, str]]]:
    """The fault rows whose names match ``patterns`` (all with none), and broken providers."""
    cases, broken = load_cases(patterns)
    return [case for case in cases if isinstance(case, FaultCase)], broken


def format_fault_matrix(pairs: Sequence[tuple[FaultCase, Row]], width: int = 110) -> str:
    """Driver x fault -> expected / observed, one block per row, then the failures."""
    lines = ["driver x fault -> expected / observed", ""]
    for case, row in pairs:
        result = "PASS" if row.passed else "FAIL"
        lines.append(f"{case.driver} x {case.fault}  [{case.path}]  {result}, driver {case.verdict(row)}, "
                     f"{row.seconds:.1f} s")
        for label, text in (("expected", case.expected), ("observed", case.observe(row))):
            lines += textwrap.wrap(text, width, initial_indent=f"  {label}: ", subsequent_indent=" " * 12)
        lines.append("")
    failed = [row for _, row in pairs if not row.passed]
    if failed:
        lines.append(format_matrix(failed))
    return "\n".join(lines).rstrip() + "\n"


def _as_json(case: FaultCase, row: Row) -> dict[str, object]:
    return {**row.as_json(), **case.describe(), "observed": case.observe(row), "verdict": case.verdict(row),
            "observations": {name: {"seen": seen, "detail": text} for name, (seen, text) in case.observations.items()}}


def run(patterns: Sequence[str], *, as_json: bool = False, listing: bool = False, serial_dir: Path | None = None,
        timeout: float = 240.0) -> int:
    """Run the fault rows and print the matrix; the exit status (module docstring)."""
    cases, broken = fault_cases(patterns)
    if listing:
        for case in cases:
            print(f"{case.name:<40} {case.driver:<11} {case.fault}")
        for provider, error in broken:
            print(f"(provider {provider} failed: {error})")
        return 0
    rows = run_cases(cases, timeout=timeout, progress=lambda line: print(line, file=sys.stderr, flush=True),
                     serial_dir=serial_dir)
    pairs = list(zip(cases, rows, strict=True))
    if as_json:
        print(json.dumps([_as_json(case, row) for case, row in pairs], indent=2))
    else:
        print(format_fault_matrix(pairs), end="")
    for provider, error in broken:
        print(f"provider {provider} failed: {error}", file=sys.stderr)
    return 0 if rows and all(row.passed for row in rows) and not broken else 1
