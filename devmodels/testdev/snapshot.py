"""The test device's snapshot kind (``devmodels.snapshot_file`` rule 3): no backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._errors import UsageError
from .._memory import GuestMemory
from ..snapshot_file import SnapshotKind
from .device import PciTestDevice, PciTestDeviceState

__all__ = ["SNAPSHOT_KIND"]


def _rebuild(state: Any, memory: GuestMemory, backends: Sequence[Any]) -> PciTestDevice:
    if backends:
        raise UsageError(f"a testdev snapshot is rebuilt without backends, got {len(backends)}")
    return PciTestDevice.from_state(state, memory)


SNAPSHOT_KIND = SnapshotKind("testdev", PciTestDeviceState, _rebuild)
