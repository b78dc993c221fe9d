"""Driver-side simulators for virtio: the ring drivers, and device bring-up over any transport.

The ring simulators play the guest driver of VIRTIO 1.2 §2.7.13/§2.7.14 (split) and
§2.8.21/§2.8.22 (packed): they lay the rings out in guest memory, add descriptor chains
(direct or through an indirect table), publish them and say whether the device must be
notified (honouring ``avail_event`` / the device event structure), and reap used buffers
(honouring IN_ORDER batches). Tests and VMM integrators use them as the other end of a
``Virtqueue`` (virtio-queue ``mock.rs``; CONVENTIONS: simulators).

``TransportDriver`` is what a driver's core does with any transport: the §3.1.1
initialization, queue setup, notifications. ``DirectDriver`` reaches a ``VirtioDevice``
through its transport-neutral entry points; ``virtio.transport.testing`` has ``PciDriver``
and ``MmioDriver``, which reach it only through what a guest sees. ``bring_up`` initializes
a device over any of them and returns one ring simulator per queue; the device simulators
(``virtio.blk.testing.BlkDriver``, ``virtio.net.testing.NetDriver``) build on it.

Rules:

1. The ring simulators write only the driver-owned parts of the rings, in the order the
   spec gives (descriptors, then the available entry or first descriptor's flags, then
   ``idx``).
2. Anything the *device* wrote that a correct device could not have written (an unknown
   used id, a length beyond the buffer) raises ``DeviceProtocolError``; a device that does
   not do what the specification promises a driver (FEATURES_OK refused, a reset that does
   not complete) raises another ``DriverError``. Misuse of a simulator raises
   ``UsageError``. None of them is an ``AssertionError`` (``devmodels.testing``).
3. The ``raw_*`` methods bypass every rule, to build malformed rings for tests;
   ``malform`` builds each kind of malformed ring a device must detect (``MALFORMED``).
4. Feature arguments are masks; ``VIRTIO_F_*`` constants are bit numbers: build masks with
   ``virtio.features.feature_mask``. ``negotiate`` raises ``FeaturesRefused`` with the
   device's own reason (its ``virtio.status`` trace event) when FEATURES_OK does not stick.
5. ``TransportDriver.poll`` plays the VMM's loop (``ServedDevice.run_posted`` of the served
   object it was given) and ``settle`` its quiesce point; the simulators call them after a
   notification and before reaping what must have completed.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from devmodels import GuestMemory, UsageError
from devmodels.runtime import ServedDevice
from devmodels.testing import DeviceProtocolError, DriverError
from devmodels.trace import RecordingSink

from .defs import (
    ACKNOWLEDGE,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
)
from .device import QueueArea, VirtioDevice
from ._ring_driver import (
    MALFORMED,
    PackedDriver,
    RingDriver,
    RingLayout,
    SplitDriver,
    UsedBuffer,
    make_driver,
    malform,
)

__all__ = [
    "DriverError",
    "DeviceProtocolError",
    "FeaturesRefused",
    "RingLayout",
    "UsedBuffer",
    "SplitDriver",
    "PackedDriver",
    "RingDriver",
    "make_driver",
    "MALFORMED",
    "malform",
    "TransportDriver",
    "DirectDriver",
    "as_transport",
    "negotiate",
    "bring_up",
]

# -- device bring-up over any transport ------------------------------------------------------


class FeaturesRefused(DriverError):
    """The device did not set FEATURES_OK for the features the driver accepted (§3.1.1 step 6).

    Attributes:
        offered: what the device offered.
        accepted: what the driver wrote (the wanted mask restricted to ``offered``).
        reason: the device's own reason (its ``virtio.status`` trace event), or a note
            that it gave none.
    """

    def __init__(self, offered: int, accepted: int, reason: str, wanted: int) -> None:
        self.offered = offered
        self.accepted = accepted
        self.reason = reason
        message = f"the device refused features {accepted:#x} at FEATURES_OK: {reason}"
        if not wanted >> VIRTIO_F_VERSION_1 & 1:
            message += (f" [the wanted mask {wanted:#x} lacks VIRTIO_F_VERSION_1: VIRTIO_F_* constants are bit"
                        " numbers; build masks with virtio.features.feature_mask(...)]")
        super().__init__(message)


class TransportDriver(abc.ABC):
    """The guest side of a transport: what a driver's core does, whatever the transport.

    Subclasses provide the register primitives; this class does the §3.1.1 sequence.

    Attributes:
        memory: the guest RAM the driver lays its rings out in.
        served: the object the VMM serves (a ``ServedDevice``: the transport function or
            the device), whose posted work ``poll`` runs; ``None`` when nothing is posted
            (the device does its work inside the notification).
        negotiated: the features the last successful ``negotiate`` agreed.
    """

    memory: GuestMemory
    served: ServedDevice | None = None
    negotiated: int = 0

    POLL_ROUNDS = 1 << 16
    """``poll`` runs posted work at most this many times per call (a bound, not a budget:
    a device that still reports work after this many rounds is looping)."""

    # -- primitives each transport provides -----------------------------------------------

    @abc.abstractmethod
    def read_status(self) -> int:
        """``device status``."""

    @abc.abstractmethod
    def write_status(self, value: int) -> None:
        """Write ``device status``."""

    @abc.abstractmethod
    def device_features(self) -> int:
        """All offered feature bits (reads every select window)."""

    @abc.abstractmethod
    def write_driver_features(self, features: int) -> None:
        """Write the accepted feature bits through the select windows."""

    @abc.abstractmethod
    def num_queues(self) -> int:
        """How many queues the device has."""

    @abc.abstractmethod
    def queue_max_size(self, index: int) -> int:
        """The largest size queue ``index`` takes (0: no such queue)."""

    @abc.abstractmethod
    def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int) -> bool:
        """Program and enable queue ``index``; returns whether it reads back enabled."""

    @abc.abstractmethod
    def notify(self, index: int) -> None:
        """Available buffer notification for queue ``index``."""

    @abc.abstractmethod
    def read_config(self, offset: int, size: int) -> int:
        """Read the device configuration."""

    @abc.abstractmethod
    def write_config(self, offset: int, size: int, value: int) -> None:
        """Write the device configuration."""

    # -- the VMM's part (rule 5) ------------------------------------------------------------

    def poll(self) -> None:
        """Run the served object's posted work until it reports none (bounded)."""
        if self.served is None:
            return
        for _ in range(self.POLL_ROUNDS):
            if not self.served.run_posted():
                return

    def settle(self) -> None:
        """Let the device finish everything in flight (``quiesce``), then ``poll``."""
        if self.served is not None:
            self.served.quiesce()
        self.poll()

    # -- §3.1.1 -------------------------------------------------------------------------

    def reset(self) -> None:
        """Write 0 and wait for status 0 (§4.1.4.3.2, §4.2.3.1).

        Raises:
            DriverError: the status did not read back 0.
        """
        self.write_status(0)
        status = self.read_status()
        if status != 0:
            raise DriverError(f"device did not complete its reset: status reads {status:#x}")

    def try_negotiate(self, wanted: int | None = None) -> int | None:
        """``negotiate`` that returns ``None`` instead of raising when FEATURES_OK is refused."""
        try:
            return self.negotiate(wanted)
        except FeaturesRefused:
            return None

    def negotiate(self, wanted: int | None = None) -> int:
        """Reset, ACKNOWLEDGE, DRIVER, accept ``wanted & offered``, FEATURES_OK (§3.1.1 steps 1–6).

        Args:
            wanted: a feature *mask* (rule 4; default: everything offered; ``~mask``
                accepts everything offered but ``mask``).

        Returns:
            The negotiated features.

        Raises:
            FeaturesRefused: FEATURES_OK did not stick; carries the device's reason.
            DriverError: the reset did not complete.
        """
        self.reset()
        self.write_status(ACKNOWLEDGE)
        self.write_status(ACKNOWLEDGE | DRIVER)
        offered = self.device_features()
        if wanted is None:
            wanted = offered
        elif isinstance(wanted, bool) or not isinstance(wanted, int):
            raise UsageError(f"wanted must be a feature mask (an int; ~mask for all but), got {wanted!r}")
        accepted = offered & wanted
        self.write_driver_features(accepted)
        with RecordingSink("virtio.status") as seen:
            self.write_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
        if self.read_status() & FEATURES_OK:
            self.negotiated = accepted
            return accepted
        reasons = [fields["reason"] for name, fields in seen.events if name == "virtio.status" and "refused" in fields]
        reason = reasons[-1] if reasons else "the device gave no reason (it is not in this process, or not traced)"
        raise FeaturesRefused(offered, accepted, str(reason), wanted)

    def driver_ok(self) -> None:
        """Set DRIVER_OK (§3.1.1 step 8)."""
        self.write_status(self.read_status() | DRIVER_OK)


