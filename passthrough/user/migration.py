"""vfio-user migration (``DEVICE_FEATURE`` + ``MIG_DATA_READ``/``WRITE``) through the
devices' snapshot contract (``devmodels._state``: ``quiesce()``, ``state()``, ``restore()``).

The device state travels as a snapshot document (``devmodels.snapshot_file``: a header
with the format version and the device kind, then ``to_dict(device.state())``, which
carries the device's constructor arguments). The destination decodes it into its own
device's ``state_type`` and hands it to ``restore``, which refuses a device built
differently (naming the argument) and validates everything before applying anything.

Rules (vfio-user.rst "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE"):

1. The state machine is the transition table ``ARCS`` of direct arcs; every other
   requested change is the shortest path through ``STOP`` (no saving state is ever an
   interior state of a path). PRE_COPY and P2P states are not offered; ``ERROR`` cannot be
   requested. A failed arc leaves the machine in ``ERROR``, which only
   ``VFIO_USER_DEVICE_RESET`` leaves (back to ``RUNNING``).
2. ``MIG_DATA_READ`` is valid only in ``STOP_COPY``, ``MIG_DATA_WRITE`` only in
   ``RESUMING``. Incoming migration data is bounded by ``max_bytes``.
3. ``RESUMING -> STOP`` restores the device; data that is not a snapshot of this device's
   kind, or that ``restore`` rejects, fails the arc.
4. ``RUNNING -> STOP`` quiesces the device (posted work run, backend requests completed,
   held buffers given back), and ``STOP -> STOP_COPY`` quiesces again before ``state()``,
   so the saved state has nothing half done. A device that cannot quiesce fails the arc.
   The machine never blocks device accesses (a VMM that stops accessing the device has
   stopped that side of it).
5. What the device does on its own (frames arriving from the wire, timers, completions
   announced by a backend) it does only while ``RUNNING``: the serving loop serves the
   device through ``gate(device)``, which asks the loop for nothing in any other state.
   So a stopped device writes no guest RAM after the VMM's last dirty-log report and
   raises no interrupt (linux/vfio.h ``VFIO_DEVICE_STATE_STOP``: no DMA, no interrupts,
   no change to external state); what arrived meanwhile waits in its backend for ``RUNNING``.
6. A version-1 document of the earlier format (``LEGACY_FORMAT``, states without
   ``args``) still loads: it is a state of the layouts before ``args``, which is taken to
   be the destination device's own (as those layouts were checked) and so upgraded.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Mapping
from typing import Any

from devmodels import DevmodelsError, SnapshotError, from_dict, snapshot_file, to_dict
from devmodels.pci import PciFunction
from devmodels.runtime import ServedDevice

from ..defs import (
    VFIO_DEVICE_STATE_ERROR,
    VFIO_DEVICE_STATE_RESUMING,
    VFIO_DEVICE_STATE_RUNNING,
    VFIO_DEVICE_STATE_STOP,
    VFIO_DEVICE_STATE_STOP_COPY,
)
from ..errors import VfioUserReject

__all__ = ["LEGACY_FORMAT", "ARCS", "MigrationStateMachine", "MigrationGate", "encode_state", "decode_state",
           "supports_snapshots"]

LEGACY_FORMAT = "devmodels-vfio-user-migration"  # rule 6: version 1, before snapshot files

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
    """Whether ``function`` follows the snapshot contract with a kind a document can name."""
    return (bool(getattr(function, "snapshot_kind", "")) and callable(getattr(function, "state", None))
            and callable(getattr(function, "restore", None)))


def encode_state(function: PciFunction) -> bytes:
    """The snapshot document of ``function``, quiesced first (rule 4)."""
    return snapshot_file.save(function)  # type: ignore[arg-type]


def decode_state(function: PciFunction, data: bytes) -> Any:
    """Decode a snapshot document into a state object for ``function`` (not applied).

    Raises:
        SnapshotError: the document is malformed or of another device kind.
    """
    kind: str = function.snapshot_kind  # type: ignore[attr-defined]
    state_type = function.state_type  # type: ignore[attr-defined]
    legacy = _legacy_document(data)
    if legacy is None:
        return snapshot_file.decode(data, kind, state_type)
    if legacy.get("version") != 1:
        raise SnapshotError("migration.version", f"version {legacy.get('version')!r} is not 1")
    if legacy.get("device") != type(function).__name__:
        raise SnapshotError("migration.device", f"state of {legacy.get('device')!r}, not {type(function).__name__}")
    return from_dict(state_type, _adopt_args(legacy.get("state"), _args_template(function)), "state")


def _legacy_document(data: bytes) -> dict[str, Any] | None:
    """The document if it is one of ``LEGACY_FORMAT`` (rule 6), else None."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None  # snapshot_file says what is wrong with it
    if isinstance(document, dict) and document.get("format") == LEGACY_FORMAT:
        return document
    return None


