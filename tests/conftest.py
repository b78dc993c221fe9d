"""Fixtures shared by the whole suite: small guest RAM, a machine, and trace isolation.

Also registers the hooks of ``tests.prerequisites``: under ``DEVMODELS_REQUIRE_GUEST=1`` a guest
test that skips, or a test whose host prerequisite (QEMU, root, ...) is missing, fails instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devmodels import GuestMemory, Machine, MemoryRegion
from devmodels import _trace
from tests.prerequisites import pytest_configure, pytest_runtest_makereport, pytest_runtest_setup

__all__ = ["ram", "machine", "pytest_configure", "pytest_runtest_makereport", "pytest_runtest_setup",
           "pytest_collection_modifyitems", "GUEST_TIMEOUT"]

GUEST_TIMEOUT = 600.0
"""pytest-timeout's limit for a ``guest`` test (pyproject's ``timeout`` is for the others).

Measured: the slowest guest test takes 25 s with a warm image cache (an e1000 conformance
row under TCG) and a cold image build 25 s more. The limit sits above the tests' own bounds
on QEMU, so that those fail first with the guest's output: a conformance row waits up to
240 s for its guest, ``test_vhost_user_guest`` boots two guests of up to 240 s each.
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Guest tests without a ``timeout`` mark of their own get ``GUEST_TIMEOUT``."""
    for item in items:
        if item.get_closest_marker("guest") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(GUEST_TIMEOUT))


@pytest.fixture
def ram() -> Iterator[GuestMemory]:
    """1 MiB of bytearray-backed guest RAM at gpa 0."""
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    yield memory
    memory.close()


@pytest.fixture
def machine() -> Iterator[Machine]:
    """An in-process machine with 16 MiB of bytearray RAM."""
    with Machine(ram_size=16 << 20, ram_backing="bytearray") as m:
        yield m


@pytest.fixture(autouse=True)
def _isolate_trace() -> Iterator[None]:
    """Undo any trace patterns a test enabled, keeping those from DEVMODELS_TRACE."""
    saved = list(_trace._patterns)
    yield
    with _trace._lock:
        _trace._patterns[:] = saved
        _trace._refresh()