class DirectDriver(TransportDriver):
    """A transport driver that calls a ``VirtioDevice``'s transport-neutral entry points.

    What a transport does with the guest's register writes, without one: for testing a
    device on its own. ``poll`` runs the queues whose budget ran out (``run_pending``).
    """

    def __init__(self, device: VirtioDevice) -> None:
        if not isinstance(device, VirtioDevice):
            raise UsageError(f"DirectDriver needs a VirtioDevice, got {type(device).__name__}")
        self.device = device
        self.memory = device.memory
        self.served = device

    def read_status(self) -> int:
        """The device's status."""
        return self.device.status

    def write_status(self, value: int) -> None:
        """``VirtioDevice.write_status``."""
        self.device.write_status(value)

    def device_features(self) -> int:
        """Offered features, windows 0..3."""
        features = 0
        for select in range(4):
            self.device.device_feature_select = select
            features |= self.device.read_device_features() << (32 * select)
        return features

    def write_driver_features(self, features: int) -> None:
        """Accepted features, windows 0..3."""
        for select in range(4):
            self.device.driver_feature_select = select
            self.device.write_driver_features((features >> (32 * select)) & 0xFFFF_FFFF)

    def num_queues(self) -> int:
        """``VirtioDevice.num_queues``."""
        return self.device.num_queues

    def queue_max_size(self, index: int) -> int:
        """``VirtioDevice.queue_max_size``."""
        return self.device.queue_max_size(index)

    def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int) -> bool:
        """Size, the three addresses (two 32-bit halves each), enable."""
        self.device.set_queue_size(index, size)
        for area, address in ((QueueArea.DESC, desc), (QueueArea.DRIVER, driver), (QueueArea.DEVICE, device)):
            self.device.write_queue_address(index, area, 0, address & 0xFFFF_FFFF)
            self.device.write_queue_address(index, area, 1, address >> 32)
        self.device.set_queue_ready(index, True)
        return self.device.queue_ready(index)

    def notify(self, index: int) -> None:
        """``VirtioDevice.notify_queue``."""
        self.device.notify_queue(index)

    def read_config(self, offset: int, size: int) -> int:
        """``VirtioDevice.read_config``."""
        return self.device.read_config(offset, size)

    def write_config(self, offset: int, size: int, value: int) -> None:
        """``VirtioDevice.write_config``."""
        self.device.write_config(offset, size, value)

    def poll(self) -> None:
        """Process the queues whose last notification ran out of budget (bounded)."""
        for _ in range(self.POLL_ROUNDS):
            if not self.device.run_pending():
                return


