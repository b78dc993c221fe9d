"""The golden snapshot files: one per device kind, written by this version of the code.

``tests/golden/snapshots/v1/KIND.json`` were written by ``python3 -m
tests.unit.devmodels.snapshot_golden --write v1``; each is a device after a driver used it
(negotiated, programmed rings, moved data), taken at its quiesce point. A later version
must still load them (``devmodels._state`` rule 8): never edit or delete a set; when a
layout changes, bump its version, teach the reader the old one, and write a new set
beside the old ones.

``SCENES`` builds each device in its golden state on a fresh machine; ``media`` opens the
backends that rebuild it (the restorer's, as ``harness.snapshot`` rule 2 describes). The
test that loads the sets is ``test_snapshot_file.py``; a layout changed without a new set
fails there, since ``from_dict`` refuses missing and unknown fields.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmodels import Machine, snapshot_file
from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom
from devmodels.ahci import defs as ahci_defs
from devmodels.ahci.testing import AhciDriver
from devmodels.backends import MemoryDiskBackend
from devmodels.backends.net import LoopbackBackend
from devmodels.e1000 import E1000
from devmodels.e1000.testing import E1000Driver
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as tr
from virtio.blk import VirtioBlkDevice
from virtio.blk.testing import BlkDriver
from virtio.device import RecordingTransport
from virtio.net import VirtioNetDevice
from virtio.net.testing import NetDriver
from virtio.transport import VirtioPciFunction
from virtio.transport.testing import PciDriver

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "snapshots"
RAM = 16 << 20
DISK = 1 << 20
CD = 64 * 2048
MAC = bytes.fromhex("525400abcdef")


def disk_image() -> bytes:
    """The disk every golden disk device sees (a pattern, so the data is checkable)."""
    return bytes((i * 7 + (i >> 9)) & 0xFF for i in range(DISK))


def cd_image() -> bytes:
    """The CD every golden AHCI CD drive holds."""
    return b"CD001" * (CD // 5) + bytes(CD % 5)


@dataclass
class Scene:
    """A device in its golden state, with the backends it was built with."""

    device: Any
    backends: list[Any] = field(default_factory=list)
    machine: Machine | None = None

    def close(self) -> None:
        for backend in self.backends:
            if backend is not None:
                backend.close()
        if self.machine is not None:
            self.machine.close()


def _testdev() -> Scene:
    machine = Machine(ram_size=RAM, ram_backing="bytearray")
    device = PciTestDevice(machine.memory)
    machine.add_pci(device)
    info = next(i for i in machine.enumerate() if i.vendor_id == tr.TESTDEV_VENDOR_ID)
    bar0 = next(b.address for b in info.bars if b.index == 0)
    assert bar0 is not None
    machine.memory.write(0x1000, b"golden testdev")
    for reg, value, size in ((tr.SCRATCH, 0xFEEDF00D, 4), (tr.DMA_SRC, 0x1000, 8), (tr.DMA_DST, 0x3000, 8),
                             (tr.DMA_LEN, 14, 4), (tr.DMA_CMD, tr.DMA_CMD_START, 4)):
        machine.mmio.write(bar0 + reg, size, value)
    return Scene(device, [], machine)


def _e1000() -> Scene:
    machine = Machine(ram_size=RAM, ram_backing="bytearray")
    host, wire = LoopbackBackend.pair(capacity=64)
    device = E1000(machine.memory, wire, mac=MAC, msi=True, posted_writes=True)
    machine.add_pci(device)
    driver = E1000Driver(machine, device)
    driver.probe()
    driver.open()
    driver.poll()
    driver.xmit(b"\xff" * 6 + driver.mac + b"\x08\x06" + bytes(46))
    device.quiesce()
    device.receive_frame(driver.mac + b"\x02" * 6 + b"\x08\x00" + bytes(46))
    driver.poll()
    driver.advance(1_000_000)
    host.receive(64)
    return Scene(device, [host, wire], machine)


def _ahci() -> Scene:
    machine = Machine(ram_size=RAM, ram_backing="bytearray")
    disk = MemoryDiskBackend(DISK, data=disk_image())
    cd = MemoryDiskBackend(CD, readonly=True, data=cd_image(), logical_block_size=2048)
    device = AhciController(machine.memory, ports=3, msi=True)
    device.attach(0, AtaDisk(disk, serial="GOLDEN0001"))
    device.attach(1, AtapiCdrom(cd))
    driver = AhciDriver.for_controller(device, machine.memory, 0x100000, 0x100000)
    driver.reset_hba()
    driver.start_port(0)
    driver.start_port(1)
    driver.identify(0)
    driver.set_features(0, ahci_defs.SETFEATURES_WC_OFF)
    buf = driver.alloc(1024)
    machine.memory.write(buf, b"golden sector".ljust(1024, b"."))
    driver.rw_dma(0, 8, 2, buf, write=True)
    driver.rw_dma(0, 0, 1, buf, write=False)
    driver.packet(1, bytes([ahci_defs.GPCMD_PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1]).ljust(12, b"\0"), 0)
    return Scene(device, [disk, cd, None], machine)


def _blk(pci: bool) -> Scene:
    machine = Machine(ram_size=RAM, ram_backing="bytearray")
    disk = MemoryDiskBackend(DISK, data=disk_image())
    device = VirtioBlkDevice(machine.memory, disk, num_queues=2, queue_size=64, serial="golden-blk")
    if pci:
        function = VirtioPciFunction(device)
        machine.add_pci(function)
        machine.enumerate()
        driver = BlkDriver(PciDriver.for_function(machine, function), queue_size=32)
    else:
        device.attach(RecordingTransport())
        driver = BlkDriver(device, queue_size=32)
    driver.write(3, b"golden block".ljust(512, b"\0"))
    driver.read(3, 1)
    driver.write(5, bytes(1024), queue=1)
    return Scene(function if pci else device, [disk], machine)


def _net(pci: bool) -> Scene:
    machine = Machine(ram_size=RAM, ram_backing="bytearray")
    host, wire = LoopbackBackend.pair(capacity=64)
    device = VirtioNetDevice(machine.memory, wire, mac=MAC, queue_pairs=2, queue_size=64)
    if pci:
        function = VirtioPciFunction(device)
        machine.add_pci(function)
        machine.enumerate()
        driver = NetDriver(PciDriver.for_function(machine, function), queue_size=32, rx_buffers=8)
    else:
        device.attach(RecordingTransport())
        driver = NetDriver(device, queue_size=32, rx_buffers=8)
    driver.send(b"\xff" * 6 + MAC + b"\x08\x00" + bytes(50))
    driver.reap_tx()
    host.send(MAC + b"\x02" * 6 + b"\x08\x00" + bytes(50))
    device.poll_rx()
    driver.received()
    host.receive(64)
    return Scene(function if pci else device, [host, wire], machine)


SCENES: dict[str, Callable[[], Scene]] = {
    "testdev": _testdev,
    "e1000": _e1000,
    "ahci": _ahci,
    "virtio-blk": lambda: _blk(False),
    "virtio-blk-pci": lambda: _blk(True),
    "virtio-net": lambda: _net(False),
    "virtio-net-pci": lambda: _net(True),
}
"""Every kind of ``harness.snapshot.all_kinds()``, in its golden state."""


def media(kind: str) -> tuple[list[Any], list[Any]]:
    """Fresh backends to rebuild a golden device of ``kind`` with, and the host ends to
    close beside them (the restorer's resources)."""
    if kind in ("e1000", "virtio-net", "virtio-net-pci"):
        host, wire = LoopbackBackend.pair(capacity=64)
        return [wire], [host, wire]
    if kind in ("virtio-blk", "virtio-blk-pci"):
        disk = MemoryDiskBackend(DISK, data=disk_image())
        return [disk], [disk]
    if kind == "ahci":
        disk = MemoryDiskBackend(DISK, data=disk_image())
        cd = MemoryDiskBackend(CD, readonly=True, data=cd_image(), logical_block_size=2048)
        return [disk, cd, None], [disk, cd]
    return [], []


def write(version: str) -> list[Path]:
    """Write a golden set (never over an existing one)."""
    folder = GOLDEN / version
    if folder.exists():
        raise SystemExit(f"{folder} exists: golden sets are never rewritten (write a new set)")
    folder.mkdir(parents=True)
    written = []
    for kind, scene in SCENES.items():
        built = scene()
        try:
            data = snapshot_file.save(built.device, indent=1)
        finally:
            built.close()
        path = folder / f"{kind}.json"
        path.write_bytes(data + b"\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="SET", required=True, help="the new set's folder name (v2, v3, ...)")
    args = parser.parse_args(argv)
    for path in write(args.write):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
