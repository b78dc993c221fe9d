"""End to end, in process: firmware enumeration, a driver's initialization through config
cycles and BAR/MMIO accesses, and real queue I/O (``virtio.testing`` ring simulator) with
MSI-X, INTx and the virtio-mmio interrupt line, split and packed rings.
"""

from __future__ import annotations

from typing import Any

import pytest

from devmodels import DenialOfService, Machine
from virtio.defs import (
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_ISR_CONFIG,
    VIRTIO_PCI_ISR_QUEUE,
)
from virtio.features import bit
from virtio.testing import make_driver
from virtio.transport.testing import ECHO_F_XOR, MmioDriver, PciDriver, TransportDriver

from .conftest import MmioRig, PciRig, make_mmio, make_pci

V1 = bit(VIRTIO_F_VERSION_1)
RING = bit(VIRTIO_F_RING_RESET) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX)
LIVE = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
MSI_ADDRESS = 0xFEE0_0000


def bring_up(driver: TransportDriver, machine: Machine, features: int, *, size: int = 16, msix: bool = False) -> list[Any]:
    """§3.1.1 through the transport; returns one ring simulator per queue."""
    negotiated = driver.negotiate(features)
    assert negotiated == features
    packed = bool(features & bit(VIRTIO_F_RING_PACKED))
    if msix:
        assert isinstance(driver, PciDriver)
        driver.enable_msix([(MSI_ADDRESS, 0x50 + v) for v in range(3)])
        driver.write_common("config_msix_vector", 0)
    rings = []
    for q in range(2):
        ring = make_driver(
            machine.memory, size, packed=packed, base=0x10_0000 * (q + 1), event_idx=bool(features & bit(VIRTIO_F_EVENT_IDX))
        )
        layout = ring.layout
        if isinstance(driver, PciDriver):
            ok = driver.setup_queue(q, size, layout.desc_addr, layout.driver_addr, layout.device_addr, vector=q + 1 if msix else None)
        else:
            ok = driver.setup_queue(q, size, layout.desc_addr, layout.driver_addr, layout.device_addr)
        assert ok
        rings.append(ring)
    driver.write_config(4, 1, 0x20)  # the echo XOR key
    driver.driver_ok()
    assert driver.read_status() == LIVE
    return rings


def send(driver: TransportDriver, ring: Any, q: int, payloads: list[bytes], *, indirect: bool = False) -> None:
    for payload in payloads:
        ring.add([payload[:3], payload[3:]], [len(payload)], indirect=indirect)
    if ring.kick():
        driver.notify(q)


def xor(data: bytes) -> bytes:
    return bytes(b ^ 0x20 for b in data)


# -- PCI -------------------------------------------------------------------------------------------


def test_pci_echo_with_msix(machine: Machine) -> None:
    rig = make_pci(machine, features=RING)
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR), msix=True)
    send(rig.driver, rings[1], 1, [b"hello world", b"virtio"], indirect=True)
    used = rings[1].reap()
    assert [u.read(machine.memory) for u in used] == [xor(b"hello world"), xor(b"virtio")]
    assert [m.data for m in machine.irq.msi] == [0x52]  # queue 1's vector, once for the batch
    assert machine.irq.msi[0].address == MSI_ADDRESS
    assert not rig.intx and rig.function.isr == 0
    send(rig.driver, rings[0], 0, [b"again"])
    assert rings[0].reap()[0].read(machine.memory) == xor(b"again")
    assert machine.irq.msi[-1].data == 0x51


def test_pci_echo_with_intx(machine: Machine) -> None:
    rig = make_pci(machine, features=RING)
    rings = bring_up(rig.driver, machine, V1 | bit(ECHO_F_XOR))
    send(rig.driver, rings[0], 0, [b"legacy interrupts"])
    assert rig.intx
    assert rig.driver.read_isr() == VIRTIO_PCI_ISR_QUEUE
    assert not rig.intx
    assert rings[0].reap()[0].read(machine.memory) == xor(b"legacy interrupts")
    assert machine.irq.msi == []


def test_pci_intx_only_function(machine: Machine) -> None:
    rig = make_pci(machine, msix_vectors=0, features=RING)
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR))
    send(rig.driver, rings[1], 1, [b"no msi here"])
    assert rig.intx and rig.driver.read_isr() == VIRTIO_PCI_ISR_QUEUE
    assert rings[1].reap()[0].read(machine.memory) == xor(b"no msi here")


