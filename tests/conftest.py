"""Fixtures shared by the whole suite: small guest RAM, a machine, and trace isolation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devmodels import GuestMemory, Machine, MemoryRegion
from devmodels import _trace


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
