"""Virtio over MMIO, version 2 only (VIRTIO 1.2 §4.2).

``VirtioMmioDevice`` is a ``BusDevice`` carrying one ``VirtioDevice``: the control
registers of §4.2.2 from offset 0, the device configuration from 0x100, and one interrupt
line.

Rules:

1. The control registers are a table (CONVENTIONS: register-tables) whose rows call the device's
   transport-neutral entry points. Only InterruptStatus and SHMSel are state of this module.
2. Control registers take 32-bit accesses only (§4.2.2.2); any other width, a read of a
   write-only register or a write of a read-only one reads 0 / is dropped with a trace
   event. The configuration space takes any width.
3. InterruptStatus holds bit 0 (used buffer) and bit 1 (configuration change) from the
   event until the driver acknowledges it through InterruptACK (§4.2.2.1). With a
   ``LevelSink`` the line is asserted while InterruptStatus is non-zero; with a
   ``Trigger`` (an irqfd) every event pulses it.
4. Reset clears InterruptStatus and every QueueReady (§4.2.2.1).
5. No shared memory regions: SHMLen/SHMBase read all-ones for every SHMSel (§4.2.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from devmodels import LevelSink, NullLevelSink, Reg, RegAccess as Access, RegisterFile, SnapshotError, Trigger, UsageError
from devmodels.snapshot import check_args, check_int, check_type, check_version
from devmodels.trace import tracepoint

from ._serving import ServedThroughDevice
from ..defs import (
    VIRTIO_F_NOTIFICATION_DATA,
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC,
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DEVICE_HIGH,
    VIRTIO_MMIO_QUEUE_DEVICE_LOW,
    VIRTIO_MMIO_QUEUE_DRIVER_HIGH,
    VIRTIO_MMIO_QUEUE_DRIVER_LOW,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_RESET,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_SHM_BASE_HIGH,
    VIRTIO_MMIO_SHM_BASE_LOW,
    VIRTIO_MMIO_SHM_LEN_HIGH,
    VIRTIO_MMIO_SHM_LEN_LOW,
    VIRTIO_MMIO_SHM_SEL,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_VERSION_REG,
    VIRTIO_PCI_VENDOR_ID,
)
from ..device import QueueArea, VirtioDevice, VirtioDeviceState

__all__ = ["VirtioMmioDevice", "VirtioMmioArgs", "VirtioMmioState", "MMIO_WINDOW_MIN"]

MMIO_WINDOW_MIN = 0x200
"""The smallest register window (what device trees and ``virtio_mmio.device=`` use)."""

_tp_unhandled = tracepoint("virtio_mmio.unhandled")

_U32 = 0xFFFF_FFFF


D = TypeVar("D")


@dataclass(frozen=True)
class VirtioMmioArgs:
    """The transport's constructor arguments (the interrupt is a host resource)."""

    vendor_id: int


@dataclass(frozen=True)
class VirtioMmioState(Generic[D]):
    """Snapshot of a virtio-mmio device; ``D`` is the device's section type."""

    version: int
    args: VirtioMmioArgs
    device: VirtioDeviceState[D]
    interrupt_status: int
    shm_sel: int


_STATE_VERSION = 2  # 2: args


