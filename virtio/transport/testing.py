"""Test helpers for the transports: an echo device and driver-side transport drivers.

Shipped in the package (STYLE 22) so VMM integrators can drive a virtio transport the way a
guest does, in-process:

- ``EchoDevice``: a small complete virtio device. Every chain's readable bytes are copied,
  XORed with the configuration's ``xor`` byte, into the same chain's writable buffers;
  the used length is the number of bytes written. It has a driver-writable configuration
  field (``xor``), a device-changed one (``link``) and supports queue reset.
- ``PciDriver`` / ``MmioDriver``: what a guest driver does with the transport registers
  (the §3.1.1 initialization, queue setup, notifications, interrupt acknowledgement),
  reached only through config cycles and MMIO on a ``devmodels.Machine``. Ring contents are
  the business of the ring simulator in ``virtio.testing``.

Rules: the drivers use only what a guest sees (config space, BARs, the MMIO window); they
never look inside the device objects.
"""

from __future__ import annotations

import abc
from typing import Any

import construct as cs

from devmodels import GuestMemory, GuestMemoryError, Machine
from devmodels._trace import tracepoint
from devmodels.pci.defs import (
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CAPABILITY_LIST,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_TABLE,
)

from ..defs import (
    ACKNOWLEDGE,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
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
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_VERSION_REG,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG,

)
from ..device import QueueFactory, VirtioDevice
from .layouts import virtio_pci_cap, virtio_pci_common_cfg, virtio_pci_notify_cap

__all__ = [
    "VIRTIO_ID_DEVMODELS_ECHO",
    "ECHO_F_XOR",
    "echo_config",
    "EchoDevice",
    "PciDriver",
    "MmioDriver",
    "TransportDriver",
]

VIRTIO_ID_DEVMODELS_ECHO = 0x3F
"""Not assigned by the specification: the last ID a modern PCI device ID can express
(0x1040 + 0x3F = 0x107F). For in-process tests only; no guest driver binds it."""

ECHO_F_XOR = 0
"""Device feature bit 0: the ``xor`` configuration byte is applied to echoed data."""

_tp_bad_chain = tracepoint("virtio_echo.bad_chain")

echo_config = cs.Struct(
    "max_len" / cs.Int32ul,  # read-only: bytes echoed per chain at most
    "xor" / cs.Int8ul,  # driver-writable once ECHO_F_XOR is negotiated
    "link" / cs.Int8ul,  # device-changed (set_link), to exercise configuration changes
    "padding" / cs.Padding(2),
)


