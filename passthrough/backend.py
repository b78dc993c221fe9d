"""The "VFIO device" interface ``VfioPciDevice`` is built on, and what it returns.

One PCI function model (``VfioPciDevice``) serves both kinds of passthrough, because both
speak the same model (vfio-user.rst: "vfio-user reuses the core VFIO concepts defined in
its API"): a device has numbered *regions* (vfio-pci: BAR0–5, ROM, config, VGA) read and
written at offsets, numbered *IRQ indexes* (INTx, MSI, MSI-X, ERR, REQ) wired to eventfds
with ``SET_IRQS``, a reset, and DMA windows of the VMM's memory. Two implementations:

- ``passthrough.kernel.KernelVfioDevice``: a kernel VFIO device fd (ioctl, pread/pwrite,
  mmap) whose DMA goes through an IOMMU domain (Type1 container today; an iommufd/cdev
  domain fits the same ``DmaDomain`` protocol);
- ``passthrough.user.VfioUserClient``: a vfio-user connection.

Rules: backend methods raise ``HostError`` subclasses for host failures and
``UsageError`` for bad arguments; they never return partial results. Info objects are
plain frozen data.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from devmodels import MemoryRegion

from .defs import (
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_RESET,
    VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
)

__all__ = ["DeviceInfo", "RegionInfo", "IrqInfo", "VfioDeviceBackend", "DmaDomain"]


@dataclass(frozen=True)
class DeviceInfo:
    """``struct vfio_device_info``: flags and how many regions and IRQ indexes exist."""

    flags: int
    num_regions: int
    num_irqs: int

    @property
    def is_pci(self) -> bool:
        """``VFIO_DEVICE_FLAGS_PCI``."""
        return bool(self.flags & VFIO_DEVICE_FLAGS_PCI)

    @property
    def can_reset(self) -> bool:
        """``VFIO_DEVICE_FLAGS_RESET``."""
        return bool(self.flags & VFIO_DEVICE_FLAGS_RESET)


@dataclass(frozen=True)
class RegionInfo:
    """``struct vfio_region_info`` with its capabilities decoded.

    Attributes:
        index: region index.
        flags: ``VFIO_REGION_INFO_FLAG_*``.
        size: bytes (0: not implemented).
        offset: the region's offset in the device fd (kernel) or mmap fd (vfio-user).
        sparse_areas: ``(offset, size)`` of the mappable parts, if the region has a sparse
            mmap capability; ``None`` when the whole region is mappable (or none is).
        region_type: ``(type, subtype)`` from ``VFIO_REGION_INFO_CAP_TYPE``, if present.
    """

    index: int
    flags: int
    size: int
    offset: int
    sparse_areas: tuple[tuple[int, int], ...] | None = None
    region_type: tuple[int, int] | None = None

    @property
    def readable(self) -> bool:
        """``VFIO_REGION_INFO_FLAG_READ``."""
        return bool(self.flags & VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        """``VFIO_REGION_INFO_FLAG_WRITE``."""
        return bool(self.flags & VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mappable(self) -> bool:
        """``VFIO_REGION_INFO_FLAG_MMAP``."""
        return bool(self.flags & VFIO_REGION_INFO_FLAG_MMAP)

    def mmap_areas(self) -> tuple[tuple[int, int], ...]:
        """The ``(offset, size)`` parts a client may mmap (none unless ``mappable``)."""
        if not self.mappable or self.size == 0:
            return ()
        if self.sparse_areas is None:
            return ((0, self.size),)
        return tuple((o, s) for o, s in self.sparse_areas if s > 0 and o + s <= self.size)


@dataclass(frozen=True)
class IrqInfo:
    """``struct vfio_irq_info``."""

    index: int
    flags: int
    count: int

    @property
    def eventfd(self) -> bool:
        """``VFIO_IRQ_INFO_EVENTFD``: can signal an eventfd."""
        return bool(self.flags & VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        """``VFIO_IRQ_INFO_MASKABLE``: supports MASK/UNMASK actions."""
        return bool(self.flags & VFIO_IRQ_INFO_MASKABLE)

    @property
    def automasked(self) -> bool:
        """``VFIO_IRQ_INFO_AUTOMASKED``: masks itself when it fires (level INTx)."""
        return bool(self.flags & VFIO_IRQ_INFO_AUTOMASKED)

    @property
    def noresize(self) -> bool:
        """``VFIO_IRQ_INFO_NORESIZE``: vectors are set up as one set."""
        return bool(self.flags & VFIO_IRQ_INFO_NORESIZE)


@runtime_checkable
class VfioDeviceBackend(Protocol):
    """A VFIO device: regions, IRQ indexes, reset and DMA windows."""

    def device_info(self) -> DeviceInfo:
        """``DEVICE_GET_INFO``."""
        ...

    def region_info(self, index: int) -> RegionInfo:
        """``DEVICE_GET_REGION_INFO`` for ``index`` (capabilities decoded)."""
        ...

    def irq_info(self, index: int) -> IrqInfo:
        """``DEVICE_GET_IRQ_INFO`` for ``index``."""
        ...

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        """Read ``size`` bytes at ``offset`` of region ``index``."""
        ...

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of region ``index``."""
        ...

    def region_mmap(self, index: int, offset: int, size: int) -> mmap.mmap | None:
        """Map ``[offset, offset+size)`` of a mappable region, or ``None`` if not possible."""
        ...

    def set_irqs(
        self, index: int, flags: int, start: int, count: int, data: bytes = b"", fds: Sequence[int] = ()
    ) -> None:
        """``DEVICE_SET_IRQS`` with raw VFIO semantics (``VFIO_IRQ_SET_*`` flags).

        ``fds`` are the eventfds for ``DATA_EVENTFD`` (``-1`` de-assigns one vector);
        ``data`` is the bool array for ``DATA_BOOL``.
        """
        ...

    def reset(self) -> None:
        """``DEVICE_RESET``."""
        ...

    def dma_map(self, region: MemoryRegion, iova: int, *, readable: bool = True, writable: bool = True) -> None:
        """Let the device DMA to ``region`` at I/O virtual address ``iova``."""
        ...

    def dma_unmap(self, iova: int, size: int) -> None:
        """Withdraw the window mapped at ``iova`` of ``size`` bytes."""
        ...

    def close(self) -> None:
        """Release the device (and, for vfio-user, the connection)."""
        ...


@runtime_checkable
class DmaDomain(Protocol):
    """Where a kernel VFIO device's DMA windows are programmed: an IOMMU address space.

    ``Type1Container`` implements it with the legacy container; an iommufd IOAS (for
    devices opened through ``/dev/vfio/devices/vfioN``) would implement the same two calls.
    """

    def map_dma(self, vaddr: int, iova: int, size: int, *, readable: bool, writable: bool) -> None:
        """Map ``size`` bytes of this process at ``vaddr`` to ``iova``."""
        ...

    def unmap_dma(self, iova: int, size: int) -> int:
        """Unmap ``[iova, iova+size)``; return the bytes unmapped."""
        ...
