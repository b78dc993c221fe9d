"""Every wire structure of kernel VFIO and vfio-user, declared once, named as in the specs.

Rules:

1. One ``Layout`` per C structure of ``include/uapi/linux/vfio.h`` or per message body of
   ``docs/interop/vfio-user.rst``, in host byte order with the kernel's padding written out
   (``x`` pad bytes), so ``layout.size`` equals ``sizeof(struct ...)``. The unit tests check
   each size against the header.
2. vfio-user reuses the kernel structures where its spec says so (region info, IRQ info,
   IRQ set, capability headers); they are the same objects here.
3. These are precompiled ``struct.Struct`` objects rather than ``construct`` structs: every
   guest MMIO access of a passed-through BAR crosses ``vfio_user_region_access`` (CONVENTIONS:
   layouts, hot-path exception). Decoding untrusted bytes goes through ``Layout.unpack``,
   which raises ``LayoutError`` (never ``struct.error``) when the buffer is short.
"""

from __future__ import annotations

import struct
from typing import Generic, NamedTuple, TypeVar

__all__ = [
    "Layout",
    "LayoutError",
    "VfioInfoCapHeader",
    "VfioGroupStatus",
    "VfioDeviceInfo",
    "VfioRegionInfo",
    "VfioRegionSparseMmapHeader",
    "VfioRegionSparseMmapArea",
    "VfioRegionInfoCapType",
    "VfioIrqInfo",
    "VfioIrqSet",
    "VfioIommuType1Info",
    "VfioIovaRangeHeader",
    "VfioIovaRange",
    "VfioDmaAvail",
    "VfioIommuType1DmaMap",
    "VfioIommuType1DmaUnmap",
    "VfioUserHeader",
    "VfioUserVersion",
    "VfioUserDeviceInfo",
    "VfioUserDmaMap",
    "VfioUserDmaUnmap",
    "VfioUserRegionAccess",
    "VfioUserDmaRegionAccess",
    "VfioUserDeviceFeature",
    "VfioDeviceFeatureMigration",
    "VfioDeviceFeatureMigState",
    "VfioUserMigData",
    "VfioDmaLoggingControl",
    "VfioDmaLoggingRange",
    "VfioDmaLoggingReport",
    "VfioUserWriteMultiEntry",
    "VfioUserWriteMultiCount",
    "vfio_info_cap_header",
    "vfio_group_status",
    "vfio_device_info",
    "vfio_region_info",
    "vfio_region_info_cap_sparse_mmap",
    "vfio_region_sparse_mmap_area",
    "vfio_region_info_cap_type",
    "vfio_irq_info",
    "vfio_irq_set",
    "vfio_iommu_type1_info",
    "vfio_iommu_type1_info_cap_iova_range",
    "vfio_iova_range",
    "vfio_iommu_type1_info_dma_avail",
    "vfio_iommu_type1_dma_map",
    "vfio_iommu_type1_dma_unmap",
    "vfio_user_header",
    "vfio_user_version",
    "vfio_user_device_info",
    "vfio_user_dma_map",
    "vfio_user_dma_unmap",
    "vfio_user_region_access",
    "vfio_user_dma_region_access",
    "vfio_user_device_feature",
    "vfio_device_feature_migration",
    "vfio_device_feature_mig_state",
    "vfio_user_mig_data",
    "vfio_device_feature_dma_logging_control",
    "vfio_device_feature_dma_logging_range",
    "vfio_device_feature_dma_logging_report",
    "vfio_user_write_multi_count",
    "vfio_user_write_multi_entry",
]

T = TypeVar("T", bound=tuple)  # a NamedTuple class


class LayoutError(ValueError):
    """A buffer is too short for the structure it should hold.

    Attributes:
        layout: the structure's C name.
        needed, got: byte counts.
    """

    def __init__(self, layout: str, needed: int, got: int) -> None:
        self.layout = layout
        self.needed = needed
        self.got = got
        super().__init__(f"{layout} needs {needed} bytes, got {got}")


