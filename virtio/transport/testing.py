"""Test helpers for the transports: an echo device and driver-side transport drivers.

Shipped in the package (CONVENTIONS: simulators) so VMM integrators can drive a virtio transport the way a
guest does, in-process:

- ``EchoDevice``: a small complete virtio device. Every chain's readable bytes are copied,
  XORed with the configuration's ``xor`` byte, into the same chain's writable buffers;
  the used length is the number of bytes written. It has a driver-writable configuration
  field (``xor``), a device-changed one (``link``) and supports queue reset.
- ``PciDriver`` / ``MmioDriver``: what a guest driver does with the transport registers
  (the §3.1.1 initialization, queue setup, notifications, interrupt acknowledgement),
  reached only through config cycles and MMIO on a ``devmodels.Machine``. They are
  ``virtio.testing.TransportDriver`` s, so ``virtio.testing.bring_up`` and the device
  simulators (``BlkDriver``, ``NetDriver``) run over them. Ring contents are the business
  of the ring simulators in ``virtio.testing``.

Rules:

1. The drivers use only what a guest sees (config space, BARs, the MMIO window); they
   never look inside the device objects. The one VMM-side object they may hold is the
   ``served`` function or transport whose posted work ``poll`` runs (``virtio.testing``
   rule 5).
2. A PCI function is addressed by devfn; the ``Slot`` that ``Machine.add_pci`` returns is
   read as its function 0 (``devmodels.pci.as_devfn``), and ``PciDriver.for_function``
   finds the devfn itself.
3. What the caller got wrong (no function at the address, not a virtio device, BARs not
   assigned) raises ``UsageError``; a device that breaks the transport specification (a
   required capability missing) raises ``DeviceProtocolError``. Never ``assert``.
"""

from __future__ import annotations

from typing import Any

import construct as cs

from devmodels import GuestMemory, GuestMemoryError, Machine, UsageError
from devmodels.trace import tracepoint
from devmodels.pci import PciFunction, as_devfn
from devmodels.pci.defs import (
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CAPABILITY_LIST,
    PCI_COMMAND,
    PCI_COMMAND_MEMORY,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_TABLE,
    PCI_VENDOR_ID,
)
from devmodels.runtime import ServedDevice
from devmodels.testing import DeviceProtocolError

from ..defs import (
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
    VIRTIO_PCI_VENDOR_ID,
)
from ..device import QueueFactory, VirtioDevice
from ..queue.chain import Chain
from ..testing import TransportDriver
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
# TransportDriver lives in virtio.testing (every transport's driver, and DirectDriver);
# it is re-exported here, where it was first defined.

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

    def handle_queue(self, index: int, chains: list[Chain]) -> None:
        """Echo each chain into itself and return it."""
        key = self.config[4] if self.has_feature(ECHO_F_XOR) else 0
        used: list[tuple[Chain | int, int]] = []
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

    def _echo(self, chain: Chain, key: int) -> int:
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


def _common_fields() -> dict[str, tuple[int, int]]:
    fields, offset = {}, 0
    for sub in virtio_pci_common_cfg.subcons:
        fields[sub.name] = (offset, sub.sizeof())
        offset += sub.sizeof()
    return fields


_COMMON_FIELDS = _common_fields()
"""(offset, size) of each ``virtio_pci_common_cfg`` field."""


_REQUIRED_CAPS = {
    VIRTIO_PCI_CAP_COMMON_CFG: "VIRTIO_PCI_CAP_COMMON_CFG",
    VIRTIO_PCI_CAP_NOTIFY_CFG: "VIRTIO_PCI_CAP_NOTIFY_CFG",
    VIRTIO_PCI_CAP_ISR_CFG: "VIRTIO_PCI_CAP_ISR_CFG",
    VIRTIO_PCI_CAP_PCI_CFG: "VIRTIO_PCI_CAP_PCI_CFG",
}
"""The capabilities a device MUST present (§4.1.4: common, notify, ISR, PCI config access)."""


