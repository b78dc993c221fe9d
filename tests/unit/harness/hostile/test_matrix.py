"""Which device x path pairs run, and how the matrix shows them (ours first, QEMU's beside)."""

from __future__ import annotations

import json

import pytest

from harness.hostile import Cell, Column, Outcome, Scenario, as_json, format_matrix, our_failures, select_targets
from harness.hostile import _matrix
from harness.hostile._targets import DEVICE_CLASSES, PATHS, path_named


def test_paths_are_named_once_and_serve_known_classes() -> None:
    assert len({p.name for p in PATHS}) == len(PATHS)
    for path in PATHS:
        assert set(path.starters) <= set(DEVICE_CLASSES)
    ours = {d for p in PATHS if p.ours for d in p.starters}
    assert ours == set(DEVICE_CLASSES)
    assert not path_named("qemu").ours and path_named("vfio-user").qemu.label == "11.1"


def test_selection_by_device_and_path() -> None:
    every = select_targets()
    assert every[0][1].ours and not every[-1][1].ours  # ours first, the reference column last
    assert [(d, p.name) for d, p in select_targets(["e1000/*"])] == [
        ("e1000", "x-pci-proxy-dev"), ("e1000", "vfio-user"), ("e1000", "qemu")]
    assert all(p.ours for _, p in select_targets(reference=False))
    assert select_targets(["*/vhost-user"], reference=False) == [
        (d, path_named("vhost-user")) for d in ("virtio-blk", "virtio-net")]


def _columns() -> list[Column]:
    table = [Scenario(0, "baseline", "b"), Scenario(1, "tdt-beyond-ring", "t"), Scenario(2, "tx-len-zero", "z")]
    ours = Column("e1000", path_named("x-pci-proxy-dev"), table, boots=1, seconds=24.0)
    ours.cells = {s.name: Cell(Outcome.PASS) for s in table}
    qemu = Column("e1000", path_named("qemu"), table, boots=2, seconds=40.0)
    qemu.cells = {"baseline": Cell(Outcome.PASS), "tdt-beyond-ring": Cell(Outcome.PASS),
                  "tx-len-zero": Cell(Outcome.DEVICE_DEAD, "no ARP reply in 8000 ms")}
    return [qemu, ours]


def test_the_matrix_puts_ours_first_and_details_what_did_not_pass() -> None:
    text = format_matrix(_columns())
    header = text.splitlines()[0]
    assert header.index("x-pci-proxy-dev (ours") < header.index("qemu (QEMU's")
    assert any(line.startswith("tx-len-zero") and "PASS" in line and "DEVICE-DEAD" in line for line in text.splitlines())
    assert "e1000 / qemu (QEMU's, QEMU 7.2) / tx-len-zero: DEVICE-DEAD: no ARP reply in 8000 ms" in text
    assert "1, 24 s" in text and "2, 40 s" in text


def test_only_our_cells_count_as_failures() -> None:
    columns = _columns()
    assert our_failures(columns) == []
    columns[1].cells["tx-len-zero"] = Cell(Outcome.SERVER_DIED, "server exited with status 1")
    assert [(c.path.name, name) for c, name in our_failures(columns)] == [("x-pci-proxy-dev", "tx-len-zero")]
    never_ran = Column("ahci", path_named("x-pci-proxy-dev"), [Scenario(0, "baseline", "b")], note="gcc missing")
    assert never_ran.cell("baseline").outcome is Outcome.NOT_RUN and our_failures([never_ran])


def test_json_has_one_object_per_cell() -> None:
    cells = as_json(_columns())
    assert len(cells) == 6 and json.loads(json.dumps(cells)) == cells
    assert {"device", "path", "ours", "qemu", "scenario", "what", "outcome", "detail", "known"} <= set(cells[0])


def test_a_known_failure_is_named_but_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {("testdev", "vfio-user", "msix-masked-storm"): "an example reason"}
    monkeypatch.setattr(_matrix, "KNOWN", known)
    (device, path, scenario), why = next(iter(known.items()))
    column = Column(device, path_named(path), [Scenario(0, "baseline", "b"), Scenario(1, scenario, "s")])
    column.cells = {"baseline": Cell(Outcome.PASS), scenario: Cell(Outcome.MISBEHAVED, "no pending bit")}
    assert f"[known: {why}]" in format_matrix([column]) and our_failures([column])
