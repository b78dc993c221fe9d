"""The serial-console protocol between a guest test script and the host.

Rules:

1. Every string the guest prints for the host to parse is defined here, and both sides
   (the ``/init`` generator and the launcher's parser) use these names.
2. A check result is one line: ``DEVMODELS-CHECK <name> <PASS|FAIL> [detail]``. Names hold no
   whitespace; the detail runs to the end of the line. The end of the test run is the line
   ``DEVMODELS-DONE``.
3. The console is shared with the kernel, so a marker may be preceded by other output on the
   same line (a printk that raced the shell); the parser searches, it does not anchor at the
   start of the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CHECK_MARKER",
    "DONE_MARKER",
    "TEST_PARAM",
    "CheckResult",
    "parse_check_line",
    "parse_checks",
]

CHECK_MARKER = "DEVMODELS-CHECK"
DONE_MARKER = "DEVMODELS-DONE"
# Kernel command-line parameter that selects an embedded test script by name.
TEST_PARAM = "devmodels.test"

_CHECK_RE = re.compile(re.escape(CHECK_MARKER) + r" (\S+) (PASS|FAIL)(?: (.*))?$")


@dataclass(frozen=True)
class CheckResult:
    """One ``DEVMODELS-CHECK`` line.

    Attributes:
        name: the check's name.
        passed: True for PASS.
        detail: the rest of the line, stripped ("" when absent).
    """

    name: str
    passed: bool
    detail: str


def parse_check_line(line: str) -> CheckResult | None:
    """Return the check a console line reports, or None if it reports none."""
    match = _CHECK_RE.search(line.rstrip("\r\n"))
    if match is None:
        return None
    name, verdict, detail = match.groups()
    return CheckResult(name, verdict == "PASS", (detail or "").strip())


def parse_checks(lines: Iterable[str]) -> dict[str, tuple[bool, str]]:
    """Collect the checks of a console log as ``name -> (passed, detail)``.

    A check reported more than once keeps its first FAIL: a later PASS of the same name never
    hides an earlier failure. Otherwise the last report wins.
    """
    checks: dict[str, tuple[bool, str]] = {}
    for line in lines:
        result = parse_check_line(line)
        if result is None:
            continue
        previous = checks.get(result.name)
        if previous is not None and not previous[0]:
            continue
        checks[result.name] = (result.passed, result.detail)
    return checks
