"""``devmodels conformance --faults`` end to end: a real guest, a real fault, the matrix.

Every fault row also runs in ``test_matrix`` (they are registered conformance cases); this
test checks the ``--faults`` mode itself on its quickest row (virtio_blk against a media
error, about 20 s under TCG): the row passes and the matrix prints the expected and the
observed behaviour and the driver's verdict.
"""

from __future__ import annotations

import json

import pytest

from harness.conformance.cli import main
from harness.qemu.binaries import QEMU_11_1
from harness.qemu.launcher import qemu_available
from tests.prerequisites import need

pytestmark = pytest.mark.guest

ROW = "fault-virtio-blk-media-error-vfio-user"


@pytest.fixture(scope="module", autouse=True)
def _need_qemu() -> None:
    need(qemu_available())
    need(QEMU_11_1.unavailable())


def test_faults_mode_prints_expected_and_observed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--faults", "--only", ROW, "--timeout", "240"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "driver x fault -> expected / observed" in out
    assert "virtio_blk x disk.media-error (read, LBA 65539)" in out and "PASS, driver as expected" in out
    assert "expected: the device answers VIRTIO_BLK_S_IOERR" in out
    assert "observed: block_sector: block layer errors at sectors" in out


def test_faults_mode_lists_and_speaks_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--faults", "--list"]) == 0
    listed = capsys.readouterr().out
    assert ROW in listed and "fault-e1000-tx-hang-vfio-user" in listed and "fault-virtio-net-link-flap" in listed
    assert main(["--faults", "--only", "no-such-row", "--json"]) == 1  # nothing ran
    assert json.loads(capsys.readouterr().out) == []
