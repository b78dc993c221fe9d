"""Rigs for the transport tests: a machine with the echo device behind PCI or MMIO."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devmodels import Machine, pci_intx_gsi
from devmodels._irq import IrqSource
from virtio.defs import VIRTIO_F_RING_RESET
from virtio.features import bit
from virtio.transport import VirtioMmioDevice, VirtioPciFunction
from virtio.transport.testing import EchoDevice, MmioDriver, PciDriver

MMIO_BASE = 0xD000_0000
MMIO_GSI = 5


@dataclass
class PciRig:
    machine: Machine
    device: EchoDevice
    function: VirtioPciFunction
    driver: PciDriver
    gsi: int

    @property
    def intx(self) -> bool:
        return self.machine.irq.levels.get(self.gsi, False)


@dataclass
class MmioRig:
    machine: Machine
    device: EchoDevice
    transport: VirtioMmioDevice
    driver: MmioDriver

    @property
    def level(self) -> bool:
        return self.machine.irq.levels.get(MMIO_GSI, False)


def make_pci(machine: Machine, *, msix_vectors: int | None = None, queues: int = 2, queue_size: int = 16, features: int = bit(VIRTIO_F_RING_RESET)) -> PciRig:
    device = EchoDevice(machine.memory, queues=queues, queue_size=queue_size, features=features)
    function = VirtioPciFunction(device, msix_vectors=msix_vectors)
    slot = machine.add_pci(function)
    machine.enumerate()
    return PciRig(machine, device, function, PciDriver(machine, slot << 3), pci_intx_gsi(slot, 1))


def make_mmio(machine: Machine, *, queues: int = 2, queue_size: int = 16, features: int = bit(VIRTIO_F_RING_RESET)) -> MmioRig:
    device = EchoDevice(machine.memory, queues=queues, queue_size=queue_size, features=features)
    source: IrqSource = machine.irq.line(MMIO_GSI).source()
    transport = VirtioMmioDevice(device, source)
    machine.mmio.register(MMIO_BASE, transport.size, transport, "virtio-mmio")
    return MmioRig(machine, device, transport, MmioDriver(machine, MMIO_BASE))


@pytest.fixture
def pci(machine: Machine) -> PciRig:
    return make_pci(machine)


@pytest.fixture
def pci_intx_only(machine: Machine) -> PciRig:
    return make_pci(machine, msix_vectors=0)


@pytest.fixture
def mmio(machine: Machine) -> Iterator[MmioRig]:
    yield make_mmio(machine)
