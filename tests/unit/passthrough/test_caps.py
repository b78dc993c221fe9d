"""VFIO INFO capability chains from crafted buffers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passthrough import caps
from passthrough.defs import (
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE,
)
from passthrough.layouts import vfio_info_cap_header, vfio_region_info

FIXED = vfio_region_info.size


def test_build_and_parse_round_trip() -> None:
    body_sparse = caps.sparse_mmap_body([(0, 0x1000), (0x3000, 0x1000)])
    body_type = (0x8000_8086).to_bytes(4, "little") + (1).to_bytes(4, "little")
    buffer, first = caps.build_chain(
        bytes(FIXED), [(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, body_sparse), (VFIO_REGION_INFO_CAP_TYPE, 1, body_type)]
    )
    assert first == FIXED
    chain = caps.parse_chain(buffer, first, FIXED)
    assert [(c.id, c.version) for c in chain] == [(1, 1), (2, 1)]
    assert caps.sparse_mmap_areas(chain) == ((0, 0x1000), (0x3000, 0x1000))
    assert caps.region_type(chain) == (0x8000_8086, 1)


def test_no_chain() -> None:
    assert caps.parse_chain(bytes(FIXED), 0, FIXED) == []


def test_iova_range_and_dma_avail() -> None:
    iova = (2).to_bytes(4, "little") + bytes(4) + (0).to_bytes(8, "little") + (0xFEDF_FFFF).to_bytes(8, "little")
    iova += (0xFEF0_0000).to_bytes(8, "little") + ((1 << 48) - 1).to_bytes(8, "little")
    buffer, first = caps.build_chain(
        bytes(24), [(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, (65535).to_bytes(4, "little")), (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, iova)]
    )
    chain = caps.parse_chain(buffer, first, 24)
    assert caps.dma_avail(chain) == 65535
    ranges = caps.iova_ranges(chain)
    assert ranges is not None and [(r.start, r.end) for r in ranges] == [(0, 0xFEDF_FFFF), (0xFEF0_0000, (1 << 48) - 1)]


def header(cap_id: int, nxt: int) -> bytes:
    return vfio_info_cap_header.pack(cap_id, 1, nxt)


@pytest.mark.parametrize(
    ("buffer", "first", "message"),
    [
        (bytes(FIXED) + header(1, FIXED), FIXED, "loops"),  # points to itself
        (bytes(FIXED) + header(1, FIXED + 8) + header(2, FIXED), FIXED, "loops"),
        (bytes(FIXED) + header(1, 0), 8, "outside"),  # inside the fixed structure
        (bytes(FIXED) + header(1, 0), FIXED + 4, "outside"),  # header past the end
        (bytes(FIXED) + header(1, 0xFFFF_FFFF), FIXED, "outside"),
    ],
)
def test_malformed_chains(buffer: bytes, first: int, message: str) -> None:
    with pytest.raises(caps.CapabilityChainError, match=message):
        caps.parse_chain(buffer, first, FIXED)


def test_overlapping_capabilities() -> None:
    buffer = bytes(FIXED) + header(1, FIXED + 4) + bytes(8)
    with pytest.raises(caps.CapabilityChainError):
        caps.parse_chain(buffer, FIXED, FIXED)


def test_chain_length_is_bounded() -> None:
    links = b"".join(header(1, FIXED + 8 * (i + 1)) for i in range(caps.MAX_CAPS + 5)) + header(1, 0)
    with pytest.raises(caps.CapabilityChainError, match="more than"):
        caps.parse_chain(bytes(FIXED) + links, FIXED, FIXED)


def test_sparse_area_count_beyond_body() -> None:
    body = (1000).to_bytes(4, "little") + bytes(4) + bytes(16)
    buffer, first = caps.build_chain(bytes(FIXED), [(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, body)])
    with pytest.raises(caps.CapabilityChainError, match="claims 1000"):
        caps.sparse_mmap_areas(caps.parse_chain(buffer, first, FIXED))


def test_inverted_iova_range() -> None:
    body = (1).to_bytes(4, "little") + bytes(4) + (10).to_bytes(8, "little") + (5).to_bytes(8, "little")
    buffer, first = caps.build_chain(bytes(24), [(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, body)])
    with pytest.raises(caps.CapabilityChainError, match="ends before"):
        caps.iova_ranges(caps.parse_chain(buffer, first, 24))


def test_short_type_body() -> None:
    buffer, first = caps.build_chain(bytes(FIXED), [(VFIO_REGION_INFO_CAP_TYPE, 1, b"\1\2")])
    with pytest.raises(caps.CapabilityChainError):
        caps.region_type(caps.parse_chain(buffer, first, FIXED))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 300))
def test_arbitrary_buffers_only_raise_chain_errors(tail: bytes, first: int) -> None:
    buffer = bytes(FIXED) + tail
    try:
        chain = caps.parse_chain(buffer, first, FIXED)
        caps.sparse_mmap_areas(chain)
        caps.region_type(chain)
        caps.iova_ranges(chain)
        caps.dma_avail(chain)
    except caps.CapabilityChainError:
        pass