def _args_template(function: PciFunction) -> dict[str, Any]:
    """Where the destination's args go in a state of ``function`` (a virtio transport has
    its device's in the device section)."""
    template: dict[str, Any] = {"args": to_dict(function.constructor_args())}  # type: ignore[attr-defined]
    device = getattr(function, "device", None)
    if device is not None and callable(getattr(device, "constructor_args", None)):
        template["device"] = {"device": {"args": to_dict(device.constructor_args())}}
    return template


def _adopt_args(state: Any, template: dict[str, Any]) -> Any:
    """A version-1 state (layouts before ``args``) upgraded to version 2 with the
    destination's args (rule 6); anything else is left for ``from_dict`` to refuse."""
    if not isinstance(state, dict):
        return state
    out = dict(state)
    if "args" in template and "args" not in out and out.get("version") == 1:
        out["args"], out["version"] = template["args"], 2
    for key, inner in template.items():
        if key != "args" and key in out:
            out[key] = _adopt_args(out[key], inner)
    return out


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

    @property
    def running(self) -> bool:
        """Whether the device is in ``RUNNING`` (rule 5)."""
        return self.state == RUNNING

    def gate(self, device: ServedDevice) -> MigrationGate:
        """``device`` as the serving loop must serve it (rule 5)."""
        return MigrationGate(device, self)

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
        self._quiesce()

    def _quiesce(self) -> None:
        """Rule 4: finish what the device has in flight (a device that cannot fails the arc)."""
        if not self.supported:
            return
        try:
            self.function.quiesce()
        except DevmodelsError as exc:
            raise VfioUserReject(errno.EIO, f"the device cannot quiesce: {exc}") from None

    def _run(self) -> None:
        pass

    def _begin_save(self) -> None:
        if not self.supported:
            raise VfioUserReject(errno.ENOTSUP, "the device has no snapshot support")
        self._quiesce()
        try:
            self._outgoing, self._sent = encode_state(self.function), 0
        except DevmodelsError as exc:
            raise VfioUserReject(errno.EIO, f"the device state cannot be saved: {exc}") from None

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


class MigrationGate:
    """A ``ServedDevice`` that is ``device`` while the migration state is ``RUNNING`` and
    asks its loop for nothing otherwise (rule 5): no descriptors, no timers, no posted
    work or completions run. ``quiesce`` and the waker pass through."""

    def __init__(self, device: ServedDevice, machine: MigrationStateMachine) -> None:
        self.device = device
        self.machine = machine

    def bind_waker(self, wake: Callable[[], None] | None) -> None:
        """The device's."""
        self.device.bind_waker(wake)

    def watched_fds(self) -> Mapping[int, Callable[[], None]]:
        """The device's while running, else none."""
        return self.device.watched_fds() if self.machine.running else {}

    def next_deadline(self) -> int | None:
        """The device's while running, else none (its timers wait)."""
        return self.device.next_deadline() if self.machine.running else None

    def tick(self, now_ns: int) -> None:
        """The clock moves on for the device only while it runs (a timer due meanwhile
        fires once it runs again)."""
        if self.machine.running:
            self.device.tick(now_ns)

    @property
    def posted(self) -> bool:
        """The device's posted work, while running."""
        return self.machine.running and self.device.posted

    def run_posted(self) -> bool:
        """The device's, while running."""
        return self.device.run_posted() if self.machine.running else False

    def quiesce(self) -> None:
        """The device's."""
        self.device.quiesce()
