"""The AHCI controller's snapshot kind (``devmodels.snapshot_file`` rule 3): one medium per
port, in port order (None: an empty tray or port)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._memory import GuestMemory
from ..snapshot_file import SnapshotKind
from .hba import AhciController
from .state import AhciState

__all__ = ["SNAPSHOT_KIND"]


def _rebuild(state: Any, memory: GuestMemory, backends: Sequence[Any]) -> AhciController:
    return AhciController.from_state(state, memory, backends)


SNAPSHOT_KIND = SnapshotKind("ahci", AhciState, _rebuild, "one medium per port, in port order (None: empty tray or port)")
