"""A guest doing I/O through e1000, AHCI and testdev migrates from one ``devmodels vfio-user``
process to another (issue 15 item 3), driven by our own vfio-user client: dirty-logged
precopy, STOP, STOP_COPY, RESUMING; data verified before and after.

QEMU 11.1's vfio-user-pci never asks for device state (test_vfio_user_migration_qemu.py
shows it), so our client is the VMM here.
"""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

import pytest

from devmodels.e1000 import regs as er
from devmodels.e1000.testing import E1000Driver
from harness.migration.scenarios import MigrationCheckFailed, _Clock, _frame, run
from harness.migration.vfio_user import ServerProcess, Vmm, migrate
from passthrough.defs import VFIO_DEVICE_STATE_ERROR, VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_STOP
from passthrough.errors import VfioUserError

WINDOW_CHECK = {
    "testdev": "the precopy-window DMA reached the destination RAM",
    "e1000": "the precopy-window frame is in the destination's ring",
    "ahci": "its data is in the destination's RAM",
}


@pytest.mark.parametrize("device", sorted(WINDOW_CHECK))
def test_guest_io_survives_the_migration(device: str, tmp_path: Path) -> None:
    result = run(device, tmp_path)
    assert any(WINDOW_CHECK[device] in check for check in result.checks), result.checks
    downtime = result.downtime
    assert downtime.dirty_pages >= 1 and downtime.state_bytes > 0
    assert downtime.total > 0  # measured by python3 -m harness.migration, not judged here
    print(f"{device}: {downtime.line()}")


@pytest.mark.parametrize("device", sorted(WINDOW_CHECK))
def test_without_the_dirty_log_the_precopy_window_is_lost(device: str, tmp_path: Path) -> None:
    """What the device wrote while RAM was copied reaches the destination only through the
    DMA dirty log: leave the dirty pages out and the guest sees the difference."""
    with pytest.raises(MigrationCheckFailed, match=WINDOW_CHECK[device].replace("'", ".")):
        run(device, tmp_path, copy_dirty=False)


def test_a_destination_built_differently_refuses_the_state(tmp_path: Path) -> None:
    source = ServerProcess(tmp_path / "src.sock", "e1000", log=tmp_path / "src.log")
    destination = ServerProcess(tmp_path / "dst.sock", "e1000", ["--opt", "mitigation=off"], log=tmp_path / "dst.log")
    vmms: list[Vmm] = []
    try:
        vmms += [Vmm.connect(source.socket_path), Vmm.connect(destination.socket_path)]
        with pytest.raises(VfioUserError) as info:
            migrate(*vmms)
        assert info.value.errno == errno.EINVAL
        assert vmms[1].client.migration_state() == VFIO_DEVICE_STATE_ERROR
        assert "args.mitigation" in destination.log_tail()  # named, not a derived field
        vmms[1].client.reset()
        assert vmms[1].client.migration_state() == VFIO_DEVICE_STATE_RUNNING
        assert source.alive and destination.alive
    finally:
        for vmm in vmms:
            vmm.close()
        source.stop()
        destination.stop()


def test_a_stopped_device_takes_nothing_from_its_backend(tmp_path: Path) -> None:
    """In STOP the device writes no guest RAM (a frame arriving from the wire would land
    after the VMM's last dirty-log report, lost to the destination): it waits in the
    backend until the device runs again (passthrough.user.migration rule 5)."""
    wire_path = tmp_path / "wire.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as wire:
        wire.bind(str(wire_path))
        wire.listen(1)
        wire.settimeout(20)
        server = ServerProcess(tmp_path / "nic.sock", "e1000", ["--backend", f"socket:{wire_path}"],
                               log=tmp_path / "nic.log")
        link, _ = wire.accept()
        vmm = Vmm.connect(server.socket_path)
        try:
            driver = E1000Driver(vmm.machine, _Clock())  # type: ignore[arg-type]
            driver.probe()
            driver.open()
            descriptor = driver.rx_ring + 16 * driver.rx_clean
            vmm.client.set_migration_state(VFIO_DEVICE_STATE_STOP)
            vmm.client.dma_logging_start([(0, vmm.ram_size)])
            link.send(_frame(driver.mac, 7, b"while stopped"))
            time.sleep(0.5)
            assert not any(vmm.client.dma_logging_report(0, vmm.ram_size))
            assert not vmm.machine.memory.load_u8(descriptor + 12) & er.RXD_STAT_DD
            vmm.client.set_migration_state(VFIO_DEVICE_STATE_RUNNING)
            deadline = time.monotonic() + 20
            while not vmm.machine.memory.load_u8(descriptor + 12) & er.RXD_STAT_DD:
                assert time.monotonic() < deadline, "the frame never arrived once running"
                time.sleep(0.01)
            assert [f.data for f in driver.clean_rx()] == [_frame(driver.mac, 7, b"while stopped")]
            assert any(vmm.client.dma_logging_report(0, vmm.ram_size))
        finally:
            vmm.close()
            link.close()
            server.stop()
