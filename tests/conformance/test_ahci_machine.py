"""AHCI conformance in an in-process ``Machine``, as QEMU's tests/qtest/ahci-test.c does it:
firmware enumeration, then only config cycles, MMIO through the machine's bus, guest RAM and
the interrupt controller. Tests are named after the AHCI 1.3.1 sections they check."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devmodels import Machine
from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom, TaskFile
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.ahci.testing import AhciDriver
from devmodels.pci.defs import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY
from tests.unit.devmodels.ahci.doubles import ScriptedDisk


class Booted:
    def __init__(self, machine: Machine, disk: ScriptedDisk) -> None:
        self.machine = machine
        self.disk = disk
        hba = AhciController(machine.memory, ports=6)
        hba.attach(0, AtaDisk(disk))
        hba.attach(3, AtapiCdrom(ScriptedDisk(1 << 20, readonly=True)))
        self.slot = machine.add_pci(hba)
        (self.info,) = [i for i in machine.enumerate() if (i.vendor_id, i.device_id) == (0x8086, 0x2922)]
        (self.abar,) = [b.address for b in self.info.bars if b.index == 5]
        devfn = self.slot << 3
        command = machine.config_read(0, devfn, PCI_COMMAND, 2)
        machine.config_write(0, devfn, PCI_COMMAND, 2, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        mmio = machine.mmio
        self.driver = AhciDriver(
            lambda off, size: mmio.read(self.abar + off, size),
            lambda off, size, value: mmio.write(self.abar + off, size, value),
            machine.memory, 8 << 20, 8 << 20, hba.poll,
        )
        self.hba = hba

    def level(self) -> bool:
        return any(self.machine.irq.levels.values())


@pytest.fixture
def booted() -> Iterator[Booted]:
    with Machine(ram_size=16 << 20, ram_backing="bytearray") as machine:
        yield Booted(machine, ScriptedDisk(4 << 20))


def test_pci_class_and_abar(booted: Booted) -> None:
    assert booted.info.class_code == 0x01_06_01
    assert booted.driver.reg(r.CAP) & r.CAP_S64A and booted.driver.reg(r.PI) == 0x3F


def test_spec_10_1_2_software_initialization(booted: Booted) -> None:
    drv = booted.driver
    drv.reset_hba()
    signatures = {}
    for port in range(6):
        if drv.preg(port, r.PxCMD) & (r.PxCMD_ST | r.PxCMD_CR | r.PxCMD_FRE | r.PxCMD_FR):
            pytest.fail(f"port {port} is not idle after HBA reset")
        if port in (0, 3):
            drv.start_port(port)
        signatures[port] = drv.preg(port, r.PxSIG)
    assert signatures[0] == 0x101 and signatures[3] == 0xEB14_0101
    assert all(signatures[p] == 0xFFFF_FFFF for p in (1, 2, 4, 5))


def test_spec_5_5_1_dma_data_integrity_and_intx(booted: Booted) -> None:
    drv = booted.driver
    drv.reset_hba()
    drv.start_port(0)
    pattern = bytes((i * 31 + 7) & 0xFF for i in range(16 * 512))
    src, dst = drv.alloc(len(pattern)), drv.alloc(len(pattern))
    drv.memory.write(src, pattern)
    drv.prepare(0, 4, TaskFile(command=d.ATA_CMD_WRITE_EXT, lba=77, count=16, device=d.ATA_LBA),
                [(src, 4096), (src + 4096, 4096)], write=True)
    drv.issue(0, 1 << 4)
    assert booted.level()  # INTx asserted through the machine's interrupt controller
    result = drv.collect(0, 4)
    assert result.ok and result.prdbc == len(pattern)
    assert not booted.level()
    assert drv.rw_dma(0, 77, 16, dst, write=False).ok
    assert drv.memory.read(dst, len(pattern)) == pattern == bytes(booted.disk.data[77 * 512 : 93 * 512])


def test_spec_6_1_2_task_file_error_halts_until_st_cleared(booted: Booted) -> None:
    drv = booted.driver
    drv.reset_hba()
    drv.start_port(0)
    buf = drv.alloc(512)
    result = drv.rw_dma(0, 1 << 40, 1, buf, write=False)
    assert result.pxis & r.PxIS_TFES and drv.preg(0, r.PxCI) == 1
    ccs = (drv.preg(0, r.PxCMD) & r.PxCMD_CCS_MASK) >> r.PxCMD_CCS_SHIFT
    assert ccs == 0
    drv.recover(0)
    assert drv.identify(0)[0].ok


def test_spec_8_ncq_through_the_machine(booted: Booted) -> None:
    drv = booted.driver
    drv.reset_hba()
    drv.start_port(0)
    buf = drv.alloc(32 * 4096)
    for tag in range(32):
        drv.fpdma(0, tag, tag * 8, 8, buf + tag * 4096, write=tag % 2 == 1)
    drv.issue(0, 0xFFFF_FFFF, queued=True)
    drv.wait(lambda: drv.preg(0, r.PxSACT) == 0, "32 queued commands")
    assert not drv.preg(0, r.PxIS) & r.PxIS_FATAL
