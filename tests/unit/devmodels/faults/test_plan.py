"""Fault plans as data and as objects (``devmodels.faults.plan``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devmodels import UsageError
from devmodels.faults import KINDS, Fault, FaultPlan
from devmodels.faults.plan import stream_seed

# One instance of every kind with fields away from their defaults.
EXAMPLES: list[dict[str, object]] = [
    {"kind": "disk.media-error", "id": "bad", "lba": 65536, "sectors": 8, "op": "any", "count": 3},
    {"kind": "disk.slow", "delay_ms": 250, "target": "disk1", "rate": 0.25, "skip": 2},
    {"kind": "disk.stuck", "lba": 4096, "sectors": 1, "op": "read", "count": 1},
    {"kind": "disk.torn-write", "keep_sectors": 4, "persist_ms": 100, "lba": 10, "sectors": 16},
    {"kind": "net.drop", "direction": "rx", "rate": 0.01},
    {"kind": "net.corrupt", "direction": "tx", "after_ms": 5, "for_ms": 100},
    {"kind": "net.duplicate", "rate": 0.5},
    {"kind": "net.reorder", "direction": "tx", "skip": 10},
    {"kind": "net.link-down", "armed": False, "for_ms": 2000, "id": "flap"},
    {"kind": "net.rx-overrun", "frames": 600, "size": 128},
    {"kind": "net.tx-hang", "until_reset": False, "for_ms": 3000},
    {"kind": "pci.no-response", "config": False, "after_ms": 1000},
    {"kind": "pci.lost-irq", "vector": 2, "count": 1},
]


def test_every_kind_has_an_example() -> None:
    assert sorted(str(e["kind"]) for e in EXAMPLES) == sorted(KINDS)


@pytest.mark.parametrize("data", EXAMPLES, ids=[str(e["kind"]) for e in EXAMPLES])
def test_round_trip_through_dict_and_json(data: dict[str, object]) -> None:
    fault = Fault.from_dict(data)
    assert type(fault) is KINDS[str(data["kind"])]
    assert fault.to_dict() == data
    assert Fault.from_dict(json.loads(json.dumps(fault.to_dict()))) == fault


def test_defaults_are_left_out() -> None:
    assert Fault.from_dict({"kind": "net.drop"}).to_dict() == {"kind": "net.drop"}
    assert Fault.from_dict({"kind": "disk.media-error", "lba": 7}).to_dict() == {"kind": "disk.media-error", "lba": 7}


def test_plan_round_trip(tmp_path: Path) -> None:
    plan = FaultPlan.from_dict({"seed": 42, "faults": EXAMPLES})
    path = tmp_path / "plan.json"
    path.write_text(plan.dumps())
    assert FaultPlan.load(path) == plan
    assert FaultPlan.loads(json.dumps(plan.to_dict())) == plan
    assert plan.to_dict() == {"seed": 42, "faults": EXAMPLES}


@pytest.mark.parametrize(("data", "words"), [
    ({"kind": "disk.nonsense"}, ["unknown fault kind", "disk.media-error"]),
    ({"lba": 3}, ["unknown fault kind None"]),
    ({"kind": "disk.slow", "delay": 5}, ["unknown key(s) delay", "delay_ms"]),
    ({"kind": "net.drop", "rate": 1.5}, ["rate=1.5", "[0, 1]"]),
    ({"kind": "net.drop", "rate": True}, ["rate=True"]),
    ({"kind": "disk.media-error", "lba": -1}, ["lba=-1"]),
    ({"kind": "disk.media-error", "lba": "7"}, ["lba='7'"]),
    ({"kind": "disk.media-error", "sectors": 0}, ["sectors=0"]),
    ({"kind": "disk.media-error", "op": "trim"}, ["op='trim'", "read, write, any"]),
    ({"kind": "disk.torn-write", "op": "read"}, ["only writes tear"]),
    ({"kind": "net.drop", "direction": "up"}, ["direction='up'"]),
    ({"kind": "net.link-down", "for_ms": -5}, ["for_ms=-5"]),
    ({"kind": "net.rx-overrun", "size": 20}, ["size=20"]),
    ({"kind": "net.tx-hang", "until_reset": 1}, ["until_reset=1"]),
    ({"kind": "pci.lost-irq", "vector": 5000}, ["vector=5000"]),
    ({"kind": "net.drop", "id": "two words"}, ["id="]),
    ({"kind": "net.drop", "armed": "yes"}, ["armed="]),
])
def test_bad_faults_are_named(data: dict[str, object], words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        Fault.from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_python_construction_validates_too() -> None:
    from devmodels.faults import FrameDrop, MediaError

    with pytest.raises(UsageError, match="rate"):
        FrameDrop(rate=-0.1)
    with pytest.raises(TypeError):
        MediaError(5)  # type: ignore[misc]  # keyword-only fields
    assert MediaError(lba=5).sectors == 1


@pytest.mark.parametrize(("text", "words"), [
    ("not json", ["not JSON"]),
    ("[]", ["JSON object"]),
    ('{"faults": {}}', ["must be a list"]),
    ('{"seeds": 1}', ["unknown key(s) seeds"]),
    ('{"seed": -1}', ["seed"]),
    ('{"version": 2}', ["version 2"]),
    ('{"faults": [{"kind": "net.drop", "id": "a"}, {"kind": "net.corrupt", "id": "a"}]}', ["id(s) a"]),
    ('{"faults": [{"kind": "net.drop"}, {"kind": "net.drop", "rate": 9}]}', ["faults[1]", "rate=9"]),
])
def test_bad_plans_are_named(text: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        FaultPlan.loads(text)
    for word in words:
        assert word in str(info.value)


def test_a_missing_file_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nowhere.json"):
        FaultPlan.load(tmp_path / "nowhere.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"faults": [{"kind": "x"}]}')
    with pytest.raises(UsageError, match="bad.json"):
        FaultPlan.load(bad)


def test_stream_seeds_depend_on_seed_and_id_only() -> None:
    assert stream_seed(1, "a") == stream_seed(1, "a")
    assert len({stream_seed(1, "a"), stream_seed(2, "a"), stream_seed(1, "b")}) == 3
