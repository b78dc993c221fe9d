"""bench/kvm.py on this host's KVM, with counts small enough for the test suite (figures are
not asserted: performance is measured by the bench, not by tests)."""

from __future__ import annotations

import json

import pytest

from bench import kvm as bench
from kvm import unavailable
from kvm.payloads import compiler_missing
from tests.prerequisites import prerequisite

pytestmark = prerequisite(unavailable() or compiler_missing())


def test_json_has_every_figure_of_the_parts_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["exits", "msi", "threads", "--runs", "1", "--count", "200", "--samples", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"runs", "exits", "msi", "threads", "host_load"}
    for ring in ("ring3", "ring0"):
        for name in ("mmio-read", "mmio-write", "pio-write", "bare_mmio_read", "ioeventfd_write"):
            assert out["exits"][f"{ring}_{name}_per_s"] > 0
    assert out["msi"]["signal_msi_us"] > 0 and out["msi"]["irqfd_us"] > 0
    assert out["threads"]["kick_latency_us"] > 0 and out["threads"]["handoff_round_trip_us"] > 0


def test_ops_compare_in_process_with_vfio_user(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["ops", "--runs", "1", "--ops", "20"]) == 0
    text = capsys.readouterr().out
    assert "in-process" in text and "vfio-user" in text and "dma4k" in text and "host load" in text


def test_an_unknown_part_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["nope"])
    assert "unknown part nope" in capsys.readouterr().err
