"""The hostile-guest mode end to end: every device of ours on every attachment path must PASS
every abuse scenario (``devmodels conformance --hostile``; QEMU's own devices, the reference
column, are left out here: they are information, not a requirement).

One guest boot per device x path while everything passes; a scenario that kills a device,
its server or QEMU costs one more boot (the runner restarts after it). The matrix is printed
(``-s``) with the time each column took.
"""

from __future__ import annotations

import shutil
import time

import pytest

from harness.hostile import DEVICE_CLASSES, format_matrix, our_failures, run_hostile, select_targets
from harness.qemu.launcher import qemu_available
from tests.prerequisites import need

pytestmark = [pytest.mark.guest, pytest.mark.slow]

TARGETS = select_targets(reference=False)


@pytest.fixture(scope="module", autouse=True)
def _prerequisites() -> None:
    need(qemu_available())
    need(None if shutil.which("gcc") else "gcc is not installed (apt-get install gcc libc6-dev)")


def test_every_device_class_has_an_attachment_path_of_ours() -> None:
    assert {device for device, _ in TARGETS} == set(DEVICE_CLASSES)


def test_our_devices_pass_every_hostile_scenario() -> None:
    began = time.monotonic()
    columns = run_hostile(TARGETS, progress=lambda line: print(line, flush=True))
    print(format_matrix(columns))
    print(f"hostile mode: {len(columns)} columns, {sum(c.boots for c in columns)} boots, "
          f"{time.monotonic() - began:.0f} s")
    failures = our_failures(columns)
    assert not failures, "\n".join(
        f"{c.device} / {c.path.label} / {name}: {c.cell(name).outcome.value}: {c.cell(name).detail}"
        for c, name in failures)
