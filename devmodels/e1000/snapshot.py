"""The e1000's snapshot kind (``devmodels.snapshot_file`` rule 3): zero or one network backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._memory import GuestMemory
from ..snapshot_file import SnapshotKind, one_backend
from .device import E1000
from .state import E1000State

__all__ = ["SNAPSHOT_KIND"]


def _rebuild(state: Any, memory: GuestMemory, backends: Sequence[Any]) -> E1000:
    return E1000.from_state(state, memory, one_backend("e1000", backends, required=False))


SNAPSHOT_KIND = SnapshotKind("e1000", E1000State, _rebuild, "zero or one network backend")