class Layout(Generic[T]):
    """A C structure: a ``struct.Struct`` plus the NamedTuple its fields decode into.

    Args:
        name: the C name (``vfio_region_info``).
        fmt: the ``struct`` format, little/host-endian with explicit padding.
        kind: the NamedTuple class of the fields, in order.
    """

    __slots__ = ("name", "struct", "kind", "size")

    def __init__(self, name: str, fmt: str, kind: type[T]) -> None:
        self.name = name
        self.struct = struct.Struct(fmt)
        self.kind = kind
        self.size = self.struct.size

    def pack(self, *values: int | bytes) -> bytes:
        """The bytes of the structure with ``values`` in field order (``bytes`` for ``s`` fields)."""
        return self.struct.pack(*values)

    def unpack(self, buffer: bytes | bytearray | memoryview, offset: int = 0) -> T:
        """Decode the structure at ``offset``.

        Raises:
            LayoutError: fewer than ``size`` bytes remain.
        """
        available = len(buffer) - offset
        if offset < 0 or available < self.size:
            raise LayoutError(self.name, self.size, max(available, 0))
        return self.kind(*self.struct.unpack_from(buffer, offset))

    def __repr__(self) -> str:
        return f"Layout({self.name}, {self.size} bytes)"


# -- linux/vfio.h -----------------------------------------------------------------------


class VfioInfoCapHeader(NamedTuple):
    """``struct vfio_info_cap_header``: one link of an INFO capability chain."""

    id: int
    version: int
    next: int


class VfioGroupStatus(NamedTuple):
    """``struct vfio_group_status``."""

    argsz: int
    flags: int


class VfioDeviceInfo(NamedTuple):
    """``struct vfio_device_info`` (kernel form, with ``cap_offset``)."""

    argsz: int
    flags: int
    num_regions: int
    num_irqs: int
    cap_offset: int


class VfioRegionInfo(NamedTuple):
    """``struct vfio_region_info``."""

    argsz: int
    flags: int
    index: int  # type: ignore[assignment]  # the spec name shadows tuple.index/count
    cap_offset: int
    size: int
    offset: int


class VfioRegionSparseMmapHeader(NamedTuple):
    """The fixed part of ``struct vfio_region_info_cap_sparse_mmap`` after its header."""

    nr_areas: int


class VfioRegionSparseMmapArea(NamedTuple):
    """``struct vfio_region_sparse_mmap_area``."""

    offset: int
    size: int


class VfioRegionInfoCapType(NamedTuple):
    """The body of ``struct vfio_region_info_cap_type``."""

    type: int
    subtype: int


class VfioIrqInfo(NamedTuple):
    """``struct vfio_irq_info``."""

    argsz: int
    flags: int
    index: int  # type: ignore[assignment]  # the spec name shadows tuple.index/count
    count: int  # type: ignore[assignment]  # the spec name shadows tuple.index/count


class VfioIrqSet(NamedTuple):
    """``struct vfio_irq_set`` without its flexible ``data[]``."""

    argsz: int
    flags: int
    index: int  # type: ignore[assignment]  # the spec name shadows tuple.index/count
    start: int
    count: int  # type: ignore[assignment]  # the spec name shadows tuple.index/count


class VfioIommuType1Info(NamedTuple):
    """``struct vfio_iommu_type1_info``."""

    argsz: int
    flags: int
    iova_pgsizes: int
    cap_offset: int


class VfioIovaRangeHeader(NamedTuple):
    """The fixed body of ``struct vfio_iommu_type1_info_cap_iova_range``."""

    nr_iovas: int


class VfioIovaRange(NamedTuple):
    """``struct vfio_iova_range`` (``end`` is inclusive)."""

    start: int
    end: int


class VfioDmaAvail(NamedTuple):
    """The body of ``struct vfio_iommu_type1_info_dma_avail``."""

    avail: int


class VfioIommuType1DmaMap(NamedTuple):
    """``struct vfio_iommu_type1_dma_map``."""

    argsz: int
    flags: int
    vaddr: int
    iova: int
    size: int


class VfioIommuType1DmaUnmap(NamedTuple):
    """``struct vfio_iommu_type1_dma_unmap`` without ``data[]``."""

    argsz: int
    flags: int
    iova: int
    size: int


