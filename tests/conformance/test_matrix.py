"""The conformance matrix end to end: real QEMU, real guest, devices served by devmodels."""

from __future__ import annotations

import pytest

from devmodels.conformance import load_cases, run_cases
from devmodels.qemu.launcher import qemu_available

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module", autouse=True)
def _need_qemu() -> None:
    reason = qemu_available()
    if reason is not None:
        pytest.skip(reason)


def test_testdev_row_passes_through_the_proxy() -> None:
    cases, broken = load_cases(["testdev-proxy"])
    assert not broken
    (row,) = run_cases(cases, timeout=180)
    assert row.path == "x-pci-proxy-dev"
    assert row.passed, row
    assert row.checks["testdev.dma_copy"]
    assert row.checks["testdev.bar0_id"]
