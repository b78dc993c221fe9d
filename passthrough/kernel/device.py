"""A kernel VFIO device fd as a ``VfioDeviceBackend``, and ``open_pci_device`` to get one.

Rules:

1. Region I/O is ``pread``/``pwrite`` on the device fd at the region's ``offset`` (vfio-pci
   performs 1/2/4/8-byte accesses of those sizes as single device accesses); ``mmap`` is
   offered only for regions with ``VFIO_REGION_INFO_FLAG_MMAP``, limited to their sparse
   areas (the MSI-X table page is never among them).
2. INFO ioctls are retried with the ``argsz`` the kernel asks for (capability chains),
   bounded at 64 KiB; chains are parsed with ``passthrough.caps``.
3. DMA windows are programmed through the device's ``DmaDomain`` with the host virtual
   address of the ``MemoryRegion``'s buffer; the VMM must unmap a region before closing it
   (the kernel keeps its pages pinned until then).
4. ``open_pci_device`` follows ``Documentation/driver-api/vfio.rst``: sysfs ``iommu_group``
   and driver checks first, then container, group (viable), ``SET_CONTAINER``,
   ``SET_IOMMU``, ``GET_DEVICE_FD``; every failure is a ``VfioError`` naming the fix, and
   whatever was opened is closed again.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Sequence

from devmodels import MemoryRegion, UsageError

from ..backend import DeviceInfo, DmaDomain, IrqInfo, RegionInfo
from ..caps import CapabilityChainError, parse_chain, region_type, sparse_mmap_areas
from ..defs import (
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_GET_INFO,
    VFIO_DEVICE_GET_IRQ_INFO,
    VFIO_DEVICE_GET_REGION_INFO,
    VFIO_DEVICE_RESET,
    VFIO_DEVICE_SET_IRQS,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_FLAG_CAPS,
)
from ..errors import VfioError, VfioGroupNotFoundError, VfioUnsupportedError
from ..layouts import vfio_device_info, vfio_irq_info, vfio_irq_set, vfio_region_info
from .container import Type1Container
from .group import VfioGroup
from .ops import KernelOps, OsOps

__all__ = ["KernelVfioDevice", "open_pci_device", "buffer_address"]

_MAX_INFO = 1 << 16


def buffer_address(region: MemoryRegion) -> int:
    """The host virtual address of a region's buffer (mmap or bytearray)."""
    view = ctypes.c_char.from_buffer(region.buffer)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # drop the buffer export so the mapping can still be closed later