def as_transport(target: TransportDriver | VirtioDevice) -> TransportDriver:
    """``target`` if it is a transport driver, else a ``DirectDriver`` on the device.

    Raises:
        UsageError: neither.
    """
    if isinstance(target, TransportDriver):
        return target
    if isinstance(target, VirtioDevice):
        return DirectDriver(target)
    raise UsageError(f"expected a TransportDriver (PciDriver, MmioDriver, DirectDriver) or a VirtioDevice, "
                     f"got {type(target).__name__}")


def negotiate(target: TransportDriver | VirtioDevice, accept: int | None = None) -> int:
    """Steps 1–6 of §3.1.1 over ``target`` (a transport driver, or a device directly).

    Returns the negotiated features.

    Raises:
        FeaturesRefused: with the device's reason (rule 4).
    """
    return as_transport(target).negotiate(accept)


def bring_up(
    target: TransportDriver | VirtioDevice,
    *,
    accept: int | None = None,
    queues: Sequence[int] | None = None,
    queue_size: int | None = None,
    base: int = 0x10000,
    data_size: int = 1 << 20,
) -> list[RingDriver]:
    """Initialize the device (§3.1.1) and set up ``queues`` (default: all) with ring simulators.

    Args:
        target: a transport driver (``PciDriver``, ``MmioDriver``, ``DirectDriver``) or a
            ``VirtioDevice`` (driven through ``DirectDriver``).
        accept: the features to accept, a mask (default: everything offered).
        queues: which queues to set up.
        queue_size: ring size (default: each queue's maximum).
        base: where the rings and their data arenas are laid out, one after another.
        data_size: bytes of data arena per queue.

    Raises:
        FeaturesRefused: the device refused the features.
        DriverError: a queue did not read back enabled.
    """
    transport = as_transport(target)
    negotiated = transport.negotiate(accept)
    packed = bool(negotiated >> VIRTIO_F_RING_PACKED & 1)
    event_idx = bool(negotiated >> VIRTIO_F_EVENT_IDX & 1)
    in_order = bool(negotiated >> VIRTIO_F_IN_ORDER & 1)
    drivers: list[RingDriver] = []
    cursor = base
    for index in range(transport.num_queues()) if queues is None else queues:
        size = queue_size or transport.queue_max_size(index)
        if not size:
            raise DriverError(f"queue {index} does not exist (maximum size 0)")
        driver = make_driver(transport.memory, size, packed=packed, base=cursor, data_size=data_size,
                             event_idx=event_idx, in_order=in_order)
        cursor = (driver.data_end + 0xFFF) & ~0xFFF
        layout = driver.layout
        if not transport.setup_queue(index, size, layout.desc_addr, layout.driver_addr, layout.device_addr):
            raise DriverError(f"queue {index} did not read back enabled (size {size})")
        drivers.append(driver)
    transport.driver_ok()
    return drivers
