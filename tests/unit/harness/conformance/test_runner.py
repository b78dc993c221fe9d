"""The conformance runner's own logic: rows, the pass rule, the matrix, the registry."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from harness.conformance import Attachment, Row, format_matrix, load_cases
from harness.conformance import _registry
from harness.conformance.cases._served import ServedCase
from harness.conformance.cli import main


def test_row_json_has_the_documented_keys() -> None:
    row = Row("e1000", "e1000 8086:100e", "x-pci-proxy-dev", True, {"bound": True})
    data = row.as_json()
    assert {"driver", "device", "path", "passed", "checks"} <= set(data)
    assert json.loads(json.dumps(data))["checks"] == {"bound": True}


def test_matrix_lists_failures_with_details() -> None:
    rows = [
        Row("e1000", "nic", "x-pci-proxy-dev", True, {"a": True}),
        Row("ahci", "sata", "x-pci-proxy-dev", False, {"b": True, "c": False}, details={"c": "got 1, want 2"}),
    ]
    text = format_matrix(rows)
    assert "PASS" in text and "FAIL" in text
    assert "1/2" in text
    assert "c: got 1, want 2" in text


def test_registry_reports_broken_providers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_registry, "PROVIDERS", ["harness.conformance.cases.testdev:cases", "no.such.module:cases"])
    cases, broken = load_cases()
    assert [c.name for c in cases] == ["testdev-proxy", "testdev-vfio-user"]
    assert broken and broken[0][0] == "no.such.module:cases"


def test_registry_filters_by_pattern() -> None:
    cases, _ = load_cases(["nothing-matches-*"])
    assert cases == []


def test_list_prints_cases(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--list"]) == 0
    assert "testdev-proxy" in capsys.readouterr().out


def test_mpqemu_case_starts_and_ends_its_server(tmp_path: Path) -> None:
    case = ServedCase("none", "testdev", "testdev", "true", name="t")
    with contextlib.ExitStack() as stack:
        attachment = case.start(stack, tmp_path)
        assert isinstance(attachment, Attachment)
        assert attachment.shared_memory
        assert attachment.pass_fds and f"fd={attachment.pass_fds[0]}" in attachment.qemu_args[-1]
    # the server saw its peer go away (or was ended) and wrote its log
    assert case.server_log is not None and case.server_log.exists()
