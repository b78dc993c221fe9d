"""Boot one guest per case and turn what it reports into matrix rows.

Rules:

1. One image serves the whole run: every case's script is embedded as a named test and
   every case's extras are added, so the image is built (or found in the cache) once.
2. Each case boots its own guest (``devmodels.test=<case.name>``): a broken device cannot
   spoil another row. Its host side lives in an ``ExitStack`` closed after the boot.
3. A row passes when the guest printed ``DEVMODELS-DONE``, every guest and host check
   passed, and there was at least one check besides ``init.modules``: a case that reports
   nothing has not shown anything.
4. Every check in the case's ``required_checks`` must have been reported (``score_row``):
   each missing one is added to the row as a failed check saying so, so the row fails and
   the matrix names it. A case that declares no required checks fails as well.
5. A case that must act while its guest runs (kill and restart its device server, migrate
   the guest to a second QEMU) defines ``run_guest(launcher, timeout) -> BootResult``: it
   gets the started launcher instead of the runner's plain ``wait`` and returns the result
   the row is scored on (the runner still stops the launcher afterwards).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from ._case import Case, Row

__all__ = ["run_cases", "build_case_image", "format_matrix", "score_row", "NOT_REPORTED"]

NOT_REPORTED = "required check not reported"


def build_case_image(cases: Sequence[Case], progress: bool | None = None):  # type: ignore[no-untyped-def]
    """The guest image holding every case's script and extras (rule 1)."""
    from ..guest import ImageBuilder

    builder = ImageBuilder()
    for case in cases:
        if hasattr(case, "own_image"):
            continue
        builder.add_test(case.name, case.guest_script)
        case.image_extras(builder)
    return builder.build(progress)


def run_cases(
    cases: Sequence[Case],
    *,
    timeout: float = 180.0,
    progress: Callable[[str], None] = lambda line: None,
    serial_dir: Path | None = None,
) -> list[Row]:
    """Run every case (rules 2–3) and return the rows in order."""
    from ..qemu.launcher import QemuLauncher

    shared = [case for case in cases if not hasattr(case, "own_image")]
    image = build_case_image(shared, progress=None) if shared else None
    if serial_dir is not None:
        serial_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        progress(f"conformance: {case.name} ({case.driver} / {case.device} / {case.path}) ...")
        start = time.monotonic()
        row = Row(case.driver, case.device, case.path, False, {})
        try:
            with contextlib.ExitStack() as stack:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"devmodels-{case.name}-")))
                own_image = getattr(case, "own_image", None)
                case_image = own_image() if own_image is not None else image
                assert case_image is not None
                attachment = case.start(stack, workdir)
                launcher = QemuLauncher.for_image(
                    case_image,
                    memory_mb=attachment.memory_mb,
                    args=attachment.qemu_args,
                    append=attachment.append,
                    test=case.name,
                    shared_memory=attachment.shared_memory,
                    pass_fds=attachment.pass_fds,
                    qemu=attachment.qemu,
                    serial_log=(serial_dir / f"{case.name}.log") if serial_dir else None,
                )
                run_guest = getattr(case, "run_guest", None)
                with launcher:
                    result = run_guest(launcher, timeout) if run_guest is not None else launcher.wait(timeout)
                for name, (ok, detail) in result.checks.items():
                    row.checks[name] = ok
                    if detail:
                        row.details[name] = detail
                for name, (ok, detail) in case.host_checks(result).items():
                    row.checks[name] = ok
                    if detail:
                        row.details[name] = detail
                if not result.done:
                    row.error = "guest did not finish" + (" (timed out)" if result.timed_out else "")
                    row.details["serial.tail"] = "\n".join(result.log.splitlines()[-15:])
        except Exception as exc:  # noqa: BLE001 - a broken case is a failed row, not a crash
            row.error = f"{type(exc).__name__}: {exc}"
            row.details["traceback"] = "".join(traceback.format_exception(exc)[-4:])
        row.seconds = time.monotonic() - start
        score_row(row, getattr(case, "required_checks", frozenset()))
        rows.append(row)
        progress(f"conformance: {case.name}: {'PASS' if row.passed else 'FAIL'} in {row.seconds:.1f} s")
    return rows


def score_row(row: Row, required: Collection[str]) -> None:
    """Decide ``row.passed`` (rules 3 and 4), adding each required check not reported as failed."""
    if not required and not row.error:
        row.error = "the case declares no required checks (Case.required_checks)"
    missing = sorted(set(required) - set(row.checks))
    for name in missing:
        row.checks[name] = False
        row.details[name] = NOT_REPORTED
    if missing and not row.error:
        row.error = f"{len(missing)} required check(s) not reported: {', '.join(missing)}"
    meaningful = [name for name in row.checks if name != "init.modules"]
    row.passed = not row.error and bool(meaningful) and all(row.checks.values())


def format_matrix(rows: Sequence[Row]) -> str:
    """The human-readable matrix."""
    headers = ("driver", "device", "path", "result", "checks", "time")
    table = [
        (
            r.driver,
            r.device,
            r.path,
            "PASS" if r.passed else "FAIL",
            f"{sum(r.checks.values())}/{len(r.checks)}",
            f"{r.seconds:.1f}s",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)) for t in table]
    for r in rows:
        failed = [name for name, ok in r.checks.items() if not ok]
        if r.error or failed:
            lines.append(f"{r.driver}/{r.device}/{r.path}: {r.error or ''} failed: {', '.join(failed) or '-'}")
            for name in failed:
                if name in r.details:
                    lines.append(f"    {name}: {r.details[name]}")
            if "serial.tail" in r.details:
                lines.append("    serial tail:\n      " + r.details["serial.tail"].replace("\n", "\n      "))
    return "\n".join(lines)
