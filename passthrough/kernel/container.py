"""The legacy VFIO container (``/dev/vfio/vfio``) with the Type1 v2 IOMMU: a ``DmaDomain``.

``Documentation/driver-api/vfio.rst`` ("VFIO Usage Example") gives the order: open the
container, check ``VFIO_GET_API_VERSION == VFIO_API_VERSION`` and the IOMMU extension,
attach a group (``VFIO_GROUP_SET_CONTAINER``), then ``VFIO_SET_IOMMU``, then
``VFIO_IOMMU_GET_INFO`` and ``VFIO_IOMMU_MAP_DMA``.

Rules:

1. Every failing call becomes a ``VfioError`` subclass whose message says what to do.
2. ``VFIO_IOMMU_GET_INFO`` is asked with a growing ``argsz`` until its capability chain
   fits (linux/vfio.h: "argsz will be updated to report the necessary buffer size"), up to
   64 KiB; the chain is parsed with ``passthrough.caps``.
3. Mapping checks what the kernel would refuse anyway (alignment to the smallest IOMMU
   page, valid IOVA ranges), so the error names the bad argument.

An iommufd IOAS (devices opened as ``/dev/vfio/devices/vfioN``) would be a second
``DmaDomain`` with the same ``map_dma``/``unmap_dma``; nothing above this module depends
on the container.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from ..caps import CapabilityChainError, dma_avail, iova_ranges, parse_chain
from ..defs import (
    VFIO_API_VERSION,
    VFIO_CHECK_EXTENSION,
    VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_GET_API_VERSION,
    VFIO_IOMMU_GET_INFO,
    VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_MAP_DMA,
    VFIO_IOMMU_UNMAP_DMA,
    VFIO_SET_IOMMU,
    VFIO_TYPE1v2_IOMMU,
)
from ..errors import VfioError, VfioNotAvailableError, VfioPermissionError, VfioUnsupportedError
from ..layouts import vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_iommu_type1_info
from .ops import KernelOps, OsOps

__all__ = ["IommuInfo", "Type1Container", "CONTAINER_PATH"]

CONTAINER_PATH = "/dev/vfio/vfio"
_MAX_INFO = 1 << 16


@dataclass(frozen=True)
class IommuInfo:
    """``VFIO_IOMMU_GET_INFO`` decoded.

    Attributes:
        pgsizes: bitmap of supported IOMMU page sizes (0 if not reported).
        iova_ranges: valid ``(start, end)`` IOVA ranges, ``end`` inclusive (``None``: any).
        dma_avail: how many more mappings are allowed (``None``: not reported).
    """

    pgsizes: int
    iova_ranges: tuple[tuple[int, int], ...] | None
    dma_avail: int | None

    @property
    def min_page(self) -> int:
        """The smallest IOMMU page (4 KiB if not reported)."""
        return self.pgsizes & -self.pgsizes if self.pgsizes else 4096


class Type1Container:
    """An open container; becomes usable once a group is attached and ``set_iommu`` ran.

    Args:
        ops: the system-call layer (default: the real one).

    Raises:
        VfioNotAvailableError: no ``/dev/vfio/vfio`` or a different API version.
        VfioPermissionError: the node cannot be opened.
        VfioUnsupportedError: the kernel lacks the Type1 v2 IOMMU.
    """

    def __init__(self, ops: KernelOps | None = None) -> None:
        self.ops: KernelOps = ops or OsOps()
        try:
            self.fd = self.ops.open(CONTAINER_PATH, os.O_RDWR)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise VfioNotAvailableError(
                    f"{CONTAINER_PATH} does not exist", errno=exc.errno,
                    hint="load the VFIO modules (modprobe vfio vfio_iommu_type1 vfio-pci)",
                ) from exc
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise VfioPermissionError(
                    f"cannot open {CONTAINER_PATH}", errno=exc.errno, hint="run as root or grant access to the node"
                ) from exc
            raise VfioError(f"cannot open {CONTAINER_PATH}", errno=exc.errno) from exc
        self.iommu_set = False
        self._info: IommuInfo | None = None
        self._mappings: dict[int, int] = {}
        try:
            version = self._ioctl(VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION")
            if version != VFIO_API_VERSION:
                raise VfioNotAvailableError(f"VFIO API version {version}, this code speaks {VFIO_API_VERSION}")
            if not self.check_extension(VFIO_TYPE1v2_IOMMU):
                raise VfioUnsupportedError(
                    "the kernel has no Type1 v2 IOMMU backend",
                    hint="modprobe vfio_iommu_type1 and boot with the IOMMU on (intel_iommu=on / amd_iommu=on)",
                )
        except BaseException:
            self.close()
            raise

    def _ioctl(self, request: int, arg: int | bytearray, name: str) -> int:
        try:
            return self.ops.ioctl(self.fd, request, arg)
        except OSError as exc:
            raise VfioError(f"{name} on the container failed", errno=exc.errno) from exc

    def check_extension(self, extension: int) -> bool:
        """``VFIO_CHECK_EXTENSION``."""
        return self._ioctl(VFIO_CHECK_EXTENSION, extension, "VFIO_CHECK_EXTENSION") > 0

    def set_iommu(self, kind: int = VFIO_TYPE1v2_IOMMU) -> None:
        """``VFIO_SET_IOMMU`` (after a group was attached)."""
        try:
            self.ops.ioctl(self.fd, VFIO_SET_IOMMU, kind)
        except OSError as exc:
            raise VfioError(
                "VFIO_SET_IOMMU failed", errno=exc.errno, hint="attach a viable group to the container first"
            ) from exc
        self.iommu_set = True

    def iommu_info(self) -> IommuInfo:
        """``VFIO_IOMMU_GET_INFO`` with its capability chain (rule 2)."""
        argsz = vfio_iommu_type1_info.size
        while True:
            buffer = bytearray(argsz)
            buffer[: vfio_iommu_type1_info.size] = vfio_iommu_type1_info.pack(argsz, 0, 0, 0)
            self._ioctl(VFIO_IOMMU_GET_INFO, buffer, "VFIO_IOMMU_GET_INFO")
            info = vfio_iommu_type1_info.unpack(buffer)
            if info.flags & VFIO_IOMMU_INFO_CAPS and info.argsz > argsz:
                if info.argsz > _MAX_INFO:
                    raise VfioError(f"VFIO_IOMMU_GET_INFO asks for {info.argsz} bytes")
                argsz = info.argsz
                continue
            break
        caps = []
        if info.flags & VFIO_IOMMU_INFO_CAPS and info.cap_offset:
            try:
                caps = parse_chain(buffer, info.cap_offset, vfio_iommu_type1_info.size)
            except CapabilityChainError as exc:
                raise VfioError(f"VFIO_IOMMU_GET_INFO capability chain: {exc}") from None
        try:
            ranges = iova_ranges(caps)
            avail = dma_avail(caps)
        except CapabilityChainError as exc:
            raise VfioError(f"VFIO_IOMMU_GET_INFO capability: {exc}") from None
        return IommuInfo(
            info.iova_pgsizes if info.flags & VFIO_IOMMU_INFO_PGSIZES else 0,
            tuple((r.start, r.end) for r in ranges) if ranges is not None else None,
            avail,
        )

    def map_dma(self, vaddr: int, iova: int, size: int, *, readable: bool, writable: bool) -> None:
        """``VFIO_IOMMU_MAP_DMA`` (rule 3).

        Raises:
            VfioError: refused; ``VfioPermissionError`` when pinning hits the locked-memory
                limit (ENOMEM/EPERM from the kernel).
        """
        if self._info is None:
            self._info = self.iommu_info()
        info = self._info
        page = info.min_page
        if vaddr % page or iova % page or size % page or size <= 0:
            raise VfioError(f"DMA map vaddr={vaddr:#x} iova={iova:#x} size={size:#x} is not {page:#x}-aligned")
        if info.iova_ranges is not None and not any(s <= iova and iova + size - 1 <= e for s, e in info.iova_ranges):
            raise VfioError(f"IOVA [{iova:#x}, +{size:#x}) is outside the valid ranges {info.iova_ranges}")
        flags = (VFIO_DMA_MAP_FLAG_READ if readable else 0) | (VFIO_DMA_MAP_FLAG_WRITE if writable else 0)
        buffer = bytearray(vfio_iommu_type1_dma_map.pack(vfio_iommu_type1_dma_map.size, flags, vaddr, iova, size))
        try:
            self.ops.ioctl(self.fd, VFIO_IOMMU_MAP_DMA, buffer)
        except OSError as exc:
            if exc.errno in (errno.ENOMEM, errno.EPERM):
                raise VfioPermissionError(
                    f"VFIO_IOMMU_MAP_DMA of {size:#x} bytes failed", errno=exc.errno,
                    hint="raise the locked-memory limit (ulimit -l / RLIMIT_MEMLOCK) to cover guest RAM",
                ) from exc
            if exc.errno == errno.EEXIST:
                raise VfioError(f"IOVA [{iova:#x}, +{size:#x}) is already mapped", errno=exc.errno) from exc
            raise VfioError("VFIO_IOMMU_MAP_DMA failed", errno=exc.errno) from exc
        self._mappings[iova] = size

    def unmap_dma(self, iova: int, size: int) -> int:
        """``VFIO_IOMMU_UNMAP_DMA``; return the bytes the kernel unmapped."""
        buffer = bytearray(vfio_iommu_type1_dma_unmap.pack(vfio_iommu_type1_dma_unmap.size, 0, iova, size))
        self._ioctl(VFIO_IOMMU_UNMAP_DMA, buffer, "VFIO_IOMMU_UNMAP_DMA")
        self._mappings.pop(iova, None)
        return vfio_iommu_type1_dma_unmap.unpack(buffer).size

    def close(self) -> None:
        """Close the container (the kernel drops its mappings)."""
        if self.fd >= 0:
            try:
                self.ops.close(self.fd)
            finally:
                self.fd = -1
