"""Snapshot helpers (devmodels._state)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from devmodels import SnapshotError, from_dict, to_dict
from devmodels._state import check_bool, check_bytes, check_int, check_type, check_version


@dataclass(frozen=True)
class Inner:
    version: int
    blob: bytes
    flag: bool


@dataclass(frozen=True)
class Outer:
    version: int
    name: str
    inner: Inner
    optional: Inner | None
    pairs: tuple[tuple[int, int], ...]
    fixed: tuple[int, bytes]
    maybe_bytes: bytes | None
    anything: Any


def _sample() -> Outer:
    inner = Inner(1, b"\x00\xffab", True)
    return Outer(2, "dev", inner, None, ((1, 2), (3, 4)), (5, b"x"), b"", {"k": [1]})


def test_round_trip_through_json() -> None:
    state = _sample()
    data = json.loads(json.dumps(to_dict(state)))
    assert data["inner"]["blob"] == {"__bytes__": "00ff6162"}
    assert from_dict(Outer, data) == state
    with_optional = Outer(2, "d", state.inner, state.inner, (), (0, b""), None, None)
    assert from_dict(Outer, json.loads(json.dumps(to_dict(with_optional)))) == with_optional


def _mutated(path: list[str | int], value: object) -> dict[str, Any]:
    data = json.loads(json.dumps(to_dict(_sample())))
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["version"], "2", "state.version"),
        (["version"], True, "state.version"),
        (["version"], 2.0, "state.version"),
        (["name"], 5, "state.name"),
        (["inner"], [1, 2], "state.inner"),
        (["inner", "flag"], 1, "state.inner.flag"),
        (["inner", "blob"], "00ff", "state.inner.blob"),
        (["inner", "blob"], {"__bytes__": "zz"}, "state.inner.blob"),
        (["inner", "blob"], {"__bytes__": 5}, "state.inner.blob"),
        (["inner", "blob"], {"__bytes__": "00", "x": 1}, "state.inner.blob"),
        (["inner", "extra"], 1, "state.inner"),
        (["inner", "flag"], _DELETE, "state.inner"),
        (["pairs"], {"0": [1, 2]}, "state.pairs"),
        (["pairs", 0], [1, 2, 3], "state.pairs[0]"),
        (["pairs", 1, 0], None, "state.pairs[1][0]"),
        (["fixed"], [1], "state.fixed"),
        (["optional"], 7, "state.optional"),
        (["maybe_bytes"], "00", "state.maybe_bytes"),
    ],
)
def test_from_dict_rejects_wrong_shapes(path: list[str | int], value: object, field: str) -> None:
    with pytest.raises(SnapshotError) as info:
        from_dict(Outer, _mutated(path, value))
    assert info.value.field == field


def test_from_dict_rejects_non_objects_and_unknown_types() -> None:
    with pytest.raises(SnapshotError):
        from_dict(Outer, [1, 2])
    with pytest.raises(SnapshotError):
        from_dict(Outer, None)

    @dataclass
    class Floaty:
        x: float

    with pytest.raises(SnapshotError, match="cannot decode"):
        from_dict(Floaty, {"x": 1.0})


def test_regression_from_dict_with_non_string_keys() -> None:
    # sorted() over a mix of int and str keys raised TypeError instead of SnapshotError.
    with pytest.raises(SnapshotError, match="unknown fields"):
        from_dict(Inner, {"version": 1, "blob": {"__bytes__": ""}, "flag": True, 1: 2, None: 3})


def test_check_helpers() -> None:
    check_version("v", 3, 3)
    with pytest.raises(SnapshotError, match="version 4"):
        check_version("v", 4, 3)
    assert check_int("i", 5, 0, 10) == 5
    for bad in (11, -1, True, "5", 5.0, None):
        with pytest.raises(SnapshotError):
            check_int("i", bad, 0, 10)
    assert check_int("i", (1 << 64) - 1) == (1 << 64) - 1
    with pytest.raises(SnapshotError):
        check_int("i", 1 << 64)
    assert check_bool("b", False) is False
    with pytest.raises(SnapshotError):
        check_bool("b", 0)
    assert check_bytes("x", bytearray(b"ab"), 2) == b"ab"
    with pytest.raises(SnapshotError, match="expected 3 bytes"):
        check_bytes("x", b"ab", 3)
    with pytest.raises(SnapshotError, match="expected bytes"):
        check_bytes("x", "ab")
    check_type("t", (1,), tuple)
    with pytest.raises(SnapshotError) as info:
        check_type("t", [1], tuple)
    assert info.value.field == "t"


def test_to_dict_leaves_plain_values() -> None:
    assert to_dict(5) == 5 and to_dict("s") == "s" and to_dict(None) is None
    assert to_dict((1, b"\x01")) == [1, {"__bytes__": "01"}]
