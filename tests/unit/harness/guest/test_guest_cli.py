from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.guest.cli import main


def test_kernel_needs_modules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--kernel", str(tmp_path / "k")]) == 2
    assert "--modules" in capsys.readouterr().err


def test_builds_from_given_files_and_prints_json(fake_kernel: Any, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "t.sh"
    script.write_text("check ok true\n")
    extra = tmp_path / "data.txt"
    extra.write_text("x")
    argv = ["--kernel", str(fake_kernel.kernel), "--modules", str(fake_kernel.modules), "--no-default-modules",
            "--module", "alpha", "--script", str(script), "--test", f"named={script}",
            "--file", f"/etc/data.txt={extra}", "--cache-dir", str(tmp_path / "cache"), "--json", "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kernel_version"] == fake_kernel.release
    assert out["modules"] == ["alpha"] and "named" in out["tests"] and out["from_cache"] is False
    assert Path(out["initrd"]).is_file() and Path(out["kernel"]).is_file()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["from_cache"] is True


def test_missing_module_is_reported_not_raised(fake_kernel: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--kernel", str(fake_kernel.kernel), "--modules", str(fake_kernel.modules), "--no-default-modules",
            "--module", "nosuch", "--cache-dir", str(tmp_path)]
    assert main(argv) == 1
    assert "nosuch" in capsys.readouterr().err


def test_bad_pair_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--test", "noequals"])
