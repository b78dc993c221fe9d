"""The snapshot contract every device follows (vm-superio ``SerialState``, QEMU VMState,
Firecracker ``Persist``).

Rules:

1. The quiesce point. A snapshot is ``device.quiesce()`` (``devmodels.runtime.ServedDevice``
   rule 5: backends waited for, posted work run, held buffers given back), then
   ``device.state()``, with no device access in between. ``state()`` only copies: it never
   does the device's work itself. Called with work in flight it raises ``UsageError``
   naming ``quiesce()`` (``require_quiesced``), whatever the device and whatever the work.
2. ``device.state()`` returns a frozen dataclass of plain data (ints, bools, strs, bytes,
   tuples, nested state dataclasses) with a ``version`` field. It shares nothing mutable
   with the device.
3. A state carries ``args``: the constructor arguments that decide what the guest sees
   (IDs, capabilities, MAC and EEPROM, features, queue and port counts, drive identities),
   as a frozen dataclass of plain data (``device.constructor_args()``). What the restorer
   chooses is not in it: host resources (guest memory, backends: files, sockets, TAPs) and
   host tuning (names, posted writes, budgets, queue factories).
4. ``device.restore(state)`` treats the state as untrusted input: it checks ``args``
   first (``check_args``: a device built differently is refused, naming the argument, so
   the refusal never surfaces as some derived field), then validates every field (with
   the ``check_*`` helpers here, which raise ``SnapshotError`` naming the field), and only
   then applies it, so a rejected snapshot leaves the device exactly as it was.
5. ``Device.from_state(state, memory, ...)`` builds the device from ``state.args`` and the
   host resources the restorer hands in, then restores ``state`` into it (Firecracker's
   ``Persist::restore(constructor_args, state)``): restoring into a device built
   differently cannot happen that way.
6. Optional sections are ``None`` when not needed (QEMU subsections with ``.needed``).
7. ``to_dict``/``from_dict`` turn any state into JSON-able data and back for transport
   (vfio-user migration, snapshot files); ``from_dict`` is as strict as ``restore``.
   Generic state dataclasses decode with their parameters given
   (``from_dict(VirtioDeviceState[VirtioBlkState], data)``); a field whose type is a type
   variable left unbound is refused, never handed back as a plain dict.
8. A layout is versioned: changing a state or args dataclass bumps its ``version`` (or the
   file format's) and teaches ``devmodels.snapshot_file`` to read the old one. The golden
   snapshot files under ``tests/golden/snapshots`` (one per device kind, one set per
   release of a layout) must keep loading.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Protocol, TypeVar, runtime_checkable

from ._errors import SnapshotError, UsageError

__all__ = [
    "Snapshotable",
    "Persistent",
    "require_quiesced",
    "check_args",
    "check_version",
    "check_int",
    "check_bytes",
    "check_type",
    "check_bool",
    "to_dict",
    "from_dict",
]

S = TypeVar("S")


class Snapshotable(Protocol[S]):
    """A device whose state can be saved and restored (rules 1–4)."""

    def state(self) -> S:
        """Return the device's state as plain, versioned data (after ``quiesce()``).

        Raises:
            UsageError: work is in flight; ``quiesce()`` first (rule 1).
        """
        ...

    def restore(self, state: S) -> None:
        """Validate ``state`` completely, then apply it (all or nothing).

        Raises:
            SnapshotError: a field is inconsistent, or ``args`` differ from this device's;
                the device is unchanged.
        """
        ...


@runtime_checkable
class Persistent(Protocol):
    """A device that can be written to a snapshot file and rebuilt from one (rules 3, 5;
    ``devmodels.snapshot_file``)."""

    @property
    def snapshot_kind(self) -> str:
        """The device kind a snapshot file names (``"e1000"``, ``"virtio-blk-pci"``)."""
        ...

    @property
    def state_type(self) -> Any:
        """The type ``from_dict`` decodes this device's state into (parameterized where
        the state is generic)."""
        ...

    def quiesce(self) -> None:
        """Finish everything in flight (rule 1)."""
        ...

    def state(self) -> Any:
        """The device's state (rule 2)."""
        ...

    def restore(self, state: Any) -> None:
        """Validate, then apply (rule 4)."""
        ...


def require_quiesced(device: str, in_flight: str | None) -> None:
    """Rule 1: refuse ``state()`` while ``in_flight`` describes work not yet finished.

    Raises:
        UsageError: naming the device, the work and ``quiesce()``.
    """
    if in_flight:
        raise UsageError(f"{device}: state() with {in_flight}; call quiesce() first (the snapshot contract)")


def check_args(field: str, snapshot: object, device: object) -> None:
    """Rule 4: the constructor arguments a state was taken with must be this device's.

    Both are frozen args dataclasses; the first field that differs is named.

    Raises:
        SnapshotError: another args type, or a field that differs.
    """
    if type(snapshot) is not type(device) or not dataclasses.is_dataclass(device):
        raise SnapshotError(field, f"expected {type(device).__name__}, got {type(snapshot).__name__}")
    for f in dataclasses.fields(device):
        name, ours, theirs = f.name, getattr(device, f.name), getattr(snapshot, f.name)
        if isinstance(ours, tuple) and isinstance(theirs, tuple) and len(ours) == len(theirs):
            # Name the item that differs (an AHCI port's drive, a queue's size).
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                if type(a) is not type(b) or a != b:
                    name, ours, theirs = f"{f.name}[{i}]", a, b
                    break
        if type(ours) is not type(theirs) or ours != theirs:
            raise SnapshotError(
                f"{field}.{name}",
                f"the snapshot's device was built with {name}={_short(theirs)}, this one with "
                f"{_short(ours)}: build the device from the snapshot (from_state) or with the same arguments",
            )


