"""Test doubles for passthrough integrators (CONVENTIONS: simulators).

- ``config_image``: a type-0 config space with the BARs, capabilities and pin you list.
- ``FakeVfioDevice``: a scripted ``VfioDeviceBackend``: a config image, BAR regions
  backed by memfds (so ``region_mmap`` works and sparse areas can be tested), IRQ indexes
  with counts, and a record of every ``set_irqs``, DMA map and reset. ``fire(index, v)``
  signals the eventfd the device under test wired, as a host would; ``fail`` makes the
  next calls raise ``HostError``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from devmodels import HostError, MemoryRegion, UsageError
from devmodels.pci import defs as pcidefs

from .backend import DeviceInfo, IrqInfo, RegionInfo
from .defs import (
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_RESET,
    VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
)

__all__ = ["config_image", "FakeRegion", "SetIrqsCall", "FakeVfioDevice"]


def config_image(
    vendor: int = 0x1234,
    device: int = 0x11E8,
    class_code: int = 0x00FF00,
    *,
    bars: Sequence[tuple[int, int]] = (),
    caps: Sequence[tuple[int, int, bytes]] = (),
    pin: int = 1,
    size: int = pcidefs.PCI_CONFIG_SPACE_SIZE,
    header_type: int = 0,
) -> bytearray:
    """A config space: ``bars`` are ``(index, raw low dword)``, ``caps`` ``(id, offset, body)``.

    Capabilities are chained in the order given; ``body`` starts after ID and next.
    """
    image = bytearray(size)
    image[0:2] = vendor.to_bytes(2, "little")
    image[2:4] = device.to_bytes(2, "little")
    image[pcidefs.PCI_CLASS_PROG : pcidefs.PCI_CLASS_PROG + 3] = class_code.to_bytes(3, "little")
    image[pcidefs.PCI_HEADER_TYPE] = header_type
    image[pcidefs.PCI_INTERRUPT_PIN] = pin
    for index, raw in bars:
        offset = pcidefs.PCI_BASE_ADDRESS_0 + 4 * index
        image[offset : offset + 4] = raw.to_bytes(4, "little")
    if caps:
        image[pcidefs.PCI_STATUS] |= pcidefs.PCI_STATUS_CAP_LIST
        image[pcidefs.PCI_CAPABILITY_LIST] = caps[0][1]
        for i, (cap_id, offset, body) in enumerate(caps):
            image[offset] = cap_id
            image[offset + 1] = caps[i + 1][1] if i + 1 < len(caps) else 0
            image[offset + 2 : offset + 2 + len(body)] = body
    return image


@dataclass
class FakeRegion:
    """A BAR region: size, flags, optional sparse areas, contents in a memfd."""

    size: int
    flags: int = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
    sparse: tuple[tuple[int, int], ...] | None = None
    fd: int = -1

    def __post_init__(self) -> None:
        if self.size:
            self.fd = os.memfd_create("fake-bar", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, self.size)


@dataclass(frozen=True)
class SetIrqsCall:
    """One recorded ``set_irqs``."""

    index: int
    flags: int
    start: int
    count: int
    data: bytes
    fds: tuple[int, ...]


@dataclass
class FakeVfioDevice:
    """A scripted vfio-pci device (see the module docstring).

    Args:
        config: the config image (256 or 4096 bytes); writes land in it.
        regions: BAR index -> ``FakeRegion``.
        irq_counts: IRQ index -> count (INTx, MSI, MSI-X, ...).
    """

    config: bytearray
    regions: dict[int, FakeRegion] = field(default_factory=dict)
    irq_counts: dict[int, int] = field(default_factory=lambda: {VFIO_PCI_INTX_IRQ_INDEX: 1})
    can_reset: bool = True
    calls: list[SetIrqsCall] = field(default_factory=list)
    config_writes: list[tuple[int, bytes]] = field(default_factory=list)
    dma: dict[int, tuple[MemoryRegion, bool, bool]] = field(default_factory=dict)
    resets: int = 0
    fail: bool = False
    closed: bool = False
    wired: dict[int, list[int]] = field(default_factory=dict)

    def _check(self) -> None:
        if self.fail:
            raise HostError("fake device failure")

    def device_info(self) -> DeviceInfo:
        """A vfio-pci device with 9 regions and 5 IRQ indexes."""
        self._check()
        flags = VFIO_DEVICE_FLAGS_PCI | (VFIO_DEVICE_FLAGS_RESET if self.can_reset else 0)
        return DeviceInfo(flags, VFIO_PCI_NUM_REGIONS, VFIO_PCI_NUM_IRQS)

    def region_info(self, index: int) -> RegionInfo:
        """The scripted region (config is region 7)."""
        self._check()
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return RegionInfo(index, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE, len(self.config), 0)
        region = self.regions.get(index)
        if region is None:
            return RegionInfo(index, 0, 0, 0)
        return RegionInfo(index, region.flags, region.size, 0, region.sparse)

    def irq_info(self, index: int) -> IrqInfo:
        """INTx is maskable/automasked; the others are NORESIZE."""
        self._check()
        flags = VFIO_IRQ_INFO_EVENTFD | (
            VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED if index == VFIO_PCI_INTX_IRQ_INDEX else VFIO_IRQ_INFO_NORESIZE
        )
        return IrqInfo(index, flags, self.irq_counts.get(index, 0))

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        """Config from the image; BARs from their memfd."""
        self._check()
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return bytes(self.config[offset : offset + size])
        return os.pread(self.regions[index].fd, size, offset)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """Config into the image (recorded); BARs into their memfd."""
        self._check()
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            self.config_writes.append((offset, bytes(data)))
            self.config[offset : offset + len(data)] = data
            return
        os.pwrite(self.regions[index].fd, data, offset)

    def region_mmap(self, index: int, offset: int, size: int) -> mmap.mmap | None:
        """A shared mapping of the BAR's memfd when the region is mappable."""
        region = self.regions.get(index)
        if region is None or not region.flags & VFIO_REGION_INFO_FLAG_MMAP:
            return None
        return mmap.mmap(region.fd, size, flags=mmap.MAP_SHARED, offset=offset)

    def set_irqs(
        self, index: int, flags: int, start: int, count: int, data: bytes = b"", fds: Sequence[int] = ()
    ) -> None:
        """Record the call; remember wired eventfds (``fire`` signals them)."""
        self._check()
        self.calls.append(SetIrqsCall(index, flags, start, count, bytes(data), tuple(fds)))
        if flags == VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER and count == 0:
            self.wired.pop(index, None)
        elif flags & VFIO_IRQ_SET_DATA_EVENTFD:
            if start + count > self.irq_counts.get(index, 0):
                raise HostError(f"fake: index {index} has {self.irq_counts.get(index, 0)} vectors")
            if any(i != index for i in self.wired):
                raise HostError("fake: another index is active (EINVAL)")
            self.wired[index] = list(fds)

    def fire(self, index: int, vector: int = 0) -> None:
        """Signal the eventfd wired to ``index``/``vector`` (as the host would)."""
        os.eventfd_write(self.wired[index][vector], 1)

    def reset(self) -> None:
        """Count resets."""
        self._check()
        self.resets += 1

    def dma_map(self, region: MemoryRegion, iova: int, *, readable: bool = True, writable: bool = True) -> None:
        """Record a window."""
        self._check()
        if iova in self.dma:
            raise UsageError(f"{iova:#x} already mapped")
        self.dma[iova] = (region, readable, writable)

    def dma_unmap(self, iova: int, size: int) -> None:
        """Forget a window."""
        self._check()
        del self.dma[iova]

    def close(self) -> None:
        """Close the BAR memfds."""
        self.closed = True
        for region in self.regions.values():
            if region.fd >= 0:
                os.close(region.fd)
                region.fd = -1
