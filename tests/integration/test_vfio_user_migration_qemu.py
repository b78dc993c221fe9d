"""What QEMU 11.1 does when a guest with a vfio-user device migrates (issue 15 item 3).

It does not refuse. ``hw/vfio-user/pci.c`` ``vfio_user_pci_realize`` never calls
``vfio_migration_realize`` (``hw/vfio/migration.c``), which for vfio-pci either registers
the "vfio" live-migration handlers (after ``VFIO_DEVICE_FEATURE_MIGRATION``) or adds a
migration blocker; ``vfio_user_pci_ops`` says "No live migration support yet" and has no
``vfio_save_config``; ``vfio-user-pci`` has no ``enable-migration`` property to ask for
either. So the migration completes without the device: QEMU never sends
``VFIO_USER_DEVICE_FEATURE`` to either server, ``query-migrate`` counts 0 vfio bytes, and
the destination's device is the one its own QEMU reset at realize (the guest reads PCI
Command 0 where it had enabled memory decoding and bus mastering).

This test pins that behaviour down. When it fails because a later QEMU asks for the
device state, the server side is ready (``passthrough.user.migration``, tested against our
client in ``test_vfio_user_migration_process.py``): turn this into the migration row.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from devmodels import HostError
from harness.guest import GuestImage, ImageBuilder
from harness.migration.vfio_user import ServerProcess
from harness.qemu.binaries import QEMU_11_1
from harness.qemu.launcher import QemuLauncher
from tests.prerequisites import missing, need

pytestmark = pytest.mark.guest

GUEST = r"""
set -- $(pci_driver 8086:100e); bdf=$1
report e1000.bound PASS "$bdf $2"
ip link set eth0 up
i=0
while [ $i -lt 600 ]; do
  echo "tick $i cmd=$(od -An -tx2 -j4 -N2 /sys/bus/pci/devices/$bdf/config | tr -d ' ')"
  i=$((i+1)); sleep 0.5
done
"""
TICK = re.compile(r"tick (\d+) cmd=([0-9a-f]{4})")
MEMORY_AND_MASTER = 0x6


@pytest.fixture(scope="module")
def image() -> GuestImage:
    need(QEMU_11_1.unavailable())
    builder = ImageBuilder()
    builder.add_test("migrate_e1000", GUEST)
    try:
        return builder.build(progress=False)
    except HostError as exc:
        missing(f"cannot build the guest image: {exc}")


def _device(sock: Path) -> str:
    return json.dumps({"driver": "vfio-user-pci", "id": "nic0", "socket": {"path": str(sock), "type": "unix"}})


def _command(line: str | None) -> int:
    match = TICK.search(line or "")
    assert match is not None, line
    return int(match.group(2), 16)


def test_qemu_11_1_migrates_a_vfio_user_device_without_its_state(image: GuestImage, tmp_path: Path) -> None:
    trace = {"DEVMODELS_TRACE": "vfio_user.command"}
    servers = [ServerProcess(tmp_path / f"{side}.sock", "e1000", log=tmp_path / f"{side}.log", env=trace)
               for side in ("source", "destination")]
    source = QemuLauncher.for_image(image, test="migrate_e1000", qemu=QEMU_11_1, shared_memory=True, memory_mb=256,
                                    qmp=tmp_path / "source.qmp", args=["-device", _device(servers[0].socket_path)])
    destination = QemuLauncher.for_image(
        image, test="migrate_e1000", qemu=QEMU_11_1, shared_memory=True, memory_mb=256, qmp=tmp_path / "destination.qmp",
        args=["-device", _device(servers[1].socket_path), "-incoming", f"unix:{tmp_path / 'migration.sock'}"])
    try:
        source.start()
        destination.start()
        before = _command(source.wait_for(TICK, 180))
        assert before & MEMORY_AND_MASTER == MEMORY_AND_MASTER, f"Command {before:#06x} before the migration"
        with source.qmp_client() as qmp, destination.qmp_client() as incoming:
            assert incoming.execute("query-status")["status"] == "inmigrate"
            qmp.execute("migrate", uri=f"unix:{tmp_path / 'migration.sock'}")
            deadline = time.monotonic() + 300
            while (status := qmp.execute("query-migrate"))["status"] not in ("completed", "failed", "cancelled"):
                assert time.monotonic() < deadline, status
                time.sleep(0.5)
            assert status["status"] == "completed", status  # no refusal, no blocker
            assert status.get("vfio", {}).get("transferred", 0) == 0, status  # no device state moved
            assert incoming.execute("query-status")["status"] == "running"
        after = _command(destination.wait_for(TICK, 120))
        # The destination's device is the one its QEMU reset at realize, not the guest's.
        assert after & MEMORY_AND_MASTER == 0, f"Command {after:#06x} after the migration"
    finally:
        source.stop()
        destination.stop()
        logs = [server.log_tail(1 << 20) for server in servers]
        for server in servers:
            server.stop()
    for log in logs:
        assert "command='VERSION'" in log  # the trace was on: QEMU talked to both servers
        assert "DEVICE_FEATURE" not in log and "MIG_DATA" not in log  # and never asked for migration
