"""The echo device (``virtio.transport.testing.EchoDevice``) as a fuzz subject, and its seeds.

Shared by the ``virtio_pci`` and ``virtio_mmio`` targets: two queues of at most 64
entries, every transport feature the device framework implements offered (packed rings,
EVENT_IDX, INDIRECT_DESC, IN_ORDER, RING_RESET, the echo's XOR), so the fuzzer reaches the
status machine, feature negotiation, queue programming, configuration writes and queue
resets through the transport registers.
"""

from __future__ import annotations

from typing import Any

from devmodels import GuestMemory
from virtio.defs import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
)
from virtio.transport.testing import ECHO_F_XOR, EchoDevice, MmioDriver, PciDriver

from ._ops import OpKind
from ._record import Recorder
from ._virtio import VirtioPciRig, ack_interrupts, bring_up

__all__ = ["make_echo", "ECHO_CHECK", "ECHO_SEEDS", "PCI_ONLY_SEEDS", "FEATURES"]

FEATURES = (
    1 << VIRTIO_F_RING_PACKED | 1 << VIRTIO_F_EVENT_IDX | 1 << VIRTIO_F_INDIRECT_DESC
    | 1 << VIRTIO_F_IN_ORDER | 1 << VIRTIO_F_RING_RESET
)


def make_echo(memory: GuestMemory) -> EchoDevice:
    """The device under fuzz."""
    return EchoDevice(memory, queues=2, queue_size=64, features=FEATURES, max_len=4096)


def _ping(ring: Any) -> bytes:
    ring.add([b"ping"], [16])
    return b"ping"


ECHO_CHECK = (_ping, b"ping")
"""Health check: after reset (XOR back to 0) the echo returns what was sent."""


def _exchange(rec: Recorder, driver: Any, ring: Any, queue: int = 0, **add: Any) -> None:
    driver.notify(queue)
    ack_interrupts(driver)
    ring.reap()


def _seed_split(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 0)
    ring.add([b"hello, device"], [32])
    ring.add([b"ab", b"cd"], [2, 2])
    ring.kick()
    _exchange(rec, driver, ring)


def _seed_packed(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 1 << VIRTIO_F_RING_PACKED)
    ring.add([b"packed"], [8, 8])
    ring.kick()
    _exchange(rec, driver, ring)
    ring.add([b"again"], [8])
    ring.kick()
    _exchange(rec, driver, ring)


def _seed_event_idx_indirect(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 1 << VIRTIO_F_EVENT_IDX | 1 << VIRTIO_F_INDIRECT_DESC)
    ring.set_interrupts(True)
    ring.add([b"in", b"direct"], [4, 4], indirect=True)
    if ring.kick():
        driver.notify(0)
    ack_interrupts(driver)
    ring.reap()


def _seed_in_order(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 1 << VIRTIO_F_IN_ORDER | 1 << VIRTIO_F_RING_PACKED)
    for n in range(3):
        ring.add([bytes([65 + n]) * 3], [3])
    ring.kick()
    _exchange(rec, driver, ring)


def _seed_config_xor(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 1 << ECHO_F_XOR)
    driver.write_config(4, 1, 0x20)
    driver.read_config(0, 4)
    if isinstance(driver, MmioDriver):
        driver.generation()
    else:
        driver.read_common("config_generation")
    ring.add([b"XOR"], [3])
    ring.kick()
    _exchange(rec, driver, ring)


def _seed_queue_reset(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 1 << VIRTIO_F_RING_RESET)
    ring.add([b"before"], [8])
    ring.kick()
    _exchange(rec, driver, ring)
    if isinstance(driver, MmioDriver):
        driver.reset_queue(0)
    else:
        driver.write_common("queue_select", 0)
        driver.write_common("queue_reset", 1)
    layout = ring.layout
    ring.memory.fill(layout.desc_addr, layout.end - layout.desc_addr)
    driver.setup_queue(0, 8, layout.desc_addr, layout.driver_addr, layout.device_addr)


def _seed_two_queues_snapshot(rec: Recorder) -> None:
    driver, rings = bring_up(rec, 0, queues=2)
    for index, ring in enumerate(rings):
        ring.add([bytes([index]) * 5], [5])
        ring.kick()
    rec.op(OpKind.SNAPSHOT)
    driver.notify(1)
    rec.op(OpKind.NOTIFY, 0)
    rec.op(OpKind.PUMP)
    ack_interrupts(driver)
    rec.op(OpKind.SNAPSHOT)


def _seed_msix(rec: Recorder) -> None:
    rig = rec.rig
    assert isinstance(rig, VirtioPciRig)
    driver = PciDriver(rig.machine, rig.devfn)
    driver.enable_msix([(0xFEE0_0000, 0x40 + n) for n in range(3)])
    driver.negotiate(1 << 32)
    driver.write_common("config_msix_vector", 0)
    from virtio.testing import make_driver

    ring = make_driver(rec.machine.memory, 8, base=0x10000, data_size=0x4000)
    layout = ring.layout
    driver.setup_queue(0, 8, layout.desc_addr, layout.driver_addr, layout.device_addr, vector=1)
    driver.driver_ok()
    ring.add([b"msi-x"], [8])
    ring.kick()
    driver.notify(0)
    ring.reap()


def _seed_pci_cfg_window(rec: Recorder) -> None:
    rig = rec.rig
    assert isinstance(rig, VirtioPciRig)
    driver = PciDriver(rig.machine, rig.devfn)
    driver.cfg_access(0x14, 1, 0x01)  # device_status through VIRTIO_PCI_CAP_PCI_CFG
    driver.cfg_access(0x14, 1)
    driver.cfg_access(0x04, 4)
    from devmodels.pci import defs

    rec.machine.config_write(0, rig.devfn, defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY | defs.PCI_COMMAND_MASTER)


ECHO_SEEDS = {
    "split-echo": _seed_split,
    "packed-echo": _seed_packed,
    "event-idx-indirect": _seed_event_idx_indirect,
    "in-order-packed": _seed_in_order,
    "config-xor": _seed_config_xor,
    "queue-reset": _seed_queue_reset,
    "two-queues-snapshot": _seed_two_queues_snapshot,
}
PCI_ONLY_SEEDS = {"msix": _seed_msix, "pci-cfg-window": _seed_pci_cfg_window}
