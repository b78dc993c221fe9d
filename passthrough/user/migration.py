"""vfio-user migration (``DEVICE_FEATURE`` + ``MIG_DATA_READ``/``WRITE``) through the
devices' snapshot contract (``device.state()`` / ``device.restore(state)``).

The device state travels as one JSON document: ``{"format", "version", "device",
"state": to_dict(device.state())}``; the destination decodes it with ``from_dict`` into
the class its own device's ``state()`` returns and hands it to ``restore``, which
validates everything before applying anything (``devmodels._state`` rule 2).

Rules (vfio-user.rst "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE"):

1. The state machine is the transition table ``ARCS`` of direct arcs; every other
   requested change is the shortest path through ``STOP`` (no saving state is ever an
   interior state of a path). PRE_COPY and P2P states are not offered; ``ERROR`` cannot be
   requested. A failed arc leaves the machine in ``ERROR``, which only
   ``VFIO_USER_DEVICE_RESET`` leaves (back to ``RUNNING``).
2. ``MIG_DATA_READ`` is valid only in ``STOP_COPY``, ``MIG_DATA_WRITE`` only in
   ``RESUMING``. Incoming migration data is bounded by ``max_bytes``.
3. ``RESUMING -> STOP`` restores the device; data that is not a devmodels migration
   document for this device class, or that ``restore`` rejects, fails the arc.
4. The machine only sequences state capture; it never blocks device accesses (a sans-IO
   device changes only when accessed, so a VMM that stops accessing it has stopped it).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from typing import Any

from devmodels import DevmodelsError, SnapshotError, from_dict, to_dict
from devmodels.pci import PciFunction

from ..defs import (
    VFIO_DEVICE_STATE_ERROR,
    VFIO_DEVICE_STATE_RESUMING,
    VFIO_DEVICE_STATE_RUNNING,
    VFIO_DEVICE_STATE_STOP,
    VFIO_DEVICE_STATE_STOP_COPY,
)
from ..errors import VfioUserReject

__all__ = ["FORMAT", "ARCS", "MigrationStateMachine", "encode_state", "decode_state"]

FORMAT = "devmodels-vfio-user-migration"
_VERSION = 1

RUNNING, STOP, STOP_COPY, RESUMING, ERROR = (
    VFIO_DEVICE_STATE_RUNNING,
    VFIO_DEVICE_STATE_STOP,
    VFIO_DEVICE_STATE_STOP_COPY,
    VFIO_DEVICE_STATE_RESUMING,
    VFIO_DEVICE_STATE_ERROR,
)
_NAMES = {RUNNING: "RUNNING", STOP: "STOP", STOP_COPY: "STOP_COPY", RESUMING: "RESUMING", ERROR: "ERROR"}

ARCS: dict[tuple[int, int], str] = {
    (RUNNING, STOP): "_stop",
    (STOP, RUNNING): "_run",
    (STOP, STOP_COPY): "_begin_save",
    (STOP_COPY, STOP): "_end_save",
    (STOP, RESUMING): "_begin_resume",
    (RESUMING, STOP): "_finish_resume",
}
"""(from, to) -> the action of that direct arc (vfio-user.rst "Direct State Transitions")."""


def supports_snapshots(function: PciFunction) -> bool:
    """Whether ``function`` follows the snapshot contract."""
    return callable(getattr(function, "state", None)) and callable(getattr(function, "restore", None))


def encode_state(function: PciFunction) -> bytes:
    """The migration document of ``function``'s current state."""
    document = {"format": FORMAT, "version": _VERSION, "device": type(function).__name__,
                "state": to_dict(function.state())}  # type: ignore[attr-defined]
    return json.dumps(document, separators=(",", ":")).encode()


