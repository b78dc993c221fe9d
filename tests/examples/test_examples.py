"""Every program under ``examples/`` runs, as a user would run it: a fresh interpreter, the
repository on the path, nothing imported from the tests (CONVENTIONS: test-tree)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# What each program prints when it got to the end (it also asserts along the way).
EXPECTED = {
    "e1000_loopback.py": "guest received 1 frame",
    "virtio_blk_pci.py": "wrote and read back 1536 bytes",
    "snapshot_mid_io.py": "after restore: 9 requests completed",
    "vfio_user_blk.py": "wrote and read back 2048 bytes over vfio-user",
}


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, f"{name} failed:\n{run.stdout}\n{run.stderr}"
    assert EXPECTED[name] in run.stdout, run.stdout
    assert "Traceback" not in run.stderr, run.stderr
