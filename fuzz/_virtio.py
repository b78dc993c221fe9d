"""Rigs for virtio devices behind their transports: modern PCI and MMIO version 2.

Shared by the ``virtio_pci``, ``virtio_mmio`` and ``virtio_blk`` targets.

- ``VirtioPciRig``: a ``VirtioPciFunction`` on bus 0 (BAR accesses, config cycles, MSI-X).
  ``NOTIFY q`` writes the queue index at its notify address, as a driver does.
- ``VirtioMmioRig``: a ``VirtioMmioDevice`` window (region 0) on a GSI; ``NOTIFY q``
  writes QueueNotify.
- Both: ``PUMP`` lets the VMM finish asynchronous work (``run_pending``; block devices also
  ``process_completions``); ``SNAPSHOT`` round-trips the transport state through plain data.

Healthy after reset means: a driver (``virtio.transport.testing.PciDriver``/``MmioDriver``
with a ``virtio.testing`` ring) negotiates VERSION_1 and the device completes one request
(``check`` of the rig: an echo for ``EchoDevice``, a written-then-read sector for blk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from devmodels import Machine, from_dict, to_dict
from devmodels.pci import defs as pcidefs
from virtio.defs import (
    VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
)
from virtio.device import VirtioDevice
from virtio.testing import make_driver
from virtio.transport import VirtioMmioDevice, VirtioPciFunction, VirtioPciState
from virtio.transport.testing import MmioDriver, PciDriver, TransportDriver

from ._rig import RAM_SIZE, Finding, PciRig, Rig

__all__ = ["VirtioPciRig", "VirtioMmioRig", "HealthCheck", "MMIO_BASE", "MMIO_GSI", "ring_check"]

MMIO_BASE = 0xD000_0000
MMIO_GSI = 5
_RING_BASE = 0x10000  # the health check's ring and data arena

HealthCheck = Callable[[TransportDriver, Any, "Rig"], None]
"""``check(driver, ring, rig)``: one request through queue 0 after negotiation (raise ``Finding``)."""


def _pump(device: VirtioDevice) -> None:
    device.run_pending()
    process = getattr(device, "process_completions", None)
    if callable(process):
        process()


def _roundtrip(rig: Rig, transport: Any) -> None:
    transport.quiesce()  # the snapshot contract: quiesce(), then state()
    before = transport.state()
    rebuilt: Any = from_dict(transport.state_type, to_dict(before))  # the device section typed
    if to_dict(rebuilt) != to_dict(before):
        raise Finding("snapshot", "state changed through to_dict/from_dict")
    transport.restore(rebuilt)
    if transport.state() != before:
        raise Finding("snapshot", "restore(state()) changed the device state")


def ring_check(driver: TransportDriver, notify: Callable[[int], None], rig: Rig, request: Callable[[Any], bytes],
               expect: bytes) -> None:
    """Negotiate VERSION_1, set up queue 0, post ``request(ring)``, check the reply is ``expect``."""
    if driver.try_negotiate(1 << VIRTIO_F_VERSION_1) is None:
        raise Finding("reset", "the device refused VERSION_1 after reset")
    ring = make_driver(rig.machine.memory, 8, base=_RING_BASE, data_size=0x8000)
    layout = ring.layout
    if not driver.setup_queue(0, 8, layout.desc_addr, layout.driver_addr, layout.device_addr):
        raise Finding("reset", "queue 0 cannot be enabled after reset")
    driver.driver_ok()
    token = request(ring)
    ring.kick()
    notify(0)
    for _ in range(4):
        used = ring.reap()
        if used:
            break
        pump = getattr(rig, "pump", None)
        if callable(pump):
            pump()
    else:
        raise Finding("reset", "no used buffer after reset")
    data = used[0].read(rig.machine.memory)
    if data != expect:
        raise Finding("reset", f"request {token!r} after reset returned {data!r}, expected {expect!r}")


class VirtioPciRig(PciRig):
    """``device`` behind a modern virtio PCI function on bus 0.

    Args:
        make_device: builds the device on the machine's RAM.
        check: the health check's request (``ring -> token``) and the reply it expects.
    """

    def __init__(self, make_device: Callable[[Any], VirtioDevice], check: tuple[Callable[[Any], bytes], bytes]) -> None:
        machine = Machine(ram_size=RAM_SIZE, ram_backing="bytearray")
        self.device = make_device(machine.memory)
        self.transport = VirtioPciFunction(self.device)
        super().__init__(machine, self.transport, VirtioPciState)
        self._check = check
        self.notify_base = self._notify_base()

    def _notify_base(self) -> int:
        """The notify structure's address, from the vendor capabilities (no bus traffic)."""
        fn = self.transport
        pointer = fn.config_read(pcidefs.PCI_CAPABILITY_LIST, 1)
        for _ in range(48):
            if not pointer:
                break
            if fn.config_read(pointer, 1) == pcidefs.PCI_CAP_ID_VNDR and fn.config_read(pointer + 3, 1) == VIRTIO_PCI_CAP_NOTIFY_CFG:
                bar = fn.config_read(pointer + 4, 1)
                offset = fn.config_read(pointer + 8, 4)
                bars = [base for bus, base, size in self.regions if size == fn.bars[bar].size]  # type: ignore[union-attr]
                return bars[0] + offset if bars else 0
            pointer = fn.config_read(pointer + 1, 1)
        return 0

    def notify(self, queue: int) -> None:
        """The driver's notification for ``queue % num_queues`` (§4.1.4.4)."""
        if self.notify_base:
            index = queue % max(self.device.num_queues, 1)
            self.machine.mmio.write(self.notify_base + 4 * index, 2, index)

    def pump(self) -> None:
        """The VMM loop: pending notifications, backend completions."""
        _pump(self.device)

    def snapshot_roundtrip(self) -> None:
        """state() -> plain dict -> state -> restore(); compared as plain data."""
        _roundtrip(self, self.transport)

    def health_check(self) -> None:
        """A PCI driver completes one request after reset."""
        infos = [i for i in self.machine.enumerate() if i.devfn == self.devfn]
        if not infos or not infos[0].bars:
            raise Finding("reset", "BARs cannot be assigned after reset")
        self.config_write(pcidefs.PCI_COMMAND, 2, pcidefs.PCI_COMMAND_MEMORY | pcidefs.PCI_COMMAND_MASTER)
        self.regions = [
            (self.machine.mmio, b.address, b.size) for b in infos[0].bars if b.address is not None and b.kind != "io"
        ]
        driver = PciDriver(self.machine, self.devfn)
        request, expect = self._check
        ring_check(driver, driver.notify, self, request, expect)