vfio_info_cap_header: Layout[VfioInfoCapHeader] = Layout("vfio_info_cap_header", "=HHI", VfioInfoCapHeader)
vfio_group_status: Layout[VfioGroupStatus] = Layout("vfio_group_status", "=II", VfioGroupStatus)
vfio_device_info: Layout[VfioDeviceInfo] = Layout("vfio_device_info", "=IIIII4x", VfioDeviceInfo)
vfio_region_info: Layout[VfioRegionInfo] = Layout("vfio_region_info", "=IIIIQQ", VfioRegionInfo)
# struct vfio_region_info_cap_sparse_mmap = header (8) + nr_areas + reserved, then areas[].
vfio_region_info_cap_sparse_mmap: Layout[VfioRegionSparseMmapHeader] = Layout(
    "vfio_region_info_cap_sparse_mmap", "=I4x", VfioRegionSparseMmapHeader
)
vfio_region_sparse_mmap_area: Layout[VfioRegionSparseMmapArea] = Layout(
    "vfio_region_sparse_mmap_area", "=QQ", VfioRegionSparseMmapArea
)
vfio_region_info_cap_type: Layout[VfioRegionInfoCapType] = Layout(
    "vfio_region_info_cap_type", "=II", VfioRegionInfoCapType
)
vfio_irq_info: Layout[VfioIrqInfo] = Layout("vfio_irq_info", "=IIII", VfioIrqInfo)
vfio_irq_set: Layout[VfioIrqSet] = Layout("vfio_irq_set", "=IIIII", VfioIrqSet)
vfio_iommu_type1_info: Layout[VfioIommuType1Info] = Layout("vfio_iommu_type1_info", "=IIQI4x", VfioIommuType1Info)
vfio_iommu_type1_info_cap_iova_range: Layout[VfioIovaRangeHeader] = Layout(
    "vfio_iommu_type1_info_cap_iova_range", "=I4x", VfioIovaRangeHeader
)
vfio_iova_range: Layout[VfioIovaRange] = Layout("vfio_iova_range", "=QQ", VfioIovaRange)
vfio_iommu_type1_info_dma_avail: Layout[VfioDmaAvail] = Layout(
    "vfio_iommu_type1_info_dma_avail", "=I", VfioDmaAvail
)
vfio_iommu_type1_dma_map: Layout[VfioIommuType1DmaMap] = Layout(
    "vfio_iommu_type1_dma_map", "=IIQQQ", VfioIommuType1DmaMap
)
vfio_iommu_type1_dma_unmap: Layout[VfioIommuType1DmaUnmap] = Layout(
    "vfio_iommu_type1_dma_unmap", "=IIQQ", VfioIommuType1DmaUnmap
)

# -- vfio-user (docs/interop/vfio-user.rst) -------------------------------------------------


class VfioUserHeader(NamedTuple):
    """The 16-byte header of every vfio-user message ("Header")."""

    msg_id: int
    command: int
    msg_size: int
    flags: int
    error_no: int


class VfioUserVersion(NamedTuple):
    """``VFIO_USER_VERSION`` before its JSON ``version data``."""

    major: int
    minor: int


class VfioUserDeviceInfo(NamedTuple):
    """``VFIO_USER_DEVICE_GET_INFO`` request/reply (``struct vfio_device_info`` without caps)."""

    argsz: int
    flags: int
    num_regions: int
    num_irqs: int


class VfioUserDmaMap(NamedTuple):
    """``VFIO_USER_DMA_MAP`` request."""

    argsz: int
    flags: int
    offset: int
    address: int
    size: int


class VfioUserDmaUnmap(NamedTuple):
    """``VFIO_USER_DMA_UNMAP`` request and reply."""

    argsz: int
    flags: int
    address: int
    size: int


class VfioUserRegionAccess(NamedTuple):
    """``VFIO_USER_REGION_READ``/``WRITE`` before ``data``."""

    offset: int
    region: int
    count: int  # type: ignore[assignment]  # the spec name shadows tuple.index/count


class VfioUserDmaRegionAccess(NamedTuple):
    """``VFIO_USER_DMA_READ``/``WRITE`` before ``data``."""

    address: int
    count: int  # type: ignore[assignment]  # the spec name shadows tuple.index/count