class VirtioMmioDevice(ServedThroughDevice):
    """A virtio-mmio (version 2) register window around ``device``.

    Args:
        device: the virtio device (attached to this transport here).
        irq: the interrupt: a ``LevelSink`` (a GSI source) or a ``Trigger`` (rule 3).
        vendor_id: the VendorID register.
        name: for traces.

    Raises:
        UsageError: ``irq`` is neither a ``LevelSink`` nor a ``Trigger``, or the device
            is already attached.
    """

    def __init__(
        self,
        device: VirtioDevice,
        irq: LevelSink | Trigger | None = None,
        *,
        vendor_id: int = VIRTIO_PCI_VENDOR_ID,
        name: str = "",
    ) -> None:
        if irq is None:
            irq = NullLevelSink()
        if isinstance(irq, LevelSink):
            self._level: LevelSink | None = irq
            self._trigger: Trigger | None = None
        elif isinstance(irq, Trigger):
            self._level, self._trigger = None, irq
        else:
            raise UsageError(f"irq must be a LevelSink or a Trigger, got {irq!r}")
        device.attach(self)
        self.device = device
        self.name = name or f"virtio-mmio:{device.name}"
        self.vendor_id = vendor_id & _U32
        self.interrupt_status = 0
        self.shm_sel = 0
        self.registers = self._registers()

    @property
    def size(self) -> int:
        """Bytes of MMIO the device needs (a power of two, at least ``MMIO_WINDOW_MIN``)."""
        end = VIRTIO_MMIO_CONFIG + len(self.device.config)
        return max(MMIO_WINDOW_MIN, 1 << (end - 1).bit_length())

    # -- register table (§4.2.2) ---------------------------------------------------------

    def _registers(self) -> RegisterFile:
        d = self.device

        def ro(name: str, offset: int, value: Callable[[], int] | int) -> Reg:
            getter: Callable[[], int] = value if callable(value) else (lambda: value)
            return Reg(name, offset, 4, Access.RO, mask=_U32, on_read=lambda _: getter())

        def wo(name: str, offset: int, store: Callable[[int], None]) -> Reg:
            def on_write(old: int, new: int) -> int:
                store(new)
                return 0

            return Reg(name, offset, 4, Access.WO, mask=_U32, on_write=on_write)

        def rw(name: str, offset: int, value: Callable[[], int], store: Callable[[int], None]) -> Reg:
            def on_write(old: int, new: int) -> int:
                store(new)
                return 0

            return Reg(name, offset, 4, Access.RW, mask=_U32, on_read=lambda _: value(), on_write=on_write)

        def address(name: str, offset: int, area: int, half: int) -> Reg:
            return wo(name, offset, lambda v: d.write_queue_address(d.queue_select, area, half, v))

        def set_dfsel(v: int) -> None:
            d.device_feature_select = v

        def set_gfsel(v: int) -> None:
            d.driver_feature_select = v

        def set_qsel(v: int) -> None:
            d.queue_select = v

        def set_shm_sel(v: int) -> None:
            self.shm_sel = v

        rows = [
            ro("MagicValue", VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_MAGIC),
            ro("Version", VIRTIO_MMIO_VERSION_REG, VIRTIO_MMIO_VERSION),
            ro("DeviceID", VIRTIO_MMIO_DEVICE_ID, d.device_id),
            ro("VendorID", VIRTIO_MMIO_VENDOR_ID, self.vendor_id),
            ro("DeviceFeatures", VIRTIO_MMIO_DEVICE_FEATURES, d.read_device_features),
            wo("DeviceFeaturesSel", VIRTIO_MMIO_DEVICE_FEATURES_SEL, set_dfsel),
            wo("DriverFeatures", VIRTIO_MMIO_DRIVER_FEATURES, d.write_driver_features),
            wo("DriverFeaturesSel", VIRTIO_MMIO_DRIVER_FEATURES_SEL, set_gfsel),
            wo("QueueSel", VIRTIO_MMIO_QUEUE_SEL, set_qsel),
            ro("QueueNumMax", VIRTIO_MMIO_QUEUE_NUM_MAX, lambda: d.queue_max_size(d.queue_select)),
            wo("QueueNum", VIRTIO_MMIO_QUEUE_NUM, lambda v: d.set_queue_size(d.queue_select, v)),
            rw("QueueReady", VIRTIO_MMIO_QUEUE_READY, lambda: int(d.queue_ready(d.queue_select)), self._queue_ready),
            wo("QueueNotify", VIRTIO_MMIO_QUEUE_NOTIFY, self._queue_notify),
            ro("InterruptStatus", VIRTIO_MMIO_INTERRUPT_STATUS, lambda: self.interrupt_status),
            wo("InterruptACK", VIRTIO_MMIO_INTERRUPT_ACK, self._interrupt_ack),
            rw("Status", VIRTIO_MMIO_STATUS, lambda: d.status, d.write_status),
            address("QueueDescLow", VIRTIO_MMIO_QUEUE_DESC_LOW, QueueArea.DESC, 0),
            address("QueueDescHigh", VIRTIO_MMIO_QUEUE_DESC_HIGH, QueueArea.DESC, 1),
            address("QueueDriverLow", VIRTIO_MMIO_QUEUE_DRIVER_LOW, QueueArea.DRIVER, 0),
            address("QueueDriverHigh", VIRTIO_MMIO_QUEUE_DRIVER_HIGH, QueueArea.DRIVER, 1),
            address("QueueDeviceLow", VIRTIO_MMIO_QUEUE_DEVICE_LOW, QueueArea.DEVICE, 0),
            address("QueueDeviceHigh", VIRTIO_MMIO_QUEUE_DEVICE_HIGH, QueueArea.DEVICE, 1),
            wo("SHMSel", VIRTIO_MMIO_SHM_SEL, set_shm_sel),
            ro("SHMLenLow", VIRTIO_MMIO_SHM_LEN_LOW, _U32),
            ro("SHMLenHigh", VIRTIO_MMIO_SHM_LEN_HIGH, _U32),
            ro("SHMBaseLow", VIRTIO_MMIO_SHM_BASE_LOW, _U32),
            ro("SHMBaseHigh", VIRTIO_MMIO_SHM_BASE_HIGH, _U32),
            # A queue reset completes within the write, so QueueReset always reads 0.
            rw("QueueReset", VIRTIO_MMIO_QUEUE_RESET, lambda: 0, self._queue_reset),
            ro("ConfigGeneration", VIRTIO_MMIO_CONFIG_GENERATION, lambda: d.config_generation),
        ]
        return RegisterFile(rows, device="virtio_mmio")

    def _queue_ready(self, value: int) -> None:
        if value in (0, 1):
            self.device.set_queue_ready(self.device.queue_select, bool(value))
        else:
            self._unhandled("QueueReady", VIRTIO_MMIO_QUEUE_READY, value)

    def _queue_reset(self, value: int) -> None:
        if value == 1:
            self.device.reset_queue(self.device.queue_select)

    def _queue_notify(self, value: int) -> None:
        # §4.2.3.3: the queue index, or with VIRTIO_F_NOTIFICATION_DATA a 32-bit value whose
        # low 16 bits are the queue index (§2.9 vqn).
        index = value & 0xFFFF if self.device.has_feature(VIRTIO_F_NOTIFICATION_DATA) else value
        self.device.notify_queue(index)

    def _interrupt_ack(self, value: int) -> None:
        self.interrupt_status &= ~value & (VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG)
        if self._level is not None:
            self._level.set_level(bool(self.interrupt_status))

    def _raise(self, bit: int) -> None:
        self.interrupt_status |= bit
        if self._level is not None:
            self._level.set_level(True)
        elif self._trigger is not None:
            self._trigger.trigger()

    # -- BusDevice -------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read at ``offset`` of the window."""
        if offset >= VIRTIO_MMIO_CONFIG:
            return self.device.read_config(offset - VIRTIO_MMIO_CONFIG, size)
        return self.registers.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write at ``offset`` of the window."""
        if offset >= VIRTIO_MMIO_CONFIG:
            self.device.write_config(offset - VIRTIO_MMIO_CONFIG, size, value)
            return
        self.registers.write(offset, size, value)

    # -- Transport protocol ------------------------------------------------------------------

    def signal_used(self, index: int) -> None:
        """Used buffer notification (InterruptStatus bit 0)."""
        self._raise(VIRTIO_MMIO_INT_VRING)

    def signal_config(self) -> None:
        """Configuration change notification (InterruptStatus bit 1)."""
        self._raise(VIRTIO_MMIO_INT_CONFIG)

    def device_reset(self) -> None:
        """The device reset: clear InterruptStatus and drop the line (rule 4)."""
        self.interrupt_status = 0
        self.shm_sel = 0
        if self._level is not None:
            self._level.set_level(False)

    def _unhandled(self, what: str, offset: int, value: int) -> None:
        if _tp_unhandled.on:
            _tp_unhandled.emit(device=self.name, what=what, offset=offset, value=value)

    # -- reset and snapshot ------------------------------------------------------------------

    def reset(self) -> None:
        """Power-on state (the device's reset also clears this transport)."""
        self.device.reset()

    @property
    def state_type(self) -> Any:
        """``VirtioMmioState[D]`` for the device's section type ``D``."""
        return VirtioMmioState[self.device.device_state_type or type(None)]  # type: ignore[misc]

    def constructor_args(self) -> VirtioMmioArgs:
        """The transport's constructor arguments (``devmodels._state`` rule 3)."""
        return VirtioMmioArgs(self.vendor_id)

    def state(self) -> VirtioMmioState[Any]:
        """Snapshot (CONVENTIONS: snapshots) at the quiesce point (``VirtioDevice`` rule 11).

        Raises:
            UsageError: the device has work in flight; ``quiesce()`` first.
        """
        return VirtioMmioState(
            version=_STATE_VERSION,
            args=self.constructor_args(),
            device=self.device.state(),
            interrupt_status=self.interrupt_status,
            shm_sel=self.shm_sel,
        )

    def restore(self, state: VirtioMmioState[Any]) -> None:
        """Validate ``state`` completely, then apply it.

        Raises:
            SnapshotError: any field is inconsistent; nothing was applied.
        """
        check_type("state", state, VirtioMmioState)
        check_version("version", state.version, _STATE_VERSION)
        check_args("args", state.args, self.constructor_args())
        status = check_int("interrupt_status", state.interrupt_status, 0, _U32)
        if status & ~(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG):
            raise SnapshotError("interrupt_status", f"undefined bits in {status:#x}")
        check_int("shm_sel", state.shm_sel, 0, _U32)
        self.device.restore(state.device)
        self.interrupt_status = status
        self.shm_sel = state.shm_sel
        if self._level is not None:
            self._level.set_level(bool(status))

    def __repr__(self) -> str:
        return f"<{self.name} status={self.device.status:#x} int={self.interrupt_status:#x}>"
