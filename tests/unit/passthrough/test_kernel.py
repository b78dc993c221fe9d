"""Kernel VFIO layers (container, group, device fd, open_pci_device) against a fake kernel."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from devmodels import Machine, MemoryRegion
from devmodels.pci import defs as pcidefs
from passthrough import (
    VfioDeviceBusyError,
    VfioError,
    VfioGroupNotFoundError,
    VfioGroupNotViableError,
    VfioNotAvailableError,
    VfioPciDevice,
    VfioPermissionError,
    VfioUnsupportedError,
)
from passthrough.defs import (
    VFIO_DEVICE_GET_REGION_INFO,
    VFIO_GROUP_GET_DEVICE_FD,
    VFIO_GROUP_SET_CONTAINER,
    VFIO_IOMMU_MAP_DMA,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
    VFIO_SET_IOMMU,
    VFIO_TYPE1v2_IOMMU,
)
from passthrough.kernel import Type1Container, VfioGroup, buffer_address, open_pci_device
from passthrough.kernel.testing import IOVA_RANGES, PGSIZES, REGION_SHIFT, FakeKernel, FakePciDevice
from passthrough.testing import FakeRegion, FakeVfioDevice, config_image

BDF = "0000:00:03.0"
RWM = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP


def make_model() -> FakeVfioDevice:
    caps = [(pcidefs.PCI_CAP_ID_MSIX, 0x40, struct.pack("<HII", 1, 0x1000, 0x1800))]
    image = config_image(0x1234, 0x11E8, bars=[(0, 0xFEA0_0000)], caps=caps)
    return FakeVfioDevice(image, {0: FakeRegion(0x2000, RWM, sparse=((0, 0x1000),))}, {0: 1, 1: 1, 2: 2})


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel(
        devices={
            BDF: FakePciDevice(BDF, 7, model=make_model()),
            "0000:00:04.0": FakePciDevice("0000:00:04.0", 7, model=make_model()),
        }
    )


def test_open_follows_the_documented_sequence(kernel: FakeKernel) -> None:
    device = open_pci_device(BDF, kernel)
    kinds = [kind for kind, _ in kernel.log]
    requests = [request for _, request in kernel.log]
    assert requests.index(VFIO_GROUP_SET_CONTAINER) < requests.index(VFIO_SET_IOMMU) < requests.index(VFIO_GROUP_GET_DEVICE_FD)
    assert kinds[-1] == "device"
    assert kernel.iommu_set == {device.domain.fd: VFIO_TYPE1v2_IOMMU}  # type: ignore[attr-defined]
    assert device.device_info().num_regions == 9
    device.close()
    assert kernel.open_fds == {}


def test_region_info_retries_argsz_for_the_sparse_capability(kernel: FakeKernel) -> None:
    device = open_pci_device(BDF, kernel)
    info = device.region_info(0)
    assert info.offset == 0 << REGION_SHIFT and info.size == 0x2000
    assert info.mmap_areas() == ((0, 0x1000),)
    assert [r for _, r in kernel.log].count(VFIO_DEVICE_GET_REGION_INFO) == 2
    assert device.region_info(7).offset == 7 << REGION_SHIFT
    device.close()


def test_region_io_uses_region_offsets(kernel: FakeKernel) -> None:
    device = open_pci_device(BDF, kernel)
    device.region_write(0, 0x1010, b"\x01\x02")
    assert device.region_read(0, 0x1010, 2) == b"\x01\x02"
    assert device.region_read(7, 0, 4) == struct.pack("<HH", 0x1234, 0x11E8)
    with pytest.raises(Exception, match="outside region"):
        device.region_read(0, 0x1FFF, 4)
    mapped = device.region_mmap(0, 0, 0x1000)
    assert mapped is not None and mapped[0x10:0x12] == b"\0\0"
    mapped.close()
    assert device.region_mmap(0, 0x1000, 0x1000) is None  # not a sparse area
    device.close()


def test_set_irqs_passes_eventfds_as_s32_array(kernel: FakeKernel) -> None:
    device = open_pci_device(BDF, kernel)
    fds = [os.eventfd(0), os.eventfd(0)]
    device.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 2, fds=fds)
    model = kernel.devices[BDF].model
    assert model is not None and model.calls[-1].fds == tuple(fds)
    device.close()
    for fd in fds:
        os.close(fd)


def test_iommu_info_with_capability_chain(kernel: FakeKernel) -> None:
    device = open_pci_device(BDF, kernel)
    container = device.domain
    assert isinstance(container, Type1Container)
    info = container.iommu_info()
    assert info.pgsizes == PGSIZES and info.min_page == 0x1000
    assert info.iova_ranges == IOVA_RANGES and info.dma_avail == 65535
    device.close()


def test_dma_map_uses_host_addresses_and_checks_ranges(kernel: FakeKernel) -> None:
    device = open_pci_device(BDF, kernel)
    region = MemoryRegion.anonymous(0, 0x10000)
    device.dma_map(region, 0)
    vaddr, size, flags = kernel.mappings[0]
    assert vaddr == buffer_address(region) and size == 0x10000 and flags == 0b11
    container = device.domain
    assert isinstance(container, Type1Container)
    with pytest.raises(VfioError, match="aligned"):
        container.map_dma(vaddr + 8, 0x100000, 0x1000, readable=True, writable=True)
    with pytest.raises(VfioError, match="outside the valid ranges"):
        container.map_dma(vaddr, 0xFEE0_0000, 0x1000, readable=True, writable=True)  # the MSI window
    with pytest.raises(VfioError, match="already mapped"):
        device.dma_map(region, 0)
    device.dma_unmap(0, 0x10000)
    assert kernel.mappings == {}
    region.close()  # possible: the buffer export was dropped
    device.close()


def test_dma_map_memlock_failure_names_the_limit(kernel: FakeKernel) -> None:
    device = open_pci_device(BDF, kernel)
    kernel.ioctl_errors[VFIO_IOMMU_MAP_DMA] = errno.ENOMEM
    region = MemoryRegion.anonymous(0, 0x1000)
    with pytest.raises(VfioPermissionError, match="RLIMIT_MEMLOCK"):
        device.dma_map(region, 0)
    region.close()
    device.close()


# -- every host-side failure is a VfioError naming what to do ------------------------------


def test_no_vfio_node(kernel: FakeKernel) -> None:
    kernel.vfio_present = False
    with pytest.raises(VfioNotAvailableError, match="modprobe vfio"):
        open_pci_device(BDF, kernel)
    assert kernel.open_fds == {}


def test_container_permission(kernel: FakeKernel) -> None:
    kernel.errors["/dev/vfio/vfio"] = errno.EACCES
    with pytest.raises(VfioPermissionError, match="root"):
        open_pci_device(BDF, kernel)


def test_no_type1v2(kernel: FakeKernel) -> None:
    kernel.extensions = set()
    with pytest.raises(VfioUnsupportedError, match="intel_iommu=on"):
        open_pci_device(BDF, kernel)
    assert kernel.open_fds == {}


def test_no_such_device(kernel: FakeKernel) -> None:
    with pytest.raises(VfioGroupNotFoundError, match="lspci"):
        open_pci_device("0000:00:1f.0", kernel)


def test_no_iommu_group(kernel: FakeKernel) -> None:
    kernel.devices[BDF].group = None
    with pytest.raises(VfioGroupNotFoundError, match="enable the IOMMU"):
        open_pci_device(BDF, kernel)


def test_not_bound_to_vfio_pci(kernel: FakeKernel) -> None:
    kernel.devices[BDF].driver = "e1000e"
    with pytest.raises(VfioUnsupportedError, match="driver_override") as info:
        open_pci_device(BDF, kernel)
    assert "e1000e" in str(info.value)


def test_group_not_viable_lists_its_devices(kernel: FakeKernel) -> None:
    kernel.non_viable.add(7)
    with pytest.raises(VfioGroupNotViableError, match="0000:00:04.0"):
        open_pci_device(BDF, kernel)
    assert kernel.open_fds == {}


def test_group_busy(kernel: FakeKernel) -> None:
    first = open_pci_device(BDF, kernel)
    with pytest.raises(VfioDeviceBusyError, match="other VMM"):
        open_pci_device("0000:00:04.0", kernel)
    first.close()
    assert kernel.open_fds == {}


def test_device_fd_busy(kernel: FakeKernel) -> None:
    container = Type1Container(kernel)
    group = VfioGroup(7, kernel)
    group.set_container(container)
    container.set_iommu()
    fd = group.get_device_fd(BDF)
    with pytest.raises(VfioDeviceBusyError, match="already open"):
        group.get_device_fd(BDF)
    with pytest.raises(VfioGroupNotFoundError):
        group.get_device_fd("0000:00:09.0")
    kernel.close(fd)
    group.close()
    container.close()


def test_group_node_missing(kernel: FakeKernel) -> None:
    with pytest.raises(VfioGroupNotFoundError, match="driver_override"):
        VfioGroup(42, kernel)


def test_set_iommu_without_a_group(kernel: FakeKernel) -> None:
    container = Type1Container(kernel)
    with pytest.raises(VfioError, match="attach a viable group"):
        container.set_iommu()
    container.close()


# -- VfioPciDevice over the kernel backend --------------------------------------------------


def test_vfio_pci_device_over_kernel_vfio(kernel: FakeKernel) -> None:
    machine = Machine(ram_size=1 << 20)
    device = VfioPciDevice(open_pci_device(BDF, kernel))
    device.map_memory(machine.memory)
    assert kernel.mappings[0][1] == 1 << 20
    machine.add_pci(device)
    info = next(i for i in machine.enumerate() if i.vendor_id == 0x1234)
    bar0 = info.bars[0].address
    assert bar0 is not None
    machine.mmio.write(bar0 + 0x100, 4, 0xCAFE)  # through the mmap of the sparse area
    model = kernel.devices[BDF].model
    assert model is not None
    assert os.pread(model.regions[0].fd, 4, 0x100) == (0xCAFE).to_bytes(4, "little")
    # MSI-X: the table (at 0x1000 in BAR0) is virtual; enabling wires eventfds by ioctl.
    machine.mmio.write(bar0 + 0x1000, 4, 0xFEE0_0000)
    machine.mmio.write(bar0 + 0x1008, 4, 0x31)
    machine.mmio.write(bar0 + 0x100C, 4, 0)
    cap = device.msix.offset  # type: ignore[union-attr]
    machine.config_write(0, info.devfn, cap + 2, 2, pcidefs.PCI_MSIX_FLAGS_ENABLE)
    assert model.calls[-1].index == VFIO_PCI_MSIX_IRQ_INDEX and len(model.calls[-1].fds) == 2
    model.fire(VFIO_PCI_MSIX_IRQ_INDEX, 0)
    assert device.service_interrupts() == 1
    assert machine.irq.msi == [(0xFEE0_0000, 0x31)]
    assert os.pread(model.regions[0].fd, 4, 0x1008) == bytes(4)  # the real table is untouched
    device.unmap_memory(machine.memory)
    device.close()
    assert kernel.open_fds == {}
    machine.close()


def test_kernel_device_reset_and_intx(kernel: FakeKernel) -> None:
    device = VfioPciDevice(open_pci_device(BDF, kernel))
    model = kernel.devices[BDF].model
    assert model is not None
    assert model.calls[-1].index == VFIO_PCI_INTX_IRQ_INDEX
    device.reset()
    assert model.resets == 1
    device.close()


def test_edu_check_reports_a_missing_device(kernel: FakeKernel) -> None:
    from passthrough.kernel.edu import run_checks

    seen: list[tuple[str, bool, str]] = []
    assert run_checks("0000:00:1f.0", lambda name, ok, detail: seen.append((name, ok, detail)), kernel) is False
    assert seen[0][:2] == ("vfio.open", False) and "lspci" in seen[0][2]
    assert kernel.open_fds == {}


def test_vfio_pci_device_closes_its_backend_when_setup_fails(kernel: FakeKernel) -> None:
    model = kernel.devices[BDF].model
    assert model is not None
    model.config[pcidefs.PCI_HEADER_TYPE] = 1  # a bridge
    with pytest.raises(Exception, match="type-0"):
        VfioPciDevice(open_pci_device(BDF, kernel))
    assert kernel.open_fds == {}