class KernelVfioDevice:
    """A VFIO device fd (rules 1–3); owns the fd and, if given, its group and container.

    Args:
        fd: the device fd from ``VFIO_GROUP_GET_DEVICE_FD``.
        domain: where DMA windows go (a ``Type1Container``).
        ops: the system-call layer.
        owned: objects with ``close()`` to close with the device (group, container).
        name: for messages (the PCI address).
    """

    def __init__(
        self, fd: int, domain: DmaDomain, ops: KernelOps | None = None, *, owned: Sequence[object] = (), name: str = ""
    ) -> None:
        self.fd = fd
        self.domain = domain
        self.ops: KernelOps = ops or OsOps()
        self.name = name or f"vfio-device-fd{fd}"
        self._owned = list(owned)
        self._regions: dict[int, RegionInfo] = {}

    def _ioctl(self, request: int, arg: int | bytearray, what: str) -> int:
        try:
            return self.ops.ioctl(self.fd, request, arg)
        except OSError as exc:
            raise VfioError(f"{what} on {self.name} failed", errno=exc.errno) from exc

    def device_info(self) -> DeviceInfo:
        """``VFIO_DEVICE_GET_INFO``."""
        buffer = bytearray(vfio_device_info.pack(vfio_device_info.size, 0, 0, 0, 0))
        self._ioctl(VFIO_DEVICE_GET_INFO, buffer, "VFIO_DEVICE_GET_INFO")
        info = vfio_device_info.unpack(buffer)
        return DeviceInfo(info.flags, info.num_regions, info.num_irqs)

    def region_info(self, index: int) -> RegionInfo:
        """``VFIO_DEVICE_GET_REGION_INFO`` with capabilities (rule 2)."""
        cached = self._regions.get(index)
        if cached is not None:
            return cached
        argsz = vfio_region_info.size
        while True:
            buffer = bytearray(argsz)
            buffer[: vfio_region_info.size] = vfio_region_info.pack(argsz, 0, index, 0, 0, 0)
            self._ioctl(VFIO_DEVICE_GET_REGION_INFO, buffer, f"VFIO_DEVICE_GET_REGION_INFO({index})")
            info = vfio_region_info.unpack(buffer)
            if info.flags & VFIO_REGION_INFO_FLAG_CAPS and info.argsz > argsz:
                if info.argsz > _MAX_INFO:
                    raise VfioError(f"region {index} info asks for {info.argsz} bytes")
                argsz = info.argsz
                continue
            break
        try:
            caps = parse_chain(buffer, info.cap_offset, vfio_region_info.size) if info.flags & VFIO_REGION_INFO_FLAG_CAPS else []
            sparse = sparse_mmap_areas(caps)
            kind = region_type(caps)
        except CapabilityChainError as exc:
            raise VfioError(f"region {index} capability chain: {exc}") from None
        result = RegionInfo(
            index, info.flags, info.size, info.offset,
            tuple((a.offset, a.size) for a in sparse) if sparse is not None else None, kind,
        )
        self._regions[index] = result
        return result

    def irq_info(self, index: int) -> IrqInfo:
        """``VFIO_DEVICE_GET_IRQ_INFO``."""
        buffer = bytearray(vfio_irq_info.pack(vfio_irq_info.size, 0, index, 0))
        self._ioctl(VFIO_DEVICE_GET_IRQ_INFO, buffer, f"VFIO_DEVICE_GET_IRQ_INFO({index})")
        info = vfio_irq_info.unpack(buffer)
        return IrqInfo(index, info.flags, info.count)

    def _region(self, index: int, offset: int, size: int) -> RegionInfo:
        info = self.region_info(index)
        if offset < 0 or size < 0 or offset + size > info.size:
            raise UsageError(f"[{offset:#x}, +{size:#x}) is outside region {index} ({info.size:#x} bytes)")
        return info

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        """``pread`` at the region's offset (rule 1)."""
        info = self._region(index, offset, size)
        try:
            data = self.ops.pread(self.fd, size, info.offset + offset)
        except OSError as exc:
            raise VfioError(f"read of region {index} at {offset:#x} failed", errno=exc.errno) from exc
        if len(data) != size:
            raise VfioError(f"short read of region {index} at {offset:#x}: {len(data)} of {size} bytes")
        return data

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """``pwrite`` at the region's offset (rule 1)."""
        info = self._region(index, offset, len(data))
        try:
            written = self.ops.pwrite(self.fd, data, info.offset + offset)
        except OSError as exc:
            raise VfioError(f"write of region {index} at {offset:#x} failed", errno=exc.errno) from exc
        if written != len(data):
            raise VfioError(f"short write of region {index} at {offset:#x}: {written} of {len(data)} bytes")

    def region_mmap(self, index: int, offset: int, size: int) -> mmap.mmap | None:
        """Map a mappable area of a region (rule 1), or ``None``."""
        info = self.region_info(index)
        if not any(o <= offset and offset + size <= o + s for o, s in info.mmap_areas()):
            return None
        try:
            return self.ops.mmap(self.fd, size, info.offset + offset)
        except (OSError, ValueError):
            return None

    def set_irqs(
        self, index: int, flags: int, start: int, count: int, data: bytes = b"", fds: Sequence[int] = ()
    ) -> None:
        """``VFIO_DEVICE_SET_IRQS``; eventfds go in ``data[]`` as ``__s32``."""
        if flags & VFIO_IRQ_SET_DATA_EVENTFD:
            data = struct.pack(f"={len(fds)}i", *fds)
        argsz = vfio_irq_set.size + len(data)
        self._ioctl(VFIO_DEVICE_SET_IRQS, bytearray(vfio_irq_set.pack(argsz, flags, index, start, count) + data), f"VFIO_DEVICE_SET_IRQS({index})")

    def reset(self) -> None:
        """``VFIO_DEVICE_RESET``."""
        self._ioctl(VFIO_DEVICE_RESET, 0, "VFIO_DEVICE_RESET")

    def dma_map(self, region: MemoryRegion, iova: int, *, readable: bool = True, writable: bool = True) -> None:
        """Map ``region`` (by its host address) at ``iova`` in the IOMMU (rule 3)."""
        self.domain.map_dma(buffer_address(region), iova, region.size, readable=readable, writable=writable)

    def dma_unmap(self, iova: int, size: int) -> None:
        """Unmap a window."""
        self.domain.unmap_dma(iova, size)

    def close(self) -> None:
        """Close the device fd, then whatever it owns (group, container)."""
        if self.fd >= 0:
            try:
                self.ops.close(self.fd)
            finally:
                self.fd = -1
        while self._owned:
            closer = getattr(self._owned.pop(), "close", None)
            if callable(closer):
                closer()