vfio_user_header: Layout[VfioUserHeader] = Layout("vfio_user_header", "=HHIII", VfioUserHeader)
vfio_user_version: Layout[VfioUserVersion] = Layout("vfio_user_version", "=HH", VfioUserVersion)
vfio_user_device_info: Layout[VfioUserDeviceInfo] = Layout("vfio_user_device_info", "=IIII", VfioUserDeviceInfo)
vfio_user_dma_map: Layout[VfioUserDmaMap] = Layout("vfio_user_dma_map", "=IIQQQ", VfioUserDmaMap)
vfio_user_dma_unmap: Layout[VfioUserDmaUnmap] = Layout("vfio_user_dma_unmap", "=IIQQ", VfioUserDmaUnmap)
vfio_user_region_access: Layout[VfioUserRegionAccess] = Layout(
    "vfio_user_region_access", "=QII", VfioUserRegionAccess
)
vfio_user_dma_region_access: Layout[VfioUserDmaRegionAccess] = Layout(
    "vfio_user_dma_region_access", "=QQ", VfioUserDmaRegionAccess
)


class VfioUserDeviceFeature(NamedTuple):
    """``VFIO_USER_DEVICE_FEATURE`` before ``data`` (``struct vfio_device_feature``)."""

    argsz: int
    flags: int


class VfioDeviceFeatureMigration(NamedTuple):
    """``struct vfio_device_feature_migration``."""

    flags: int


class VfioDeviceFeatureMigState(NamedTuple):
    """``struct vfio_device_feature_mig_state`` (``data_fd`` is unused by vfio-user)."""

    device_state: int
    data_fd: int


class VfioUserMigData(NamedTuple):
    """``VFIO_USER_MIG_DATA_READ``/``WRITE`` before ``data``."""

    argsz: int
    size: int


vfio_user_device_feature: Layout[VfioUserDeviceFeature] = Layout("vfio_user_device_feature", "=II", VfioUserDeviceFeature)
vfio_device_feature_migration: Layout[VfioDeviceFeatureMigration] = Layout(
    "vfio_device_feature_migration", "=Q", VfioDeviceFeatureMigration
)
vfio_device_feature_mig_state: Layout[VfioDeviceFeatureMigState] = Layout(
    "vfio_device_feature_mig_state", "=Ii", VfioDeviceFeatureMigState
)
vfio_user_mig_data: Layout[VfioUserMigData] = Layout("vfio_user_mig_data", "=II", VfioUserMigData)


class VfioDmaLoggingControl(NamedTuple):
    """``struct vfio_device_feature_dma_logging_control`` before ``ranges`` (vfio-user form)."""

    page_size: int
    num_ranges: int


class VfioDmaLoggingRange(NamedTuple):
    """``struct vfio_device_feature_dma_logging_range``."""

    iova: int
    length: int


class VfioDmaLoggingReport(NamedTuple):
    """``struct vfio_device_feature_dma_logging_report`` before the bitmap (vfio-user form)."""

    iova: int
    length: int
    page_size: int


class VfioUserWriteMultiEntry(NamedTuple):
    """One write of ``VFIO_USER_REGION_WRITE_MULTI`` ("Single Device Write Format")."""

    offset: int
    region: int
    count: int  # type: ignore[assignment]  # the spec name shadows tuple.index/count
    data: bytes


class VfioUserWriteMultiCount(NamedTuple):
    """``wr_cnt`` of ``VFIO_USER_REGION_WRITE_MULTI`` (request and reply)."""

    wr_cnt: int


# vfio-user.rst "VFIO_DEVICE_FEATURE_DMA_LOGGING_START": the data is inline, not a pointer
# to the ranges as in linux/vfio.h (page_size, num_ranges, reserved, then ranges[]).
vfio_device_feature_dma_logging_control: Layout[VfioDmaLoggingControl] = Layout(
    "vfio_device_feature_dma_logging_control", "=QI4x", VfioDmaLoggingControl
)
vfio_device_feature_dma_logging_range: Layout[VfioDmaLoggingRange] = Layout(
    "vfio_device_feature_dma_logging_range", "=QQ", VfioDmaLoggingRange
)
# "VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT": iova, length, page_size, then the bitmap.
vfio_device_feature_dma_logging_report: Layout[VfioDmaLoggingReport] = Layout(
    "vfio_device_feature_dma_logging_report", "=QQQ", VfioDmaLoggingReport
)
vfio_user_write_multi_count: Layout[VfioUserWriteMultiCount] = Layout(
    "vfio_user_write_multi_count", "=Q", VfioUserWriteMultiCount
)
vfio_user_write_multi_entry: Layout[VfioUserWriteMultiEntry] = Layout(
    "vfio_user_write_multi_entry", "=QII8s", VfioUserWriteMultiEntry
)
