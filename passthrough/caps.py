"""VFIO INFO capability chains: parsing (bounded, hostile-safe) and building.

``linux/vfio.h``: "For extension of INFO ioctls, VFIO makes use of a capability chain
designed after PCI/e capabilities ... This offset field is relative to the start of the
INFO buffer, as is the next field within each capability header." vfio-user uses the same
chains in ``VFIO_USER_DEVICE_GET_REGION_INFO`` replies.

Rules:

1. A chain comes from a kernel or a vfio-user peer, so it is untrusted: every header must
   lie inside the buffer, no offset may be visited twice (no loops), at most
   ``MAX_CAPS`` links are followed, and a body is bounded by the buffer. A violation raises
   ``CapabilityChainError``; nothing else escapes.
2. A capability's body runs from the end of its header to the next capability (by offset)
   or the end of the buffer; the typed decoders check the body is long enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .defs import (
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE,
)
from .layouts import (
    LayoutError,
    VfioIovaRange,
    VfioRegionSparseMmapArea,
    vfio_info_cap_header,
    vfio_iommu_type1_info_cap_iova_range,
    vfio_iommu_type1_info_dma_avail,
    vfio_iova_range,
    vfio_region_info_cap_sparse_mmap,
    vfio_region_info_cap_type,
    vfio_region_sparse_mmap_area,
)

__all__ = [
    "MAX_CAPS",
    "CapabilityChainError",
    "InfoCap",
    "parse_chain",
    "build_chain",
    "sparse_mmap_areas",
    "region_type",
    "iova_ranges",
    "dma_avail",
    "sparse_mmap_body",
]

MAX_CAPS = 64
_HEADER = vfio_info_cap_header.size


class CapabilityChainError(ValueError):
    """A capability chain is malformed (rule 1)."""


@dataclass(frozen=True)
class InfoCap:
    """One capability of a chain.

    Attributes:
        id: capability ID (its namespace depends on the INFO ioctl).
        version: capability-specific version.
        offset: where its header starts in the INFO buffer.
        body: the bytes after its header (rule 2).
    """

    id: int
    version: int
    offset: int
    body: bytes


def parse_chain(buffer: bytes | bytearray | memoryview, first: int, fixed_size: int) -> list[InfoCap]:
    """Follow a chain that starts at ``first`` (0: no chain) in an INFO ``buffer``.

    Args:
        buffer: the whole INFO buffer (fixed structure plus capabilities).
        first: the ``cap_offset`` field.
        fixed_size: size of the fixed structure; no capability may start inside it.

    Raises:
        CapabilityChainError: rule 1 is broken.
    """
    data = bytes(buffer)
    links: list[tuple[int, int, int]] = []  # (offset, id, version)
    seen: set[int] = set()
    offset = first
    while offset:
        if len(links) >= MAX_CAPS:
            raise CapabilityChainError(f"more than {MAX_CAPS} capabilities")
        if offset in seen:
            raise CapabilityChainError(f"capability chain loops back to offset {offset:#x}")
        if offset < fixed_size or offset + _HEADER > len(data):
            raise CapabilityChainError(
                f"capability at {offset:#x} is outside [{fixed_size:#x}, {len(data):#x})"
            )
        seen.add(offset)
        header = vfio_info_cap_header.unpack(data, offset)
        links.append((offset, header.id, header.version))
        offset = header.next
    starts = sorted(seen)
    caps = []
    for offset, cap_id, version in links:
        later = [s for s in starts if s > offset]
        end = later[0] if later else len(data)
        if end < offset + _HEADER:
            raise CapabilityChainError(f"capability at {offset:#x} overlaps the next one")
        caps.append(InfoCap(cap_id, version, offset, data[offset + _HEADER : end]))
    return caps


def build_chain(fixed: bytes, caps: Sequence[tuple[int, int, bytes]], align: int = 8) -> tuple[bytes, int]:
    """Append ``(id, version, body)`` capabilities to a fixed structure.

    Returns the whole buffer and the offset of the first capability (0 if none), to be
    stored in the structure's ``cap_offset``. Each capability starts ``align``-aligned.
    """
    out = bytearray(fixed)
    offsets = []
    for _, _, body in caps:
        out += bytes(-len(out) % align)
        offsets.append(len(out))
        out += bytes(_HEADER) + body
    for i, (cap_id, version, _) in enumerate(caps):
        nxt = offsets[i + 1] if i + 1 < len(offsets) else 0
        out[offsets[i] : offsets[i] + _HEADER] = vfio_info_cap_header.pack(cap_id, version, nxt)
    return bytes(out), (offsets[0] if offsets else 0)


def _find(caps: Sequence[InfoCap], cap_id: int) -> InfoCap | None:
    for cap in caps:
        if cap.id == cap_id:
            return cap
    return None


def sparse_mmap_areas(caps: Sequence[InfoCap]) -> tuple[VfioRegionSparseMmapArea, ...] | None:
    """The areas of ``VFIO_REGION_INFO_CAP_SPARSE_MMAP``, or ``None`` if absent.

    Raises:
        CapabilityChainError: ``nr_areas`` does not fit the capability's body.
    """
    cap = _find(caps, VFIO_REGION_INFO_CAP_SPARSE_MMAP)
    if cap is None:
        return None
    try:
        count = vfio_region_info_cap_sparse_mmap.unpack(cap.body).nr_areas
        base = vfio_region_info_cap_sparse_mmap.size
        if base + count * vfio_region_sparse_mmap_area.size > len(cap.body):
            raise CapabilityChainError(f"sparse mmap capability claims {count} areas in {len(cap.body)} bytes")
        return tuple(
            vfio_region_sparse_mmap_area.unpack(cap.body, base + i * vfio_region_sparse_mmap_area.size)
            for i in range(count)
        )
    except LayoutError as exc:
        raise CapabilityChainError(str(exc)) from None


def sparse_mmap_body(areas: Sequence[tuple[int, int]]) -> bytes:
    """The body of a sparse mmap capability listing ``(offset, size)`` areas."""
    body = vfio_region_info_cap_sparse_mmap.pack(len(areas))
    return body + b"".join(vfio_region_sparse_mmap_area.pack(o, s) for o, s in areas)


def region_type(caps: Sequence[InfoCap]) -> tuple[int, int] | None:
    """``(type, subtype)`` of ``VFIO_REGION_INFO_CAP_TYPE``, or ``None`` if absent.

    Raises:
        CapabilityChainError: the body is short.
    """
    cap = _find(caps, VFIO_REGION_INFO_CAP_TYPE)
    if cap is None:
        return None
    try:
        value = vfio_region_info_cap_type.unpack(cap.body)
    except LayoutError as exc:
        raise CapabilityChainError(str(exc)) from None
    return value.type, value.subtype


def iova_ranges(caps: Sequence[InfoCap]) -> tuple[VfioIovaRange, ...] | None:
    """The valid IOVA ranges of ``VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE``, or ``None``.

    Raises:
        CapabilityChainError: ``nr_iovas`` does not fit the body, or a range has end < start.
    """
    cap = _find(caps, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)
    if cap is None:
        return None
    try:
        count = vfio_iommu_type1_info_cap_iova_range.unpack(cap.body).nr_iovas
        base = vfio_iommu_type1_info_cap_iova_range.size
        if base + count * vfio_iova_range.size > len(cap.body):
            raise CapabilityChainError(f"IOVA range capability claims {count} ranges in {len(cap.body)} bytes")
        ranges = tuple(vfio_iova_range.unpack(cap.body, base + i * vfio_iova_range.size) for i in range(count))
    except LayoutError as exc:
        raise CapabilityChainError(str(exc)) from None
    for r in ranges:
        if r.end < r.start:
            raise CapabilityChainError(f"IOVA range [{r.start:#x}, {r.end:#x}] ends before it starts")
    return ranges


def dma_avail(caps: Sequence[InfoCap]) -> int | None:
    """How many more DMA mappings the container allows (``..._DMA_AVAIL``), or ``None``."""
    cap = _find(caps, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
    if cap is None:
        return None
    try:
        return vfio_iommu_type1_info_dma_avail.unpack(cap.body).avail
    except LayoutError as exc:
        raise CapabilityChainError(str(exc)) from None
