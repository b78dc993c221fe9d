"""Host prerequisites of the tests that boot guests or need QEMU, root, fio: skip, or fail in CI.

Rules:

1. A test or fixture whose host prerequisite is missing (QEMU, QEMU 11.1, root, the guest
   image, fio, ...) calls ``missing(reason)``, or ``need(reason)`` with a reason that may
   be None (as ``qemu_available()`` and ``QemuBinary.unavailable()`` return it). It skips
   with the reason, except under ``DEVMODELS_REQUIRE_GUEST=1`` (CI's first pass), where it
   fails and names the reason: CI must not go green with guest tests that never ran.
2. The same rule covers every skip of a ``guest``-marked test however it was raised
   (``pytest.skip`` in a fixture, a ``skipif`` mark, ``importorskip``): the hooks below,
   registered by ``tests/conftest.py``, turn it into a failure. A new guest test is
   covered without calling anything. Expected failures (``xfail``) stay as they are.
3. A test that is not guest-marked but needs such a prerequisite says so with
   ``prerequisite(reason_or_None)`` (a mark) instead of ``skipif``.
4. Guest modules skip inside fixtures or tests, never at module level: a module-level skip
   hides the module's marks from the hooks.
5. Under the switch the per-test timeout must be there too (``pytest-timeout``, installed by
   ``.ci/install``): without it a looping test would hang CI instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import NoReturn

import pytest

__all__ = ["ENV", "required", "missing", "need", "prerequisite", "pytest_configure", "pytest_runtest_setup",
           "pytest_runtest_makereport"]

ENV = "DEVMODELS_REQUIRE_GUEST"


def required() -> bool:
    """Whether missing prerequisites fail instead of skipping (``DEVMODELS_REQUIRE_GUEST=1``)."""
    return os.environ.get(ENV, "").strip() not in ("", "0")


def _failure(reason: str) -> str:
    return f"{ENV}=1 and a required prerequisite is missing: {reason}"


def missing(reason: str) -> NoReturn:
    """Skip with ``reason`` (rule 1); under ``DEVMODELS_REQUIRE_GUEST=1`` fail with it."""
    if required():
        pytest.fail(_failure(reason), pytrace=False)
    pytest.skip(reason)


def need(reason: str | None) -> None:
    """``missing(reason)`` unless ``reason`` is None (the prerequisite is there)."""
    if reason is not None:
        missing(reason)


def prerequisite(reason: str | None) -> pytest.MarkDecorator:
    """Mark a test that needs a host prerequisite (rule 3); ``reason`` None means it is there."""
    return pytest.mark.prerequisite(reason)


# -- the hooks (rule 2), registered by tests/conftest.py ---------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Rule 5."""
    if required() and not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError(f"{ENV}=1 needs pytest-timeout (pip install pytest-timeout; .ci/install does)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply ``prerequisite`` marks (rule 3)."""
    for mark in item.iter_markers("prerequisite"):
        need(mark.args[0] if mark.args else mark.kwargs.get("reason"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    """A skipped ``guest`` test is a failure under ``DEVMODELS_REQUIRE_GUEST=1`` (rule 2)."""
    report = yield
    if report.skipped and required() and item.get_closest_marker("guest") is not None \
            and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"guest test {item.nodeid} skipped in {report.when}: " + _failure(_skip_reason(report))
    return report


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
        return text.removeprefix("Skipped: ")
    return str(longrepr)
