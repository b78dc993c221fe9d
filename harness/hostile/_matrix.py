"""Printing the hostile matrix: scenario x device x path, our columns beside QEMU's.

One table per device class: a row per scenario, a column per path (ours first, then
QEMU's own device as the reference). Below the tables, the detail of every cell that is
not PASS, and the known failures (``KNOWN``) next to their issue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._protocol import Outcome
from ._runner import Column

__all__ = ["format_matrix", "as_json", "KNOWN", "our_failures"]

# (device, path, scenario) -> why it fails today. Listed so the matrix says so; it does not
# make the cell pass: the CI test stays red until the bug is fixed.
KNOWN: Mapping[tuple[str, str, str], str] = {}


def our_failures(columns: Sequence[Column]) -> list[tuple[Column, str]]:
    """(column, scenario) of every cell of ours that is not PASS."""
    return [(c, s.name) for c in columns if c.path.ours for s in c.scenarios if c.cell(s.name).outcome is not Outcome.PASS]


def format_matrix(columns: Sequence[Column]) -> str:
    """The tables and the details of every cell that is not PASS."""
    lines: list[str] = []
    devices = list(dict.fromkeys(c.device for c in columns))
    for device in devices:
        cols = sorted((c for c in columns if c.device == device), key=lambda c: not c.path.ours)
        names = list(dict.fromkeys(s.name for c in cols for s in c.scenarios))
        headers = [device, *(c.path.label for c in cols)]
        rows = [[name, *(c.cell(name).outcome.value for c in cols)] for name in names]
        rows.append(["(boots, seconds)", *(f"{c.boots}, {c.seconds:.0f} s" for c in cols)])
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.append("")
    details = []
    for c in columns:
        if c.note:
            details.append(f"  {c.device} / {c.path.label}: {c.note}")
        for s in c.scenarios:
            cell = c.cell(s.name)
            if cell.outcome is Outcome.PASS or (cell.outcome in (Outcome.NOT_RUN, Outcome.SKIPPED)
                                                and cell.detail == c.note):
                continue
            known = KNOWN.get((c.device, c.path.name, s.name))
            note = f" [known: {known}]" if known else ""
            details.append(f"  {c.device} / {c.path.label} / {s.name}: {cell.outcome.value}{note}: {cell.detail}")
    if details:
        lines.append("cells that are not PASS:")
        lines += details
    return "\n".join(lines)


def as_json(columns: Sequence[Column]) -> list[dict[str, object]]:
    """One object per cell: device, path, ours, qemu, scenario, what, outcome, detail."""
    return [
        {
            "device": c.device,
            "path": c.path.name,
            "ours": c.path.ours,
            "qemu": c.path.qemu.label,
            "scenario": s.name,
            "what": s.what,
            "outcome": c.cell(s.name).outcome.value,
            "detail": c.cell(s.name).detail,
            "known": KNOWN.get((c.device, c.path.name, s.name), ""),
        }
        for c in columns
        for s in c.scenarios
    ]