def decode_state(function: PciFunction, data: bytes) -> Any:
    """Decode a migration document into a state object for ``function`` (not applied).

    Raises:
        SnapshotError: the document is malformed or for another device class.
    """
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SnapshotError("migration", f"not a JSON document: {type(exc).__name__}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SnapshotError("migration.format", "not a devmodels vfio-user migration document")
    if document.get("version") != _VERSION:
        raise SnapshotError("migration.version", f"version {document.get('version')!r} is not {_VERSION}")
    if document.get("device") != type(function).__name__:
        raise SnapshotError("migration.device", f"state of {document.get('device')!r}, not {type(function).__name__}")
    kind = type(function.state())  # type: ignore[attr-defined]
    return from_dict(kind, document.get("state"), "state")


class MigrationStateMachine:
    """The device migration FSM of one served function (rules 1–4).

    Args:
        function: the served function (needs ``state``/``restore`` to migrate).
        after_restore: called after a successful restore (the server re-programs IRQs).
        max_bytes: the largest migration document accepted while resuming.
    """

    def __init__(self, function: PciFunction, after_restore: Callable[[], None], max_bytes: int = 16 << 20) -> None:
        self.function = function
        self.after_restore = after_restore
        self.max_bytes = max_bytes
        self.state = RUNNING
        self._outgoing = b""
        self._sent = 0
        self._incoming = bytearray()

    @property
    def supported(self) -> bool:
        """Whether the function can migrate."""
        return supports_snapshots(self.function)

    def set_state(self, target: int) -> None:
        """Move to ``target`` along direct arcs (rule 1).

        Raises:
            VfioUserReject: the target is not offered, or an arc failed (now ``ERROR``).
        """
        if target not in _NAMES or target == ERROR:
            raise VfioUserReject(errno.EINVAL, f"migration state {target} cannot be requested")
        if self.state == ERROR:
            raise VfioUserReject(errno.EINVAL, "device is in the ERROR state; reset it")
        if target == self.state:
            return
        path = [target] if (self.state, target) in ARCS else [STOP, target]
        for step in path:
            action = getattr(self, ARCS[(self.state, step)])
            try:
                action()
            except VfioUserReject:
                self.state = ERROR
                raise
            self.state = step

    def abandon(self) -> None:
        """The client went away: a data session in progress ends without effect.

        ``STOP_COPY`` and ``RESUMING`` fall back to ``STOP`` (outgoing data dropped,
        incoming data discarded unapplied); every other state is kept, as the device's.
        """
        if self.state in (STOP_COPY, RESUMING):
            self.state = STOP
        self._outgoing, self._sent = b"", 0
        self._incoming = bytearray()

    def reset(self) -> None:
        """``DEVICE_RESET`` leaves any state (``ERROR`` included) for ``RUNNING``."""
        self.state = RUNNING
        self._outgoing, self._sent = b"", 0
        self._incoming = bytearray()

    # -- arcs -----------------------------------------------------------------------------

    def _stop(self) -> None:
        pass  # rule 4

    def _run(self) -> None:
        pass

    def _begin_save(self) -> None:
        if not self.supported:
            raise VfioUserReject(errno.ENOTSUP, "the device has no snapshot support")
        self._outgoing, self._sent = encode_state(self.function), 0

    def _end_save(self) -> None:
        self._outgoing, self._sent = b"", 0

    def _begin_resume(self) -> None:
        if not self.supported:
            raise VfioUserReject(errno.ENOTSUP, "the device has no snapshot support")
        self._incoming = bytearray()

    def _finish_resume(self) -> None:
        data, self._incoming = bytes(self._incoming), bytearray()
        try:
            state = decode_state(self.function, data)
            self.function.restore(state)  # type: ignore[attr-defined]
        except DevmodelsError as exc:  # SnapshotError above all; nothing was applied
            raise VfioUserReject(errno.EINVAL, f"migration data rejected: {exc}") from None
        self.after_restore()

    # -- data (rule 2) --------------------------------------------------------------------

    def read(self, size: int) -> bytes:
        """Up to ``size`` more bytes of the outgoing document (empty when all was read)."""
        if self.state != STOP_COPY:
            raise VfioUserReject(errno.EINVAL, f"MIG_DATA_READ in state {_NAMES[self.state]}")
        chunk = self._outgoing[self._sent : self._sent + size]
        self._sent += len(chunk)
        return chunk

    def write(self, data: bytes) -> None:
        """Append incoming migration data."""
        if self.state != RESUMING:
            raise VfioUserReject(errno.EINVAL, f"MIG_DATA_WRITE in state {_NAMES[self.state]}")
        if len(self._incoming) + len(data) > self.max_bytes:
            raise VfioUserReject(errno.E2BIG, f"migration data exceeds {self.max_bytes} bytes")
        self._incoming += data
