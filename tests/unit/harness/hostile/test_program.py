"""The guest program: built statically by the host's gcc; its scenario tables, read on the host."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.hostile._program import build_program, list_classes, list_scenarios
from harness.hostile._targets import DEVICE_CLASSES, PATHS
from tests.prerequisites import prerequisite

pytestmark = prerequisite(None if shutil.which("gcc") else "gcc is not installed (apt-get install gcc libc6-dev)")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_program(tmp_path_factory.mktemp("cache"))


def test_the_program_is_static_and_cached(program: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert b"ELF" in program.read_bytes()[:4]
    ldd = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr or "statically linked" in ldd.stdout + ldd.stderr
    mtime = program.stat().st_mtime_ns
    assert build_program(program.parents[2]) == program  # same sources: the cached build, not a new one
    assert program.stat().st_mtime_ns == mtime


def test_it_knows_every_device_class_the_paths_serve(program: Path) -> None:
    assert sorted(list_classes(program)) == sorted(DEVICE_CLASSES)
    assert {cls for path in PATHS for cls in path.starters} <= set(DEVICE_CLASSES)


@pytest.mark.parametrize("device", DEVICE_CLASSES)
def test_scenario_tables(program: Path, device: str) -> None:
    table = list_scenarios(program, device)
    assert table[0].index == 0 and table[0].name == "baseline"
    assert [s.index for s in table] == list(range(len(table)))
    assert len({s.name for s in table}) == len(table)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", s.name) and s.what for s in table)
    assert len(table) > 10


def test_an_unknown_class_is_refused(program: Path) -> None:
    proc = subprocess.run([str(program), "floppy", "--list"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_without_its_settings_the_program_says_so(program: Path) -> None:
    # On the host /proc/cmdline has no hostile.* words: it must refuse, never touch hardware.
    proc = subprocess.run([str(program), "testdev"], capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 1 and "HOSTILE-ERROR" in proc.stdout
