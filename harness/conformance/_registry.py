"""Where cases come from: one provider function per device, imported on demand.

A provider is ``"module:function"``; the function returns a list of cases. Each device
adds its line here. A provider whose module fails to import yields one failed row rather
than hiding the device (the matrix must show what is missing).

A pattern selects the case names it matches (``fnmatch``); a pattern that matches no name
is also tried as a prefix, so ``--only testdev`` selects ``testdev-proxy``.
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
    "harness.conformance.cases.testdev_irqs:cases",
    "harness.conformance.cases.vhost_user:cases",
    "harness.conformance.cases.vhost_user_restart:cases",
    "harness.conformance.cases.vhost_user_migration:cases",
    "harness.conformance.cases.e1000:cases",
    "harness.conformance.cases.ahci:cases",
    "harness.conformance.cases.e1000_tap:cases",
    "harness.conformance.cases.virtio_pci:cases",
    "harness.conformance.cases.faults_disk:cases",
    "harness.conformance.cases.faults_net:cases",
]


class BrokenProvider(Exception):
    """A provider could not be loaded."""


def load_cases(patterns: Sequence[str] = ()) -> tuple[list[Case], list[tuple[str, str]]]:
    """Every case whose name matches one of ``patterns`` (all when empty).

    Returns:
        (cases, broken) where ``broken`` lists (provider, error) for providers that failed.
    """
    provided_cases: list[Case] = []
    broken: list[tuple[str, str]] = []
    for provider in PROVIDERS:
        module_name, _, function = provider.partition(":")
        try:
            provided = getattr(importlib.import_module(module_name), function)()
        except Exception as exc:  # noqa: BLE001 - reported as a failed row
            broken.append((provider, f"{type(exc).__name__}: {exc}"))
            continue
        provided_cases.extend(provided)
    if not patterns:
        return provided_cases, broken
    names = [case.name for case in provided_cases]
    globs = [p if any(fnmatch.fnmatchcase(n, p) for n in names) else f"{_glob_escape(p)}*" for p in patterns]
    return [case for case in provided_cases if any(fnmatch.fnmatchcase(case.name, g) for g in globs)], broken


def _glob_escape(text: str) -> str:
    """``text`` as an ``fnmatch`` pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