class EchoDevice(VirtioDevice):
    """The echo device (see the module docstring).

    Args:
        memory: guest RAM.
        queues: number of queues (each echoes independently).
        queue_size: maximum size of each queue.
        features: extra transport feature bits to offer (``VIRTIO_F_*`` masks).
        max_len: the largest number of bytes echoed for one chain.
        budget, queue_factory: as for ``VirtioDevice``.
    """

    device_id = VIRTIO_ID_DEVMODELS_ECHO
    config_layout = echo_config

    def __init__(
        self,
        memory: GuestMemory,
        *,
        queues: int = 2,
        queue_size: int = 256,
        features: int = 0,
        max_len: int = 1 << 16,
        budget: int | None = None,
        queue_factory: QueueFactory | None = None,
    ) -> None:
        super().__init__(
            memory,
            features=features | 1 << ECHO_F_XOR,
            queue_sizes=[queue_size] * queues,
            config=echo_config.build(dict(max_len=max_len, xor=0, link=1)),
            budget=budget,
            queue_factory=queue_factory,
            name="echo",
        )
        self.max_len = max_len
        self.echoed = 0
        self.activated = 0
        self.queue_resets: list[int] = []

    def handle_queue(self, index: int, chains: list[Any]) -> None:
        """Echo each chain into itself and return it."""
        key = self.config[4] if self.has_feature(ECHO_F_XOR) else 0
        used = []
        for chain in chains:
            try:
                written = self._echo(chain, key)
            except GuestMemoryError as exc:
                # A buffer outside guest RAM: return the chain with nothing written (the
                # Firecracker "add this broken chain to the used ring" behaviour).
                if _tp_bad_chain.on:
                    _tp_bad_chain.emit(queue=index, head=chain.head, error=str(exc))
                written = 0
            used.append((chain, written))
            self.echoed += 1
        self.push_used(index, used)

    def _echo(self, chain: Any, key: int) -> int:
        data = bytearray()
        for gpa, length in chain.readable:
            take = min(length, self.max_len - len(data))
            if take <= 0:
                break
            data += self.memory.read(gpa, take)
        if key:
            data = bytearray(b ^ key for b in data)
        written = 0
        for gpa, length in chain.writable:
            part = data[written : written + length]
            if not part:
                break
            self.memory.write(gpa, part)
            written += len(part)
        return written

    def on_config_write(self, offset: int, data: bytes) -> None:
        """Only ``xor`` (offset 4, one byte) is writable, and only with ECHO_F_XOR."""
        if offset == 4 and len(data) == 1 and self.has_feature(ECHO_F_XOR):
            self.config[4] = data[0]
        else:
            super().on_config_write(offset, data)

    def activate(self) -> None:
        """Count activations (DRIVER_OK)."""
        self.activated += 1

    def on_queue_reset(self, index: int) -> None:
        """Record queue resets."""
        self.queue_resets.append(index)

    def reset_device(self) -> None:
        """The driver-writable ``xor`` goes back to 0."""
        self.config[4] = 0

    def set_link(self, up: bool) -> None:
        """Change the ``link`` byte (a device-side configuration change)."""
        self.set_config_fields(link=int(up))


class TransportDriver(abc.ABC):
    """The guest side of a transport, common to PCI and MMIO (what a driver's core does)."""

    # -- primitives each transport provides -----------------------------------------------

    @abc.abstractmethod
    def read_status(self) -> int:
        """``device status``."""
        ...

    @abc.abstractmethod
    def write_status(self, value: int) -> None:
        """Write ``device status``."""
        ...

    @abc.abstractmethod
    def device_features(self) -> int:
        """All offered feature bits (reads every select window)."""
        ...

    @abc.abstractmethod
    def write_driver_features(self, features: int) -> None:
        """Write the accepted feature bits through the select windows."""
        ...

    @abc.abstractmethod
    def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int) -> bool:
        """Program and enable queue ``index``; returns whether it reads back enabled."""
        ...

    @abc.abstractmethod
    def notify(self, index: int) -> None:
        """Available buffer notification for queue ``index``."""
        ...

    # -- §3.1.1 -------------------------------------------------------------------------

    def reset(self) -> None:
        """Write 0 and wait for status 0 (§4.1.4.3.2)."""
        self.write_status(0)
        assert self.read_status() == 0, "device did not complete its reset"

    def negotiate(self, wanted: int) -> int | None:
        """Reset, ACKNOWLEDGE, DRIVER, accept ``wanted & offered``, FEATURES_OK.

        Returns the negotiated features, or ``None`` if the device refused FEATURES_OK.
        """
        self.reset()
        self.write_status(ACKNOWLEDGE)
        self.write_status(ACKNOWLEDGE | DRIVER)
        accepted = self.device_features() & wanted
        self.write_driver_features(accepted)
        self.write_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
        if not self.read_status() & FEATURES_OK:
            return None
        return accepted

    def driver_ok(self) -> None:
        """Set DRIVER_OK (§3.1.1 step 8)."""
        self.write_status(self.read_status() | DRIVER_OK)


def _common_fields() -> dict[str, tuple[int, int]]:
    fields, offset = {}, 0
    for sub in virtio_pci_common_cfg.subcons:
        fields[sub.name] = (offset, sub.sizeof())
        offset += sub.sizeof()
    return fields


