"""Server-side interrupt wiring (ServerInterrupts) on a PciTestDevice."""

from __future__ import annotations

import errno
import os

import pytest

from devmodels import GuestMemory
from devmodels.pci import defs as pcidefs
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r
from passthrough.defs import (
    VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_INTX_IRQ_INDEX as INTX,
    VFIO_PCI_MSI_IRQ_INDEX as MSI,
    VFIO_PCI_MSIX_IRQ_INDEX as MSIX,
)
from passthrough.errors import VfioUserReject
from passthrough.user.irqs import MSI_TAG_ADDRESS, ServerInterrupts

EVT = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
OFF = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER


@pytest.fixture
def dev():
    device = PciTestDevice(GuestMemory())
    device.realize()
    device.config_write(pcidefs.PCI_COMMAND, 2, pcidefs.PCI_COMMAND_MEMORY | pcidefs.PCI_COMMAND_MASTER)
    return device


def efd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK)


def count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def raise_irq(device: PciTestDevice) -> None:
    device.bar_write(0, r.IRQ_RAISE, 4, r.IRQ_DMA_DONE)


def ack(device: PciTestDevice) -> None:
    device.bar_write(0, r.IRQ_ACK, 4, 0xFF)


def test_intx_is_automasked_until_unmask(dev: PciTestDevice) -> None:
    irqs = ServerInterrupts(dev)
    fd = efd()
    irqs.set_irqs(INTX, EVT, 0, 1, b"", [fd])
    raise_irq(dev)
    assert count(fd) == 1
    ack(dev)
    raise_irq(dev)
    assert count(fd) == 0  # masked since the first edge
    irqs.set_irqs(INTX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1, b"", [])
    assert count(fd) == 1  # still asserted: fires on unmask
    ack(dev)
    irqs.set_irqs(INTX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1, b"", [])
    assert count(fd) == 0
    irqs.set_irqs(INTX, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK, 0, 1, b"\0", [])
    assert not irqs.intx.masked  # bool false: no action
    irqs.close()


def test_msix_wiring_programs_the_function_with_tags(dev: PciTestDevice) -> None:
    irqs = ServerInterrupts(dev)
    fds = [efd(), efd()]
    irqs.set_irqs(MSIX, EVT, 0, 2, b"", fds)
    assert dev.msix_enabled and irqs.active == MSIX
    assert dev.msix is not None and dev.msix.entry(1) == (MSI_TAG_ADDRESS, 1, False)
    raise_irq(dev)
    assert [count(fd) for fd in fds] == [1, 0]
    dev.signal(1)
    assert [count(fd) for fd in fds] == [0, 1]
    # The bus master gate of the function still applies.
    dev.config_write(pcidefs.PCI_COMMAND, 2, pcidefs.PCI_COMMAND_MEMORY)
    dev.signal(0)
    assert count(fds[0]) == 0
    irqs.set_irqs(MSIX, OFF, 0, 0, b"", [])
    assert not dev.msix_enabled and irqs.active is None
    irqs.close()


def test_msix_enabled_with_every_vector_masked_keeps_messages_pending(dev: PciTestDevice) -> None:
    # QEMU enables MSI-X with eventfd -1 for vectors the guest left masked; vfio-pci enables
    # the capability, so the device uses MSI-X and a message waits in the PBA (rule 5).
    irqs = ServerInterrupts(dev)
    irqs.set_irqs(MSIX, EVT, 0, 2, b"", [-1, -1])
    assert dev.msix_enabled and irqs.active == MSIX
    raise_irq(dev)
    assert dev.msix is not None and dev.msix.pending(0)
    assert not dev.config_read(pcidefs.PCI_STATUS, 2) & pcidefs.PCI_STATUS_INTERRUPT  # no fallback to INTx
    fd = efd()
    irqs.set_irqs(MSIX, EVT, 0, 1, b"", [fd])  # the guest unmasked vector 0
    assert count(fd) == 1 and not dev.msix.pending(0)
    irqs.set_irqs(MSIX, EVT, 0, 1, b"", [-1])  # masked again (the server closed its eventfd)
    ack(dev)
    raise_irq(dev)
    assert dev.msix.pending(0) and dev.msix.entry(0)[2]
    irqs.close()


def test_msi_wiring(dev: PciTestDevice) -> None:
    irqs = ServerInterrupts(dev)
    fd = efd()
    irqs.set_irqs(MSI, EVT, 0, 1, b"", [fd])
    assert dev.msi_enabled and dev.msi is not None and dev.msi.message(0) == (MSI_TAG_ADDRESS, 0)
    raise_irq(dev)
    assert count(fd) == 1
    irqs.close()
    assert not dev.msi_enabled


def test_only_one_index_at_a_time(dev: PciTestDevice) -> None:
    irqs = ServerInterrupts(dev)
    irqs.set_irqs(INTX, EVT, 0, 1, b"", [efd()])
    with pytest.raises(VfioUserReject) as info:
        irqs.set_irqs(MSIX, EVT, 0, 1, b"", [efd()])
    assert info.value.errno == errno.EINVAL
    irqs.set_irqs(INTX, OFF, 0, 0, b"", [])
    irqs.set_irqs(MSIX, EVT, 0, 1, b"", [efd()])
    irqs.close()


def test_loopback_trigger_with_bools(dev: PciTestDevice) -> None:
    irqs = ServerInterrupts(dev)
    fds = [efd(), efd()]
    irqs.set_irqs(MSIX, EVT, 0, 2, b"", fds)
    irqs.set_irqs(MSIX, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 2, b"\0\1", [])
    assert [count(fd) for fd in fds] == [0, 1]
    irqs.close()


def test_replacing_one_vector_fd(dev: PciTestDevice) -> None:
    irqs = ServerInterrupts(dev)
    first, second, third = efd(), efd(), efd()
    irqs.set_irqs(MSIX, EVT, 0, 2, b"", [first, second])
    irqs.set_irqs(MSIX, EVT, 1, 1, b"", [third])
    with pytest.raises(OSError):
        os.fstat(second)  # replaced and closed
    dev.signal(1)
    assert count(third) == 1
    irqs.close()


def test_reset_keeps_the_wiring(dev: PciTestDevice) -> None:
    irqs = ServerInterrupts(dev)
    fd = efd()
    irqs.set_irqs(MSIX, EVT, 0, 1, b"", [fd])
    dev.reset()
    assert not dev.msix_enabled
    irqs.reapply()
    dev.config_write(pcidefs.PCI_COMMAND, 2, pcidefs.PCI_COMMAND_MASTER)
    raise_irq(dev)
    assert count(fd) == 1
    irqs.close()


def test_full_eventfd_never_blocks(dev: PciTestDevice) -> None:
    irqs = ServerInterrupts(dev)
    fd = efd()
    os.eventfd_write(fd, 0xFFFF_FFFF_FFFF_FFFE)  # the counter's maximum: a write would block
    irqs.set_irqs(MSIX, EVT, 0, 1, b"", [fd])
    raise_irq(dev)  # dropped with a trace event, not a hang
    irqs.close()