def test_pci_event_idx_suppresses_notifications(machine: Machine) -> None:
    rig = make_pci(machine, features=RING)
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR), msix=True)
    rings[0].set_interrupts(False)
    send(rig.driver, rings[0], 0, [b"quiet"])
    assert len(rings[0].reap()) == 1
    assert machine.irq.msi == []


def test_pci_packed_rings(machine: Machine) -> None:
    rig = make_pci(machine, features=RING | bit(VIRTIO_F_RING_PACKED))
    rings = bring_up(rig.driver, machine, V1 | RING | bit(VIRTIO_F_RING_PACKED) | bit(ECHO_F_XOR), size=12, msix=True)
    for round_ in range(4):  # wrap the 12-entry ring
        send(rig.driver, rings[0], 0, [b"packed %d" % round_, b"ring %d" % round_, b"wrap %d" % round_])
        assert [u.read(machine.memory) for u in rings[0].reap()] == [
            xor(b"packed %d" % round_), xor(b"ring %d" % round_), xor(b"wrap %d" % round_)
        ]
    assert all(q.packed for q in rig.device.queues)


def test_pci_config_change_notification(machine: Machine) -> None:
    rig = make_pci(machine, features=RING)
    bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR), msix=True)
    generation = rig.driver.read_common("config_generation")
    rig.device.set_link(False)
    assert machine.irq.msi[-1].data == 0x50
    assert rig.driver.read_common("config_generation") != generation
    assert rig.driver.read_config(5, 1) == 0


def test_pci_broken_ring_needs_reset_then_recovers(machine: Machine) -> None:
    rig = make_pci(machine, features=RING)
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR), msix=True)
    rings[0].raw_publish([0], idx=40)  # §2.7.6.1: more than the queue size ahead
    rig.driver.notify(0)
    assert rig.driver.read_status() == LIVE | DEVICE_NEEDS_RESET
    assert isinstance(rig.device.error, DenialOfService)
    assert machine.irq.msi[-1].data == 0x50  # §2.1.2: configuration change notification
    assert rig.function.isr & VIRTIO_PCI_ISR_CONFIG
    send(rig.driver, rings[1], 1, [b"ignored"])  # sticky: nothing is processed
    assert rings[1].reap() == []
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR), msix=True)
    send(rig.driver, rings[0], 0, [b"fresh start"])
    assert rings[0].reap()[0].read(machine.memory) == xor(b"fresh start")


def test_pci_misaligned_ring_breaks_on_first_use(machine: Machine) -> None:
    rig = make_pci(machine, features=RING)
    d = rig.driver
    d.negotiate(V1)
    assert d.setup_queue(0, 16, 0x10_0008, 0x11_0000, 0x12_0000)  # descriptors need 16-byte alignment
    d.driver_ok()
    d.notify(0)
    assert d.read_status() & DEVICE_NEEDS_RESET
    assert d.read_isr() == VIRTIO_PCI_ISR_CONFIG


def test_pci_queue_reset_mid_stream(machine: Machine) -> None:
    rig = make_pci(machine, features=RING)
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR), msix=True)
    send(rig.driver, rings[0], 0, [b"before"])
    rings[0].reap()
    rig.driver.write_common("queue_select", 0)
    rig.driver.write_common("queue_reset", 1)
    assert rig.driver.read_common("queue_reset") == 0 and rig.driver.read_common("queue_enable") == 0
    fresh = make_driver(machine.memory, 8, base=0x30_0000, event_idx=True)
    layout = fresh.layout
    assert rig.driver.setup_queue(0, 8, layout.desc_addr, layout.driver_addr, layout.device_addr, vector=2)
    send(rig.driver, fresh, 0, [b"after reset"])
    assert fresh.reap()[0].read(machine.memory) == xor(b"after reset")
    assert machine.irq.msi[-1].data == 0x52


def test_pci_budget_leaves_work_pending(machine: Machine) -> None:
    rig = make_pci(machine, features=RING)
    rig.device.budget = 2
    rings = bring_up(rig.driver, machine, V1 | bit(ECHO_F_XOR), msix=True)
    send(rig.driver, rings[0], 0, [b"%d" % i * 4 for i in range(5)])
    assert len(rings[0].reap()) == 2 and rig.device.pending == {0}
    while rig.device.run_pending():
        pass
    assert len(rings[0].reap()) == 3


