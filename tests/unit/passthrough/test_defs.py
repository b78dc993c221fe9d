"""ioctl numbers and structure sizes against include/uapi/linux/vfio.h.

Expected values are computed by hand from the header text (torvalds/linux
include/uapi/linux/vfio.h): ``#define VFIO_TYPE (';')`` = 0x3b, ``#define VFIO_BASE 100``
= 0x64, and every request is ``_IO(VFIO_TYPE, VFIO_BASE + n)``, which asm-generic/ioctl.h
encodes as ``type << 8 | nr`` (direction and size 0).
"""

from __future__ import annotations

import pytest

from passthrough import defs, layouts

# (name, value) hard-coded from the header: _IO(';', 100 + n) = 0x3b00 | (0x64 + n).
HEADER_IOCTLS = [
    ("VFIO_GET_API_VERSION", 0x3B64),  # VFIO_BASE + 0
    ("VFIO_CHECK_EXTENSION", 0x3B65),  # + 1
    ("VFIO_SET_IOMMU", 0x3B66),  # + 2
    ("VFIO_GROUP_GET_STATUS", 0x3B67),  # + 3
    ("VFIO_GROUP_SET_CONTAINER", 0x3B68),  # + 4
    ("VFIO_GROUP_UNSET_CONTAINER", 0x3B69),  # + 5
    ("VFIO_GROUP_GET_DEVICE_FD", 0x3B6A),  # + 6
    ("VFIO_DEVICE_GET_INFO", 0x3B6B),  # + 7
    ("VFIO_DEVICE_GET_REGION_INFO", 0x3B6C),  # + 8
    ("VFIO_DEVICE_GET_IRQ_INFO", 0x3B6D),  # + 9
    ("VFIO_DEVICE_SET_IRQS", 0x3B6E),  # + 10
    ("VFIO_DEVICE_RESET", 0x3B6F),  # + 11
    ("VFIO_IOMMU_GET_INFO", 0x3B70),  # + 12
    ("VFIO_IOMMU_MAP_DMA", 0x3B71),  # + 13
    ("VFIO_IOMMU_UNMAP_DMA", 0x3B72),  # + 14
]


@pytest.mark.parametrize(("name", "value"), HEADER_IOCTLS)
def test_ioctl_numbers_match_the_header(name: str, value: int) -> None:
    assert getattr(defs, name) == value


def test_ioc_encoding_of_a_sized_request() -> None:
    # linux/input.h: EVIOCGVERSION = _IOR('E', 0x01, int) = 0x80044501.
    assert defs._IOC(defs._IOC_READ, ord("E"), 0x01, 4) == 0x8004_4501
    # linux/kvm.h: KVM_GET_API_VERSION = _IO(KVMIO, 0x00) with KVMIO 0xAE.
    assert defs._IO(0xAE, 0x00) == 0xAE00


def test_fixed_indexes() -> None:
    # vfio.h enums: BAR0..5, ROM, CONFIG, VGA, NUM_REGIONS = 9; INTX, MSI, MSIX, ERR, REQ.
    assert (defs.VFIO_PCI_CONFIG_REGION_INDEX, defs.VFIO_PCI_NUM_REGIONS) == (7, 9)
    assert (defs.VFIO_PCI_MSIX_IRQ_INDEX, defs.VFIO_PCI_NUM_IRQS) == (2, 5)
    assert defs.VFIO_TYPE1v2_IOMMU == 3


# sizeof() of each structure, from the header's field lists (u32 = 4, __aligned_u64 = 8,
# header 8); the layouts of capabilities hold the part after vfio_info_cap_header.
HEADER_SIZES = [
    (layouts.vfio_info_cap_header, 8),
    (layouts.vfio_group_status, 8),
    (layouts.vfio_device_info, 24),  # argsz flags num_regions num_irqs cap_offset pad
    (layouts.vfio_region_info, 32),
    (layouts.vfio_region_info_cap_sparse_mmap, 16 - 8),  # nr_areas reserved
    (layouts.vfio_region_sparse_mmap_area, 16),
    (layouts.vfio_region_info_cap_type, 16 - 8),
    (layouts.vfio_irq_info, 16),
    (layouts.vfio_irq_set, 20),
    (layouts.vfio_iommu_type1_info, 24),  # argsz flags iova_pgsizes(8) cap_offset pad
    (layouts.vfio_iommu_type1_info_cap_iova_range, 16 - 8),
    (layouts.vfio_iova_range, 16),
    (layouts.vfio_iommu_type1_info_dma_avail, 12 - 8),
    (layouts.vfio_iommu_type1_dma_map, 32),
    (layouts.vfio_iommu_type1_dma_unmap, 24),
    # vfio-user.rst: header 16; DMA_MAP "This structure is 32 bytes"; DMA_UNMAP 24;
    # region access 16; DMA region access 16; device info 16.
    (layouts.vfio_user_header, 16),
    (layouts.vfio_user_dma_map, 32),
    (layouts.vfio_user_dma_unmap, 24),
    (layouts.vfio_user_region_access, 16),
    (layouts.vfio_user_dma_region_access, 16),
    (layouts.vfio_user_device_info, 16),
    (layouts.vfio_user_version, 4),
]


@pytest.mark.parametrize(("layout", "size"), HEADER_SIZES, ids=[layout.name for layout, _ in HEADER_SIZES])
def test_structure_sizes_match_the_specs(layout: layouts.Layout, size: int) -> None:
    assert layout.size == size


def test_region_info_field_offsets() -> None:
    raw = layouts.vfio_region_info.pack(32, 0xF, 7, 0x20, 0x1000, 0x70_0000_0000)
    assert raw[8:12] == (7).to_bytes(4, "little")  # index at 8
    assert raw[16:24] == (0x1000).to_bytes(8, "little")  # size at 16
    assert layouts.vfio_region_info.unpack(raw).offset == 0x70_0000_0000


def test_short_buffers_raise_layout_error() -> None:
    with pytest.raises(layouts.LayoutError) as info:
        layouts.vfio_irq_set.unpack(b"\0" * 19)
    assert (info.value.needed, info.value.got) == (20, 19)
    with pytest.raises(layouts.LayoutError):
        layouts.vfio_irq_info.unpack(b"\0" * 32, offset=20)