def _short(value: object) -> str:
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_version(field: str, version: object, supported: int) -> None:
    """Require ``version == supported``."""
    if version != supported:
        raise SnapshotError(field, f"version {version!r} is not supported (this code reads {supported})")


def check_type(field: str, value: object, kind: type | tuple[type, ...]) -> None:
    """Require ``isinstance(value, kind)``."""
    if not isinstance(value, kind):
        raise SnapshotError(field, f"expected {kind}, got {type(value).__name__}")


def check_bool(field: str, value: object) -> bool:
    """Require a bool and return it."""
    if not isinstance(value, bool):
        raise SnapshotError(field, f"expected a bool, got {value!r}")
    return value


def check_int(field: str, value: object, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    """Require an int in ``[lo, hi]`` and return it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise SnapshotError(field, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SnapshotError(field, f"{value:#x} is outside [{lo:#x}, {hi:#x}]")
    return value


def check_bytes(field: str, value: object, length: int | None = None) -> bytes:
    """Require bytes (of ``length`` if given) and return them."""
    if not isinstance(value, (bytes, bytearray)):
        raise SnapshotError(field, f"expected bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise SnapshotError(field, f"expected {length} bytes, got {len(value)}")
    return bytes(value)


def to_dict(state: Any) -> Any:
    """Turn a state dataclass (recursively) into JSON-able data; bytes become hex strings."""
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return {f.name: to_dict(getattr(state, f.name)) for f in dataclasses.fields(state)}
    if isinstance(state, (bytes, bytearray)):
        return {"__bytes__": bytes(state).hex()}
    if isinstance(state, (tuple, list)):
        return [to_dict(v) for v in state]
    return state


def from_dict(cls: Any, data: Any, field: str = "state") -> Any:
    """Rebuild a state dataclass of type ``cls`` from ``to_dict`` output (rule 7).

    ``cls`` may be a parameterized generic dataclass (``VirtioPciState[VirtioBlkState]``):
    its type variables are bound for the fields beneath it.

    Raises:
        SnapshotError: the data does not have the shape of ``cls``.
    """
    return _from(cls, data, field, {})


def _bind(kind: Any, env: dict[Any, Any]) -> Any:
    """``kind`` with a type variable bound in ``env`` replaced by its binding."""
    if isinstance(kind, TypeVar):
        return env.get(kind, kind)
    return kind


def _from(kind: Any, data: Any, field: str, env: dict[Any, Any]) -> Any:
    if isinstance(kind, TypeVar):
        if kind not in env:
            raise SnapshotError(field, f"its type {kind} is not bound: decode with the parameterized state type")
        return _from(env[kind], data, field, env)
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is not None and dataclasses.is_dataclass(origin):
        # A parameterized generic dataclass: bind its parameters for its fields.
        params = getattr(origin, "__parameters__", ())
        bound = (_bind(a, env) for a in args)
        inner = {p: a for p, a in zip(params, bound, strict=False) if not isinstance(a, TypeVar)}
        return _dataclass(origin, data, field, inner)
    if dataclasses.is_dataclass(kind):
        return _dataclass(kind, data, field, env)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            if isinstance(arg, TypeVar) and arg not in env:
                return _from(arg, data, field, env)  # refused: the union cannot be decoded
            try:
                return _from(arg, data, field, env)
            except SnapshotError:
                continue
        raise SnapshotError(field, f"{_short(data)} matches none of {args}")
    if origin is tuple:
        if not isinstance(data, list):
            raise SnapshotError(field, f"expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from(args[0], v, f"{field}[{i}]", env) for i, v in enumerate(data))
        if len(args) != len(data):
            raise SnapshotError(field, f"expected {len(args)} items, got {len(data)}")
        return tuple(_from(a, v, f"{field}[{i}]", env) for i, (a, v) in enumerate(zip(args, data, strict=True)))
    if kind is type(None):
        if data is not None:
            raise SnapshotError(field, f"expected null, got {type(data).__name__}")
        return None
    if kind is bytes:
        if not (isinstance(data, dict) and set(data) == {"__bytes__"}):
            raise SnapshotError(field, "expected encoded bytes")
        try:
            return bytes.fromhex(data["__bytes__"])
        except (TypeError, ValueError) as exc:
            raise SnapshotError(field, f"bad hex: {exc}") from None
    if kind is bool:
        return check_bool(field, data)
    if kind is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise SnapshotError(field, f"expected an integer, got {_short(data)}")
        return data
    if kind is str:
        check_type(field, data, str)
        return data
    if kind is typing.Any:
        return data
    raise SnapshotError(field, f"cannot decode type {kind!r}")


def _dataclass(kind: Any, data: Any, field: str, env: dict[Any, Any]) -> Any:
    if not isinstance(data, dict):
        raise SnapshotError(field, f"expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind)]
    extra = set(data) - set(names)
    if extra:
        raise SnapshotError(field, f"unknown fields {sorted(extra, key=repr)}")
    missing = set(names) - set(data)
    if missing:
        raise SnapshotError(field, f"missing fields {sorted(missing)}")
    return kind(**{n: _from(hints[n], data[n], f"{field}.{n}", env) for n in names})
