"""The stress mode's output: one table row per path, the failed runs spelled out, or JSON.

Rules:

1. The table has, per path: the QEMU and the guest's vCPUs, runs and runs passed, hangs,
   verify errors (fio) and data errors (TCP streams, checksums), bytes moved, the rate
   (MB/s and IOPS for a disk; the TCP streams' MB/s out and in for a NIC), the ping flood's
   loss, server deaths (or restarts), vhost-user fallbacks, and the time the runs took.
2. Below it, every run that failed: its problems, then what was collected to diagnose it.
3. ``as_json`` holds the same: ``paths`` (one summary each), ``runs`` (every run), the
   ``parameters`` and ``total_seconds``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._results import PathSummary, RunResult

__all__ = ["format_table", "as_json"]


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.0f}"


def _row(s: PathSummary) -> tuple[str, ...]:
    if s.kind == "disk":
        rate = f"{s.mb_per_s:.1f} MB/s {s.iops:.0f} IOPS"
    else:
        rate = f"TCP {s.tcp_tx_mb_per_s:.2f}/{s.tcp_rx_mb_per_s:.2f} MB/s"
    loss = "-" if s.ping_loss is None else f"{s.ping_loss:.2f}% of {s.ping_sent}"
    return (s.path, f"{s.qemu} smp {s.guest_cpus}", f"{s.passed_runs}/{s.runs}", str(s.hangs), str(s.verify_errors),
            str(s.data_errors), _mib(s.bytes_moved), rate, loss, str(s.server_deaths), str(s.fallbacks),
            f"{s.seconds:.0f}s", "PASS" if s.passed else "FAIL")


_HEADERS = ("path", "guest", "passed", "hangs", "verify", "data", "MiB moved", "rate (disk; NIC out/in)",
            "ping loss", "srv died", "fallback", "time", "result")


def format_table(summaries: Sequence[PathSummary], runs: Sequence[RunResult], total_seconds: float) -> str:
    """Rules 1 and 2."""
    table = [_row(s) for s in summaries]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(_HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(_HEADERS, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)) for t in table]
    lines.append(f"{len(summaries)} path(s), {len(runs)} run(s), {total_seconds:.0f} s in all")
    for run in runs:
        if run.passed:
            continue
        lines.append(f"{run.path} run {run.run}: FAIL")
        lines += [f"    {problem}" for problem in run.problems]
        lines += [f"    . {note}" for note in run.diagnosis]
    return "\n".join(lines)


def as_json(summaries: Sequence[PathSummary], runs: Sequence[RunResult], parameters: Mapping[str, object],
            total_seconds: float) -> dict[str, object]:
    """Rule 3."""
    return {
        "passed": bool(summaries) and all(s.passed for s in summaries),
        "paths": [s.as_json() for s in summaries],
        "runs": [r.as_json() for r in runs],
        "parameters": dict(parameters),
        "total_seconds": round(total_seconds, 1),
    }