class PciDriver(TransportDriver):
    """A virtio PCI driver on ``machine`` for the function at ``devfn`` of bus 0 (rule 2).

    The BARs must already be assigned (``machine.enumerate()``).

    Args:
        machine: the machine the function is plugged into.
        devfn: its devfn, or the ``Slot`` ``Machine.add_pci`` returned.
        served: the function (or anything ``ServedDevice``) whose posted work ``poll``
            runs, as the VMM's loop would.

    Raises:
        UsageError: no function there, not a virtio device, or its BARs are not assigned
            (rule 3).
        DeviceProtocolError: a required virtio capability is missing (§4.1.4).
    """

    @classmethod
    def for_function(cls, machine: Machine, function: PciFunction) -> PciDriver:
        """A driver for ``function`` plugged into ``machine`` (``served`` is the function)."""
        return cls(machine, machine.devfn_of(function), served=function)

    def __init__(self, machine: Machine, devfn: int, *, served: ServedDevice | None = None) -> None:
        self.machine = machine
        self.memory = machine.memory
        self.devfn = as_devfn(devfn)
        self.served = served
        where = f"00:{self.devfn >> 3:02x}.{self.devfn & 7} (devfn {self.devfn:#x})"
        vendor = self.cfg_read(PCI_VENDOR_ID, 2)
        if vendor == 0xFFFF:
            raise UsageError(f"no PCI function at {where}: Machine.add_pci returns a Slot, pass it as it is "
                             f"(or slot << 3), or use PciDriver.for_function(machine, function)")
        if vendor != VIRTIO_PCI_VENDOR_ID:
            raise UsageError(f"the function at {where} is not a virtio device (vendor {vendor:#06x})")
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
        missing = [name for cfg_type, name in _REQUIRED_CAPS.items() if cfg_type not in self.caps]
        if missing:
            raise DeviceProtocolError(f"the virtio function at {where} lacks {', '.join(missing)} (§4.1.4)")
        common_bar = self.caps[VIRTIO_PCI_CAP_COMMON_CFG].bar
        if not self.cfg_read(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY or not self.bar_address(common_bar):
            raise UsageError(f"BAR{common_bar} of {where} is not assigned or memory decoding is off: "
                             "run machine.enumerate() first")

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

    def poll(self) -> None:
        """Read ``device_status`` first: a read flushes the posted writes before it (PCI 3.0
        §3.2.5 ordering; ``devmodels.runtime`` rule 4), so a device served elsewhere (over
        vfio-user, in another thread or process) has handled a notification before the
        driver looks at the rings. Then the served object's posted work, if it was given."""
        self.read_status()
        super().poll()

    def num_queues(self) -> int:
        """``num_queues``."""
        return self.read_common("num_queues")

    def queue_max_size(self, index: int) -> int:
        """``queue_size`` of queue ``index`` after a reset (its maximum, §4.1.4.3.2)."""
        self.write_common("queue_select", index)
        return self.read_common("queue_size")

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
        if self.msix_cap is None:
            raise UsageError("the function has no MSI-X capability (built with msix_vectors=0?)")
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
    """A virtio-mmio (version 2) driver for the window at ``base`` of ``machine.mmio``.

    Args:
        machine: the machine whose MMIO bus holds the window.
        base: the window's address.
        served: the transport (or anything ``ServedDevice``) whose posted work ``poll`` runs.

    Raises:
        UsageError: no virtio-mmio version 2 window at ``base`` (§4.2.3.1.1).
    """

    MAX_QUEUES = 1024
    """virtio-mmio has no queue count: ``num_queues`` probes QueueNumMax up to this many."""

    def __init__(self, machine: Machine, base: int, *, served: ServedDevice | None = None) -> None:
        self.machine = machine
        self.memory = machine.memory
        self.base = base
        self.served = served
        # §4.2.3.1.1: check MagicValue and Version, then DeviceID.
        magic, version = self.reg(VIRTIO_MMIO_MAGIC_VALUE), self.reg(VIRTIO_MMIO_VERSION_REG)
        if magic != VIRTIO_MMIO_MAGIC:
            raise UsageError(f"no virtio-mmio window at {base:#x}: MagicValue reads {magic:#x}")
        if version != VIRTIO_MMIO_VERSION:
            raise UsageError(f"the virtio-mmio window at {base:#x} is version {version}, not {VIRTIO_MMIO_VERSION}")
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

    def num_queues(self) -> int:
        """Queues whose QueueNumMax is not 0, counted from 0 (bounded by ``MAX_QUEUES``)."""
        for index in range(self.MAX_QUEUES):
            if not self.queue_max_size(index):
                return index
        return self.MAX_QUEUES

    def queue_max_size(self, index: int) -> int:
        """QueueNumMax of queue ``index``."""
        self.set_reg(VIRTIO_MMIO_QUEUE_SEL, index)
        return self.reg(VIRTIO_MMIO_QUEUE_NUM_MAX)

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
