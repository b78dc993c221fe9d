"""Where cases come from: one provider function per device, imported on demand.

A provider is ``"module:function"``; the function returns a list of cases. Each device
adds its line here. A provider whose module fails to import yields one failed row rather
than hiding the device (the matrix must show what is missing).
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Sequence

from ._case import Case

__all__ = ["PROVIDERS", "load_cases", "BrokenProvider"]

PROVIDERS: list[str] = [
    "harness.conformance.cases.vfio_kernel:cases",
    "harness.conformance.cases.testdev:cases",
    "harness.conformance.cases.vhost_user:cases",
    "harness.conformance.cases.e1000:cases",
    "harness.conformance.cases.ahci:cases",
    "harness.conformance.cases.e1000_tap:cases",
]


class BrokenProvider(Exception):
    """A provider could not be loaded."""


def load_cases(patterns: Sequence[str] = ()) -> tuple[list[Case], list[tuple[str, str]]]:
    """Every case whose name matches one of ``patterns`` (all when empty).

    Returns:
        (cases, broken) where ``broken`` lists (provider, error) for providers that failed.
    """
    cases: list[Case] = []
    broken: list[tuple[str, str]] = []
    for provider in PROVIDERS:
        module_name, _, function = provider.partition(":")
        try:
            provided = getattr(importlib.import_module(module_name), function)()
        except Exception as exc:  # noqa: BLE001 - reported as a failed row
            broken.append((provider, f"{type(exc).__name__}: {exc}"))
            continue
        for case in provided:
            if not patterns or any(fnmatch.fnmatchcase(case.name, p) for p in patterns):
                cases.append(case)
    return cases, broken
