"""The snapshot contract every device follows (vm-superio ``SerialState``, QEMU VMState).

Rules:

1. ``device.state()`` returns a frozen dataclass of plain data (ints, bytes, tuples, nested
   state dataclasses) with a ``version`` field. It shares nothing mutable with the device.
2. ``device.restore(state)`` treats the state as untrusted input: it validates every field
   first (with the ``check_*`` helpers here, which raise ``SnapshotError`` naming the field),
   and only then applies it, so a rejected snapshot leaves the device exactly as it was.
3. Optional sections are ``None`` when not needed (QEMU subsections with ``.needed``).
4. ``to_dict``/``from_dict`` turn any state into JSON-able data and back for transport
   (vfio-user migration, files); ``from_dict`` is as strict as ``restore``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Protocol, TypeVar

from ._errors import SnapshotError

__all__ = [
    "Snapshotable",
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
    """A device whose state can be saved and restored."""

    def state(self) -> S:
        """Return the device's state as plain, versioned data."""
        ...

    def restore(self, state: S) -> None:
        """Validate ``state`` completely, then apply it (all or nothing).

        Raises:
            SnapshotError: a field is inconsistent; the device is unchanged.
        """
        ...


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


def from_dict(cls: type[S], data: Any, field: str = "state") -> S:
    """Rebuild a state dataclass of type ``cls`` from ``to_dict`` output.

    Raises:
        SnapshotError: the data does not have the shape of ``cls``.
    """
    return typing.cast(S, _from(cls, data, field))


def _from(kind: Any, data: Any, field: str) -> Any:
    if dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise SnapshotError(field, f"expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        extra = set(data) - names
        if extra:
            raise SnapshotError(field, f"unknown fields {sorted(extra, key=repr)}")
        missing = names - set(data)
        if missing:
            raise SnapshotError(field, f"missing fields {sorted(missing)}")
        return kind(**{n: _from(hints[n], data[n], f"{field}.{n}") for n in names})  # type: ignore[operator]
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _from(arg, data, field)
            except SnapshotError:
                continue
        raise SnapshotError(field, f"{data!r} matches none of {args}")
    if origin is tuple:
        if not isinstance(data, list):
            raise SnapshotError(field, f"expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from(args[0], v, f"{field}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise SnapshotError(field, f"expected {len(args)} items, got {len(data)}")
        return tuple(_from(a, v, f"{field}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True)))
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
            raise SnapshotError(field, f"expected an integer, got {data!r}")
        return data
    if kind is str:
        check_type(field, data, str)
        return data
    if kind is typing.Any:
        return data
    raise SnapshotError(field, f"cannot decode type {kind!r}")
