"""The conformance matrix end to end: real QEMU, real guests, devices served by devmodels.

One test per row of ``devmodels conformance`` (the same cases the README's main job runs).
"""

from __future__ import annotations

import pytest

from harness.conformance import load_cases, run_cases
from harness.qemu.launcher import qemu_available
from tests.prerequisites import need

pytestmark = pytest.mark.guest

_CASES, _BROKEN = load_cases()


def test_every_case_provider_loads() -> None:
    assert not _BROKEN, _BROKEN


@pytest.fixture(scope="module", autouse=True)
def _need_qemu() -> None:
    need(qemu_available())


@pytest.mark.parametrize("case", _CASES, ids=[case.name for case in _CASES])
def test_row_passes(case) -> None:  # type: ignore[no-untyped-def]
    (row,) = run_cases([case], timeout=240)
    assert row.passed, f"{row.error}\n" + "\n".join(f"{k}: {row.details.get(k, '')}" for k, ok in row.checks.items() if not ok)
    assert len(row.checks) > 2
