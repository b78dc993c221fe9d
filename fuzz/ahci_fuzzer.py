#!/usr/bin/env python3
"""Fuzz target: the AHCI controller with an ATA disk (port 0) and an ATAPI CD-ROM (port 1).

Ops: ABAR (BAR5, region 0) registers, config space (MSI offered), guest RAM (command
lists, tables, PRDTs, FIS areas), ``PUMP`` = the VMM's ``poll()`` after backend
completions, ``BACKEND`` = the host ejects (``event & 1``) or inserts the CD medium
(``change_medium``; only while the port is idle, as the API requires). Snapshots are taken
at a quiesce point, as the snapshot contract requires (``quiesce()`` first, in ``PciRig``).
Healthy after reset means: the in-package libahci simulator
(``devmodels.ahci.testing.AhciDriver``) resets the HBA, starts port 0, IDENTIFYs the disk
and reads back a sector it wrote.

OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    from devmodels import Machine
    from devmodels.ahci import AhciController, AhciState, AtaDisk, AtapiCdrom
    from devmodels.ahci import defs as d
    from devmodels.ahci import regs as r
    from devmodels.ahci.fis import TaskFile
    from devmodels.ahci.testing import AhciDriver, DriverTimeout
    from devmodels.backends import MemoryDiskBackend
    from devmodels.pci import defs as pci
    from fuzz._execute import run_input
    from fuzz._ops import OpKind
    from fuzz._record import Recorder, record
    from fuzz._rig import RAM_SIZE, Finding, PciRig

_DMA_BASE = 0x40000  # the driver simulator's structures
_DMA_SIZE = 0x40000
_CD_SIZE = 64 * 2048
_SIG_ATA = sum(byte << (8 * i) for i, byte in enumerate(d.SIG_ATA))  # PxSIG: count, LBA low/mid/high


class AhciRig(PciRig):
    """An ICH9 AHCI controller with a disk and a CD-ROM (module docstring)."""

    def __init__(self) -> None:
        machine = Machine(ram_size=RAM_SIZE, ram_backing="bytearray")
        self.disk = MemoryDiskBackend(1 << 20)
        self.cd = MemoryDiskBackend(_CD_SIZE, readonly=True, data=b"CD001" * 100, logical_block_size=2048)
        self.device = AhciController(machine.memory, ports=2, msi=True)
        self.device.attach(0, AtaDisk(self.disk))
        self.device.attach(1, AtapiCdrom(self.cd))
        super().__init__(machine, self.device, AhciState)
        self.abar = self.regions[0][1] if self.regions else 0

    def pump(self) -> None:
        """The VMM's completion processing."""
        self.device.poll()

    def _quiesce(self) -> bool:
        for _ in range(8):
            self.device.poll()
            if not self.device.busy and not self.device.resetting:
                return True
        return False

    def backend_event(self, event: int, arg: int) -> None:
        """Eject or insert the CD (module docstring)."""
        if not self._quiesce():
            return
        self.device.change_medium(1, None if event & 1 else self.cd)

    def driver(self) -> AhciDriver:
        """A libahci simulator on ABAR through the machine's bus, polling through ``pump``."""
        bus = self.machine.mmio
        abar = self.abar
        return AhciDriver(
            lambda offset, size: bus.read(abar + offset, size),
            lambda offset, size, value: bus.write(abar + offset, size, value),
            self.machine.memory, _DMA_BASE, _DMA_SIZE, self.pump,
        )

    def health_check(self) -> None:
        """HBA reset, port start, IDENTIFY, a sector written and read back."""
        self.config_write(0x10 + 4 * r.AHCI_ABAR_INDEX, 4, self.abar)
        self.config_write(pci.PCI_COMMAND, 2, pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER)
        driver = self.driver()
        memory = self.machine.memory
        try:
            driver.reset_hba()
            if driver.start_port(0) != _SIG_ATA:
                raise Finding("reset", "port 0 does not report the ATA signature after reset")
            result, data = driver.identify(0)
            if not result.ok or data[0] & 0x80:
                raise Finding("reset", f"IDENTIFY after reset: {result}")
            buf = driver.alloc(1024)
            memory.write(buf, b"health" * 85 + b"ok")
            if not driver.rw_dma(0, 5, 1, buf, write=True).ok or not driver.rw_dma(0, 5, 1, buf + 512, write=False).ok:
                raise Finding("reset", "READ/WRITE DMA EXT failed after reset")
            if memory.read(buf + 512, 512) != memory.read(buf, 512):
                raise Finding("reset", "the sector read back differs from the one written")
        except DriverTimeout as exc:
            raise Finding("reset", f"driver simulator timed out after reset: {exc}") from exc

    def close(self) -> None:
        """Release RAM and both media."""
        self.device.poll()
        super().close()
        self.disk.close()
        self.cd.close()