def test_pci_cfg_access_window_drives_the_device(machine: Machine) -> None:
    """The whole initialization through VIRTIO_PCI_CAP_PCI_CFG, with BAR decode switched off."""
    rig = make_pci(machine, features=RING)
    d = rig.driver
    machine.config_write(0, d.devfn, 0x04, 2, 0x0004)  # Command: bus master only, no memory decode
    common = d.caps[VIRTIO_PCI_CAP_COMMON_CFG].offset
    for status in (ACKNOWLEDGE, ACKNOWLEDGE | DRIVER):
        d.cfg_access(common + 20, 1, status)
    d.cfg_access(common + 8, 4, 1)
    d.cfg_access(common + 12, 4, 1)  # VERSION_1
    d.cfg_access(common + 20, 1, ACKNOWLEDGE | DRIVER | FEATURES_OK)
    assert d.cfg_access(common + 20, 1) == ACKNOWLEDGE | DRIVER | FEATURES_OK
    ring = make_driver(machine.memory, 16, base=0x10_0000)
    for offset, value in ((32, ring.layout.desc_addr), (40, ring.layout.driver_addr), (48, ring.layout.device_addr)):
        d.cfg_access(common + offset, 4, value)
    d.cfg_access(common + 28, 2, 1)
    d.cfg_access(common + 20, 1, LIVE)
    notify = d.caps[VIRTIO_PCI_CAP_NOTIFY_CFG].cap.offset
    ring.add([b"through config space"], [32])
    ring.kick()
    d.cfg_access(notify, 2, 0)
    assert ring.reap()[0].read(machine.memory) == b"through config space"  # no XOR negotiated
    assert d.cfg_access(d.caps[VIRTIO_PCI_CAP_ISR_CFG].offset, 1) == VIRTIO_PCI_ISR_QUEUE  # read-to-clear
    assert not rig.intx


# -- MMIO ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True])
def test_mmio_echo(machine: Machine, packed: bool) -> None:
    rig: MmioRig = make_mmio(machine, features=RING | bit(VIRTIO_F_RING_PACKED))
    features = V1 | RING | bit(ECHO_F_XOR) | (bit(VIRTIO_F_RING_PACKED) if packed else 0)
    rings = bring_up(rig.driver, machine, features, size=8)
    send(rig.driver, rings[1], 1, [b"over mmio", b"second"], indirect=True)
    assert rig.level
    d: MmioDriver = rig.driver
    status = d.interrupt_status()
    d.ack(status)
    assert status == VIRTIO_MMIO_INT_VRING and not rig.level
    assert [u.read(machine.memory) for u in rings[1].reap()] == [xor(b"over mmio"), xor(b"second")]


def test_mmio_broken_ring_and_config_interrupt(machine: Machine) -> None:
    rig = make_mmio(machine, features=RING)
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR))
    rings[0].raw_desc(0, 0x1000, 16, 0x1, 99)  # NEXT to a descriptor outside the table
    rings[0].raw_publish([0])
    rig.driver.notify(0)
    assert rig.driver.read_status() & DEVICE_NEEDS_RESET
    assert rig.driver.interrupt_status() == VIRTIO_MMIO_INT_CONFIG and rig.level
    rig.driver.write_status(0)
    assert not rig.level and rig.driver.interrupt_status() == 0


def test_mmio_queue_reset(machine: Machine) -> None:
    rig = make_mmio(machine, features=RING)
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR))
    assert rig.driver.reset_queue(1) == 0
    fresh = make_driver(machine.memory, 4, base=0x40_0000, event_idx=True)
    assert rig.driver.setup_queue(1, 4, fresh.layout.desc_addr, fresh.layout.driver_addr, fresh.layout.device_addr)
    send(rig.driver, fresh, 1, [b"requeued"])
    assert fresh.reap()[0].read(machine.memory) == xor(b"requeued")
    send(rig.driver, rings[0], 0, [b"untouched"])
    assert rings[0].reap()[0].read(machine.memory) == xor(b"untouched")


def test_snapshot_mid_stream_then_continue(machine: Machine) -> None:
    rig: PciRig = make_pci(machine, features=RING)
    rings = bring_up(rig.driver, machine, V1 | RING | bit(ECHO_F_XOR), msix=True)
    send(rig.driver, rings[0], 0, [b"one"])
    rings[0].reap()
    state = rig.function.state()
    rings[0].add([b"two"], [8])
    rings[0].kick()
    rig.function.restore(state)  # the device forgets nothing it had, learns nothing new
    rig.driver.notify(0)
    assert rings[0].reap()[0].read(machine.memory) == xor(b"two")