_COMMON_FIELDS = _common_fields()
"""(offset, size) of each ``virtio_pci_common_cfg`` field."""


class PciDriver(TransportDriver):
    """A virtio PCI driver on ``machine`` for the function at ``devfn`` of bus 0.

    The BARs must already be assigned (``machine.enumerate()``).
    """

    def __init__(self, machine: Machine, devfn: int) -> None:
        self.machine = machine
        self.devfn = devfn
        self.caps: dict[int, Any] = {}
        self.cap_offsets: dict[int, int] = {}
        self.msix_cap: int | None = None
        pointer = self.cfg_read(PCI_CAPABILITY_LIST, 1)
        seen = 0
        while pointer and seen < 48:
            seen += 1
            cap_id = self.cfg_read(pointer, 1)
            if cap_id == PCI_CAP_ID_VNDR:
                raw = bytes(self.cfg_read(pointer + i, 1) for i in range(virtio_pci_notify_cap.sizeof()))
                cap = virtio_pci_cap.parse(raw)
                if cap.cfg_type not in self.caps:  # §4.1.4.1: use the first of each type
                    self.caps[cap.cfg_type] = virtio_pci_notify_cap.parse(raw) if cap.cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG else cap
                    self.cap_offsets[cap.cfg_type] = pointer
            elif cap_id == PCI_CAP_ID_MSIX:
                self.msix_cap = pointer
            pointer = self.cfg_read(pointer + 1, 1)
        for needed in (VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_PCI_CFG):
            assert needed in self.caps, f"capability type {needed} missing"

    # -- addressing ---------------------------------------------------------------------------

    def cfg_read(self, offset: int, size: int) -> int:
        """A config-space read through 0xCF8/0xCFC."""
        return self.machine.config_read(0, self.devfn, offset, size)

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        """A config-space write through 0xCF8/0xCFC."""
        self.machine.config_write(0, self.devfn, offset, size, value)

    def bar_address(self, index: int) -> int:
        """The assigned address of (64-bit) BAR ``index``."""
        low = self.cfg_read(PCI_BASE_ADDRESS_0 + 4 * index, 4)
        address = low & ~0xF
        if low & 0b100:
            address |= self.cfg_read(PCI_BASE_ADDRESS_0 + 4 * index + 4, 4) << 32
        return address

    def structure(self, cfg_type: int) -> int:
        """The guest-physical address of a virtio structure."""
        cap = self.caps[cfg_type]
        cap = cap.cap if hasattr(cap, "cap") else cap
        return self.bar_address(cap.bar) + cap.offset

    def _field(self, name: str) -> tuple[int, int]:
        return _COMMON_FIELDS[name]

    def read_common(self, name: str) -> int:
        """Read a common configuration field by its specification name (64-bit as two halves)."""
        offset, size = self._field(name)
        base = self.structure(VIRTIO_PCI_CAP_COMMON_CFG) + offset
        if size == 8:
            return self.machine.mmio.read(base, 4) | self.machine.mmio.read(base + 4, 4) << 32
        return self.machine.mmio.read(base, size)

    def write_common(self, name: str, value: int) -> None:
        """Write a common configuration field (64-bit fields as two 32-bit writes, §4.1.3.1)."""
        offset, size = self._field(name)
        base = self.structure(VIRTIO_PCI_CAP_COMMON_CFG) + offset
        if size == 8:
            self.machine.mmio.write(base, 4, value & 0xFFFF_FFFF)
            self.machine.mmio.write(base + 4, 4, value >> 32)
        else:
            self.machine.mmio.write(base, size, value)

    # -- TransportDriver -------------------------------------------------------------------

    def read_status(self) -> int:
        """``device_status``."""
        return self.read_common("device_status")

    def write_status(self, value: int) -> None:
        """Write ``device_status``."""
        self.write_common("device_status", value)

    def device_features(self) -> int:
        """Offered features, windows 0..3."""
        features = 0
        for select in range(4):
            self.write_common("device_feature_select", select)
            features |= self.read_common("device_feature") << (32 * select)
        return features

    def write_driver_features(self, features: int) -> None:
        """Accepted features, windows 0..3."""
        for select in range(4):
            self.write_common("driver_feature_select", select)
            self.write_common("driver_feature", (features >> (32 * select)) & 0xFFFF_FFFF)

    def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int, vector: int | None = None) -> bool:
        """§4.1.5.1.3: select, size, addresses, optional MSI-X vector, enable."""
        self.write_common("queue_select", index)
        if self.read_common("queue_size") == 0:
            return False
        self.write_common("queue_size", size)
        self.write_common("queue_desc", desc)
        self.write_common("queue_driver", driver)
        self.write_common("queue_device", device)
        if vector is not None:
            self.write_common("queue_msix_vector", vector)
        self.write_common("queue_enable", 1)
        return self.read_common("queue_enable") == 1

    def notify(self, index: int) -> None:
        """Write the queue index at its notify address (§4.1.4.4)."""
        self.write_common("queue_select", index)
        off = self.read_common("queue_notify_off")
        mult = self.caps[VIRTIO_PCI_CAP_NOTIFY_CFG].notify_off_multiplier
        self.machine.mmio.write(self.structure(VIRTIO_PCI_CAP_NOTIFY_CFG) + off * mult, 2, index)

    def read_isr(self) -> int:
        """Read (and so clear) the ISR status byte."""
        return self.machine.mmio.read(self.structure(VIRTIO_PCI_CAP_ISR_CFG), 1)

    def read_config(self, offset: int, size: int) -> int:
        """Read the device configuration."""
        return self.machine.mmio.read(self.structure(VIRTIO_PCI_CAP_DEVICE_CFG) + offset, size)

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Write the device configuration."""
        self.machine.mmio.write(self.structure(VIRTIO_PCI_CAP_DEVICE_CFG) + offset, size, value)

    def cfg_access(self, bar_offset: int, size: int, value: int | None = None) -> int:
        """A BAR access through the VIRTIO_PCI_CAP_PCI_CFG window (§4.1.4.9); returns read data."""
        cap_at = self.cap_offsets[VIRTIO_PCI_CAP_PCI_CFG]
        bar = self.caps[VIRTIO_PCI_CAP_PCI_CFG].bar
        self.cfg_write(cap_at + 4, 1, bar)
        self.cfg_write(cap_at + 8, 4, bar_offset)
        self.cfg_write(cap_at + 12, 4, size)
        if value is not None:
            self.cfg_write(cap_at + 16, size, value)
            return 0
        return self.cfg_read(cap_at + 16, size)

    def enable_msix(self, messages: list[tuple[int, int]]) -> None:
        """Program MSI-X table entries ``(address, data)`` (unmasked) and enable MSI-X."""
        assert self.msix_cap is not None, "function has no MSI-X capability"
        table = self.cfg_read(self.msix_cap + PCI_MSIX_TABLE, 4)
        base = self.bar_address(table & 0b111) + (table & ~0b111)
        for vector, (address, data) in enumerate(messages):
            entry = base + 16 * vector
            self.machine.mmio.write(entry, 4, address & 0xFFFF_FFFF)
            self.machine.mmio.write(entry + 4, 4, address >> 32)
            self.machine.mmio.write(entry + 8, 4, data)
            self.machine.mmio.write(entry + 12, 4, 0)
        control = self.cfg_read(self.msix_cap + PCI_MSIX_FLAGS, 2)
        self.cfg_write(self.msix_cap + PCI_MSIX_FLAGS, 2, control | PCI_MSIX_FLAGS_ENABLE)


class MmioDriver(TransportDriver):
    """A virtio-mmio (version 2) driver for the window at ``base`` of ``machine.mmio``."""

    def __init__(self, machine: Machine, base: int) -> None:
        self.machine = machine
        self.base = base
        # §4.2.3.1.1: check MagicValue and Version, then DeviceID.
        assert self.reg(VIRTIO_MMIO_MAGIC_VALUE) == VIRTIO_MMIO_MAGIC
        assert self.reg(VIRTIO_MMIO_VERSION_REG) == VIRTIO_MMIO_VERSION
        self.device_id = self.reg(VIRTIO_MMIO_DEVICE_ID)

    def reg(self, offset: int) -> int:
        """A 32-bit register read."""
        return self.machine.mmio.read(self.base + offset, 4)

    def set_reg(self, offset: int, value: int) -> None:
        """A 32-bit register write."""
        self.machine.mmio.write(self.base + offset, 4, value)

    def read_status(self) -> int:
        """Status."""
        return self.reg(VIRTIO_MMIO_STATUS)

    def write_status(self, value: int) -> None:
        """Write Status."""
        self.set_reg(VIRTIO_MMIO_STATUS, value)

    def device_features(self) -> int:
        """Offered features, windows 0..3."""
        features = 0
        for select in range(4):
            self.set_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, select)
            features |= self.reg(VIRTIO_MMIO_DEVICE_FEATURES) << (32 * select)
        return features

    def write_driver_features(self, features: int) -> None:
        """Accepted features, windows 0..3."""
        for select in range(4):
            self.set_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, select)
            self.set_reg(VIRTIO_MMIO_DRIVER_FEATURES, (features >> (32 * select)) & 0xFFFF_FFFF)

    def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int) -> bool:
        """§4.2.3.2: select, check not ready, size, addresses, QueueReady = 1."""
        self.set_reg(VIRTIO_MMIO_QUEUE_SEL, index)
        if self.reg(VIRTIO_MMIO_QUEUE_READY) or self.reg(VIRTIO_MMIO_QUEUE_NUM_MAX) == 0:
            return False
        self.set_reg(VIRTIO_MMIO_QUEUE_NUM, size)
        for low, high, address in (
            (VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH, desc),
            (VIRTIO_MMIO_QUEUE_DRIVER_LOW, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, driver),
            (VIRTIO_MMIO_QUEUE_DEVICE_LOW, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, device),
        ):
            self.set_reg(low, address & 0xFFFF_FFFF)
            self.set_reg(high, address >> 32)
        self.set_reg(VIRTIO_MMIO_QUEUE_READY, 1)
        return self.reg(VIRTIO_MMIO_QUEUE_READY) == 1

    def reset_queue(self, index: int) -> int:
        """Write QueueReset = 1; return QueueReset read back (0 once done)."""
        self.set_reg(VIRTIO_MMIO_QUEUE_SEL, index)
        self.set_reg(VIRTIO_MMIO_QUEUE_RESET, 1)
        return self.reg(VIRTIO_MMIO_QUEUE_RESET)

    def notify(self, index: int) -> None:
        """QueueNotify."""
        self.set_reg(VIRTIO_MMIO_QUEUE_NOTIFY, index)

    def interrupt_status(self) -> int:
        """InterruptStatus."""
        return self.reg(VIRTIO_MMIO_INTERRUPT_STATUS)

    def ack(self, bits: int) -> None:
        """InterruptACK."""
        self.set_reg(VIRTIO_MMIO_INTERRUPT_ACK, bits)

    def generation(self) -> int:
        """ConfigGeneration."""
        return self.reg(VIRTIO_MMIO_CONFIG_GENERATION)

    def read_config(self, offset: int, size: int) -> int:
        """Read the device configuration."""
        return self.machine.mmio.read(self.base + VIRTIO_MMIO_CONFIG + offset, size)

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Write the device configuration."""
        self.machine.mmio.write(self.base + VIRTIO_MMIO_CONFIG + offset, size, value)