class VirtioMmioRig(Rig):
    """``device`` behind a virtio-mmio window at ``MMIO_BASE`` on GSI ``MMIO_GSI``."""

    def __init__(self, make_device: Callable[[Any], VirtioDevice], check: tuple[Callable[[Any], bytes], bytes]) -> None:
        super().__init__(Machine(ram_size=RAM_SIZE, ram_backing="bytearray"))
        self.device = make_device(self.machine.memory)
        self.transport = VirtioMmioDevice(self.device, self.machine.irq.line(MMIO_GSI).source())
        self.machine.mmio.register(MMIO_BASE, self.transport.size, self.transport, "virtio-mmio")
        self.regions.append((self.machine.mmio, MMIO_BASE, self.transport.size))
        self._check = check

    def notify(self, queue: int) -> None:
        """QueueNotify for ``queue % num_queues``."""
        index = queue % max(self.device.num_queues, 1)
        self.machine.mmio.write(MMIO_BASE + VIRTIO_MMIO_QUEUE_NOTIFY, 4, index)

    def pump(self) -> None:
        """The VMM loop: pending notifications, backend completions."""
        _pump(self.device)

    def reset(self) -> None:
        """A device reset through the transport (what a VMM reset does)."""
        self.transport.reset()

    def snapshot_roundtrip(self) -> None:
        """state() -> plain dict -> state -> restore(); compared as plain data."""
        _roundtrip(self, self.transport)

    def health_check(self) -> None:
        """An MMIO driver completes one request after reset."""
        driver = MmioDriver(self.machine, MMIO_BASE)
        request, expect = self._check
        ring_check(driver, driver.notify, self, request, expect)


# -- seeds shared by the transports (recorded with fuzz._record) -----------------------------


def transport_driver(rig: Rig) -> TransportDriver:
    """The guest driver of the rig's transport."""
    if isinstance(rig, VirtioPciRig):
        return PciDriver(rig.machine, rig.devfn)
    return MmioDriver(rig.machine, MMIO_BASE)


def bring_up(rec: Any, features: int, *, size: int = 8, queues: int = 1, **ring_options: Any) -> tuple[Any, list[Any]]:
    """Negotiate ``features`` and set up ``queues`` rings of ``size``, as a guest driver does."""
    from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED

    driver = transport_driver(rec.rig)
    accepted = driver.try_negotiate(features | 1 << VIRTIO_F_VERSION_1)
    if accepted is None:
        raise RuntimeError(f"seed: features {features:#x} refused")
    rings = []
    for index in range(queues):
        ring = make_driver(
            rec.machine.memory, size, packed=bool(accepted >> VIRTIO_F_RING_PACKED & 1),
            base=_RING_BASE + 0x8000 * index, data_size=0x4000,
            event_idx=bool(accepted >> VIRTIO_F_EVENT_IDX & 1), in_order=bool(accepted >> VIRTIO_F_IN_ORDER & 1),
            **ring_options,
        )
        layout = ring.layout
        driver.setup_queue(index, size, layout.desc_addr, layout.driver_addr, layout.device_addr)
        rings.append(ring)
    driver.driver_ok()
    return driver, rings


def ack_interrupts(driver: TransportDriver) -> None:
    """What the interrupt handler does: read (PCI ISR) or read and acknowledge (MMIO)."""
    if isinstance(driver, PciDriver):
        driver.read_isr()
    elif isinstance(driver, MmioDriver):
        driver.ack(driver.interrupt_status())
