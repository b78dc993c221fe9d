"""``python -m bench rings``: the benchmark runs and prints the promised keys (figures are
not asserted: no timing asserts in tests)."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import SUBCOMMANDS, main
from virtio.queue import RingC


def test_bench_rings_json(capsys):
    assert "rings" in SUBCOMMANDS
    assert main(["rings", "--json", "--size", "16", "--rounds", "3", "--python-rounds", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["layout"] for line in lines] == ["split", "packed"]
    for line in lines:
        assert line["python_ns"] > 0
        if RingC is None:
            assert line["cython_ns"] is None and line["ratio"] is None
        else:
            assert line["cython_ns"] > 0
            assert line["ratio"] == pytest.approx(line["python_ns"] / line["cython_ns"], rel=0.01, abs=0.1)


def test_bench_usage(capsys):
    assert main([]) == 2
    assert main(["nope"]) == 2
    assert main(["rings", "--indirect", "--size", "8", "--rounds", "2", "--python-rounds", "2"]) == 0
    assert "split" in capsys.readouterr().out