def build() -> AhciRig:
    """A fresh rig (one per input: runs are deterministic)."""
    return AhciRig()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    run_input(build, data)


# -- seeds (recorded with fuzz._record; the driver's waits become PUMP ops) ------------------


def _driver(rec: Recorder) -> AhciDriver:
    rig = rec.rig
    assert isinstance(rig, AhciRig)
    rec.machine.config_write(0, rig.devfn, pci.PCI_COMMAND, 2, pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER)
    driver = rig.driver()
    driver.poll = lambda: rec.op(OpKind.PUMP)
    driver.reset_hba()
    return driver


def _seed_identify_rw(rec: Recorder) -> None:
    driver = _driver(rec)
    driver.start_port(0)
    driver.identify(0)
    buf = driver.alloc(1024)
    rec.machine.memory.fill(buf, 1024, 0xA5)
    driver.rw_dma(0, 3, 2, buf, write=True)
    driver.rw_dma(0, 3, 1, buf, write=False)
    driver.flush(0)


def _seed_ncq(rec: Recorder) -> None:
    driver = _driver(rec)
    driver.start_port(0)
    buf = driver.alloc(2048)
    for tag in range(3):
        driver.fpdma(0, tag, 10 + tag, 1, buf + 512 * tag, write=bool(tag & 1))
    driver.issue(0, 0b111, queued=True)
    rec.op(OpKind.PUMP)
    driver.wait_slot(0, 2, queued=True)


def _seed_trim_log_features(rec: Recorder) -> None:
    driver = _driver(rec)
    driver.start_port(0)
    driver.trim(0, [(0, 8), (100, 4)])
    driver.read_log(0, 0)
    driver.set_features(0, 0x03, 0x46)  # transfer mode UDMA6
    driver.command(0, TaskFile(command=0xE5))  # CHECK POWER MODE


def _seed_atapi(rec: Recorder) -> None:
    driver = _driver(rec)
    driver.start_port(1)
    driver.identify(1, packet=True)
    driver.packet(1, bytes([0x00]) + bytes(11), 0)  # TEST UNIT READY
    driver.packet(1, bytes([0x03, 0, 0, 0, 18, 0]) + bytes(6), 18)  # REQUEST SENSE
    driver.packet(1, bytes([0x12, 0, 0, 0, 36, 0]) + bytes(6), 36)  # INQUIRY
    driver.packet(1, bytes([0x25]) + bytes(11), 8)  # READ CAPACITY
    driver.packet(1, bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0]), 2048, dma=True)  # READ(10)
    rec.op(OpKind.BACKEND, 1, 0)  # eject
    driver.packet(1, bytes([0x00]) + bytes(11), 0)
    rec.op(OpKind.BACKEND, 0, 0)  # insert


def _seed_error_recovery(rec: Recorder) -> None:
    driver = _driver(rec)
    driver.start_port(0)
    buf = driver.alloc(512)
    driver.rw_dma(0, (1 << 20) // 512 + 5, 1, buf, write=False)  # past the end: TFES
    driver.recover(0)
    driver.fpdma(0, 4, (1 << 20) // 512 + 9, 1, buf, write=False)
    driver.issue(0, 1 << 4, queued=True)
    rec.op(OpKind.PUMP)
    driver.recover(0)
    driver.ncq_error_tag(0)
    rec.op(OpKind.SNAPSHOT)


def _seed_msi_hardreset(rec: Recorder) -> None:
    rig = rec.rig
    assert isinstance(rig, AhciRig)
    msi = rig.device.msi
    assert msi is not None
    rec.machine.config_write(0, rig.devfn, msi.offset + 4, 4, 0xFEE0_0000)
    rec.machine.config_write(0, rig.devfn, msi.offset + 12, 2, 0x51)
    rec.machine.config_write(0, rig.devfn, msi.offset + 2, 2, 1)
    driver = _driver(rec)
    driver.start_port(0)
    driver.hardreset(0)
    driver.identify(0)


SEEDS = {
    "identify-rw-flush": _seed_identify_rw,
    "ncq": _seed_ncq,
    "trim-log-features": _seed_trim_log_features,
    "atapi": _seed_atapi,
    "error-recovery": _seed_error_recovery,
    "msi-hardreset": _seed_msi_hardreset,
}


def seeds() -> dict[str, bytes]:
    """The committed seed corpus, regenerated (``python -m fuzz seeds ahci``)."""
    return {name: record(build, script) for name, script in SEEDS.items()}


if __name__ == "__main__":
    fuzz_main(TestOneInput)
