"""The snapshot file: one device's snapshot as a versioned JSON document.

Layout (format version 1)::

    {"format": "devmodels-snapshot", "version": 1, "kind": "e1000", "state": {...}}

``state`` is ``to_dict(device.state())``, which carries the device's constructor
arguments (``state.args``, ``devmodels._state`` rule 3). The same document is what the
vfio-user server sends as migration data (``passthrough.user.migration``).

Rules:

1. The header comes first and is checked first: ``format`` must be ``FORMAT``,
   ``version`` an integer this code reads (``FORMAT_VERSION``, or an older one it knows
   how to upgrade, ``_UPGRADES``), ``kind`` the device kind (``Persistent.snapshot_kind``).
   Anything else is a ``SnapshotError`` naming the header field, before the state is
   looked at.
2. Reading is as strict as ``restore``: the state decodes into the kind's state type with
   ``from_dict`` (unknown or missing fields refused, generic sections typed), and only
   ``restore`` (or ``from_state``) applies it. Documents are bounded (``MAX_BYTES``).
3. A ``SnapshotKind`` is what a reader needs to rebuild a device of one kind: its state
   type and ``rebuild(state, memory, backends)``. The backends are host resources the
   restorer opens (``devmodels._state`` rule 3), listed as the device registry's
   ``--backend`` words list them: e1000 and virtio-net take zero or one network backend,
   virtio-blk one block backend, AHCI one medium per port in port order (``None`` for an
   empty CD tray or an empty port), testdev none. Each device package declares its kind
   (``devmodels.testdev.SNAPSHOT_KIND``, ``devmodels.e1000.SNAPSHOT_KIND``,
   ``devmodels.ahci.SNAPSHOT_KIND``, ``virtio.snapshot.snapshot_kinds()``); this module
   knows none of them, so the core stays below the devices.
4. Writing takes a device at its quiesce point: ``save(device)`` calls ``quiesce()``,
   then ``state()``.
5. Compatibility (``devmodels._state`` rule 8): a file written by any released format
   version and state layout keeps loading. A layout change bumps a version and adds an
   upgrade here; the golden files under ``tests/golden/snapshots`` are the proof.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import SnapshotError, UsageError
from ._memory import GuestMemory
from ._state import Persistent, from_dict, to_dict

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_BYTES",
    "SnapshotHeader",
    "SnapshotKind",
    "encode",
    "read_document",
    "decode",
    "save",
    "load_into",
    "rebuild",
    "one_backend",
]

FORMAT = "devmodels-snapshot"
FORMAT_VERSION = 1
MAX_BYTES = 64 << 20

Rebuild = Callable[[Any, GuestMemory, Sequence[Any]], Any]

# Format version -> the function that turns a document of that version into one of the
# next (rule 5). Version 1 is the first: nothing to upgrade yet.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class SnapshotHeader:
    """What the header of a snapshot file says (rule 1)."""

    version: int
    kind: str


@dataclass(frozen=True)
class SnapshotKind:
    """One device kind a reader can rebuild (rule 3).

    Attributes:
        name: the ``kind`` of the header.
        state_type: what the state decodes into (parameterized if generic).
        rebuild: ``rebuild(state, memory, backends)`` → the device, built from
            ``state.args`` with the restorer's backends, with ``state`` restored.
        backends: what ``backends`` holds, for messages and ``--help``.
    """

    name: str
    state_type: Any
    rebuild: Rebuild
    backends: str = "none"


def encode(kind: str, state: Any, *, indent: int | None = None) -> bytes:
    """The snapshot document of ``state`` (a device of ``kind``); ``indent`` pretty-prints."""
    document = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "state": to_dict(state)}
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(document, indent=indent, separators=separators).encode()


def read_document(data: bytes) -> tuple[SnapshotHeader, Any]:
    """Parse and check the header (rule 1); return it with the raw, untyped state.

    Raises:
        SnapshotError: not a snapshot document, or a header this code cannot read.
    """
    if len(data) > MAX_BYTES:
        raise SnapshotError("snapshot", f"{len(data)} bytes is more than {MAX_BYTES}")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SnapshotError("snapshot", f"not a JSON document: {type(exc).__name__}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SnapshotError("format", f"not a {FORMAT} document")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SnapshotError("version", f"{version!r} is not a format version")
    if version > FORMAT_VERSION:
        raise SnapshotError("version", f"format version {version} is newer than this code reads ({FORMAT_VERSION})")
    while version < FORMAT_VERSION:
        document = _UPGRADES[version](document)
        version += 1
    kind = document.get("kind")
    if not isinstance(kind, str) or not kind:
        raise SnapshotError("kind", f"{kind!r} is not a device kind")
    unknown = set(document) - {"format", "version", "kind", "state"}
    if unknown:
        raise SnapshotError("snapshot", f"unknown header fields {sorted(unknown)}")
    if "state" not in document:
        raise SnapshotError("state", "missing")
    return SnapshotHeader(version, kind), document["state"]


def decode(data: bytes, kind: str, state_type: Any) -> Any:
    """The typed state of a snapshot of a device of ``kind`` (not applied; rule 2).

    Raises:
        SnapshotError: a bad header, another kind, or a state of the wrong shape.
    """
    header, raw = read_document(data)
    if header.kind != kind:
        raise SnapshotError("kind", f"a snapshot of {header.kind!r}, not of {kind!r}")
    return from_dict(state_type, raw, "state")


def save(device: Persistent, *, indent: int | None = None) -> bytes:
    """``quiesce()``, then the snapshot document of ``device`` (rule 4).

    Raises:
        UsageError: the device has no snapshot kind, or cannot quiesce.
    """
    if not device.snapshot_kind:
        raise UsageError(f"{type(device).__name__} has no snapshot kind: it cannot be rebuilt from a file")
    device.quiesce()
    return encode(device.snapshot_kind, device.state(), indent=indent)


def load_into(device: Persistent, data: bytes) -> None:
    """Decode a snapshot for ``device`` and restore it (``args`` must match; all or nothing).

    Raises:
        SnapshotError: the document, its kind or its state is refused; nothing applied.
    """
    device.restore(decode(data, device.snapshot_kind, device.state_type))


def rebuild(data: bytes, kinds: Mapping[str, SnapshotKind], memory: GuestMemory, backends: Sequence[Any] = ()) -> Any:
    """Build the device a snapshot describes, from its ``args`` and the restorer's host
    resources, and restore it (rule 3).

    Raises:
        SnapshotError: the document is refused, its kind is not in ``kinds``, or the
            backends do not fit the device the snapshot describes.
        UsageError: the number of backends does not fit the kind.
    """
    header, raw = read_document(data)
    kind = kinds.get(header.kind)
    if kind is None:
        raise SnapshotError("kind", f"{header.kind!r} is not a kind this reader rebuilds (known: {', '.join(sorted(kinds))})")
    state = from_dict(kind.state_type, raw, "state")
    return kind.rebuild(state, memory, tuple(backends))


def one_backend(kind: str, backends: Sequence[Any], *, required: bool) -> Any:
    """The single backend a kind takes from ``backends`` (rule 3); None when optional and
    absent.

    Raises:
        UsageError: more than one, or none where one is required.
    """
    if len(backends) > 1 or (required and not backends):
        need = "one backend" if required else "at most one backend"
        raise UsageError(f"a {kind} snapshot is rebuilt with {need}, got {len(backends)}")
    return backends[0] if backends else None