def _sysfs_device(bdf: str) -> str:
    return f"/sys/bus/pci/devices/{bdf}"


def open_pci_device(bdf: str, ops: KernelOps | None = None) -> KernelVfioDevice:
    """Open the PCI function ``bdf`` (``0000:00:03.0``) through kernel VFIO (rule 4).

    Raises:
        VfioGroupNotFoundError: no such device, or it has no IOMMU group.
        VfioUnsupportedError: it is not bound to vfio-pci or is not a PCI VFIO device.
        VfioNotAvailableError, VfioGroupNotViableError, VfioDeviceBusyError,
        VfioPermissionError, VfioError: the kernel refused a step.
    """
    ops = ops or OsOps()
    sysfs = _sysfs_device(bdf)
    if not ops.exists(sysfs):
        raise VfioGroupNotFoundError(f"no PCI device {bdf}", hint="check the address with lspci -D")
    try:
        group = int(os.path.basename(ops.readlink(f"{sysfs}/iommu_group")))
    except (OSError, ValueError) as exc:
        raise VfioGroupNotFoundError(
            f"{bdf} has no IOMMU group", errno=getattr(exc, "errno", None),
            hint="enable the IOMMU (intel_iommu=on / amd_iommu=on, or vfio's enable_unsafe_noiommu_mode for tests)",
        ) from exc
    try:
        driver = os.path.basename(ops.readlink(f"{sysfs}/driver"))
    except OSError:
        driver = ""
    if driver != "vfio-pci":
        raise VfioUnsupportedError(
            f"{bdf} is bound to {driver or 'no driver'}, not vfio-pci",
            hint=f"echo vfio-pci > {sysfs}/driver_override; echo {bdf} > {sysfs}/driver/unbind; "
            f"echo {bdf} > /sys/bus/pci/drivers_probe",
        )
    try:
        members = sorted(ops.listdir(f"/sys/kernel/iommu_groups/{group}/devices"))
    except OSError:
        members = [bdf]
    opened: list[object] = []
    try:
        container = Type1Container(ops)
        opened.append(container)
        vfio_group = VfioGroup(group, ops)
        opened.append(vfio_group)
        vfio_group.require_viable(members)
        vfio_group.set_container(container)
        container.set_iommu()
        fd = vfio_group.get_device_fd(bdf)
    except BaseException:
        for thing in reversed(opened):
            thing.close()  # type: ignore[attr-defined]
        raise
    device = KernelVfioDevice(fd, container, ops, owned=opened, name=bdf)
    try:
        info = device.device_info()
    except BaseException:
        device.close()
        raise
    if not info.flags & VFIO_DEVICE_FLAGS_PCI:
        device.close()
        raise VfioUnsupportedError(f"{bdf} is not a vfio-pci device (flags {info.flags:#x})", errno=errno.ENODEV)
    return device
