"""VfioPciDevice logic against a scripted backend (no kernel, no sockets)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels import Machine, RecordingLevelSink, RecordingMsiSink, UsageError
from devmodels.pci import defs as pcidefs
from passthrough import VfioPciDevice
from passthrough.defs import (
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
)
from passthrough.testing import FakeRegion, FakeVfioDevice, config_image

RWM = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP
MSI_64_MASK = pcidefs.PCI_MSI_FLAGS_64BIT | pcidefs.PCI_MSI_FLAGS_MASKBIT | (2 << 1)  # 4 vectors


def edu_like(**overrides) -> FakeVfioDevice:  # type: ignore[no-untyped-def]
    """A function like QEMU's edu plus more: BAR0 mem32 (host address set), BAR2 mem64
    prefetchable, BAR4 I/O; PM, MSI (64-bit, per-vector mask, 4 vectors), vendor, MSI-X."""
    caps = [
        (pcidefs.PCI_CAP_ID_PM, 0x40, b"\x03\x00\x00\x00\x00\x00"),
        (pcidefs.PCI_CAP_ID_MSI, 0x50, struct.pack("<H", MSI_64_MASK)),
        (pcidefs.PCI_CAP_ID_VNDR, 0x70, b"\x08\xAA\xBB\xCC\xDD\xEE"),
        (pcidefs.PCI_CAP_ID_MSIX, 0x80, struct.pack("<HII", 3, 0x2000 | 0, 0x3000 | 0)),
    ]
    image = config_image(
        bars=[(0, 0xFEB0_0000), (2, 0xE000_000C), (3, 0x1), (4, 0xC001)],
        caps=caps,
        header_type=0x80,
    )
    image[pcidefs.PCI_COMMAND] = 0x07
    regions = {
        0: FakeRegion(0x4000, RWM, sparse=((0, 0x2000), (0x3000, 0x1000))),
        2: FakeRegion(0x10_0000),
        4: FakeRegion(0x20),
    }
    fake = FakeVfioDevice(image, regions, {0: 1, 1: 4, 2: 4})
    for key, value in overrides.items():
        setattr(fake, key, value)
    return fake


@pytest.fixture
def fake() -> FakeVfioDevice:
    return edu_like()


@pytest.fixture
def dev(fake: FakeVfioDevice):
    device = VfioPciDevice(fake)
    device.intx = RecordingLevelSink()
    device.msi_sink = RecordingMsiSink()
    yield device
    device.close()


def test_identity_passes_through(dev: VfioPciDevice) -> None:
    assert dev.config_read(pcidefs.PCI_VENDOR_ID, 4) == 0x11E8_1234
    assert dev.config_read(pcidefs.PCI_REVISION_ID, 4) >> 8 == 0x00FF00
    assert dev.name == "vfio-1234:11e8"


def test_multifunction_bit_is_hidden_and_bridges_refused(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    assert dev.config_read(pcidefs.PCI_HEADER_TYPE, 1) == 0
    with pytest.raises(UsageError, match="type-0"):
        VfioPciDevice(FakeVfioDevice(config_image(header_type=1)))


def test_bars_are_sized_from_regions_with_device_type_bits(dev: VfioPciDevice) -> None:
    def size(offset: int) -> int:
        original = dev.config_read(offset, 4)
        dev.config_write(offset, 4, 0xFFFF_FFFF)
        probe = dev.config_read(offset, 4)
        dev.config_write(offset, 4, original)
        return probe

    assert dev.config_read(pcidefs.PCI_BASE_ADDRESS_0, 4) == 0  # the host address is hidden
    assert size(0x10) == 0xFFFF_C000
    assert size(0x18) == 0xFFF0_000C  # 64-bit prefetchable, 1 MiB
    assert size(0x1C) == 0xFFFF_FFFF  # upper half
    assert size(0x20) == 0xFFFF_FFE1  # I/O, 32 bytes
    assert size(0x14) == 0 and size(0x24) == 0  # no region
    assert dev.config_read(pcidefs.PCI_ROM_ADDRESS, 4) == 0


def test_command_is_cleared_at_open_and_forwarded(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    assert fake.config[pcidefs.PCI_COMMAND] == 0
    dev.config_write(pcidefs.PCI_COMMAND, 2, pcidefs.PCI_COMMAND_MEMORY | pcidefs.PCI_COMMAND_MASTER)
    assert fake.config[pcidefs.PCI_COMMAND] == 0x06
    assert dev.dma_allowed  # the virtual copy follows too
    assert (pcidefs.PCI_COMMAND, b"\x06\x00") in fake.config_writes


def test_bar_writes_are_not_forwarded(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    dev.config_write(pcidefs.PCI_BASE_ADDRESS_0, 4, 0xC000_0000)
    assert fake.config[0x10:0x14] == (0xFEB0_0000).to_bytes(4, "little")
    assert dev.config_read(pcidefs.PCI_BASE_ADDRESS_0, 4) == 0xC000_0000


def test_capability_chain_is_rebuilt_at_the_device_offsets(dev: VfioPciDevice) -> None:
    chain = []
    offset = dev.config_read(pcidefs.PCI_CAPABILITY_LIST, 1)
    while offset:
        chain.append((dev.config_read(offset, 1), offset))
        offset = dev.config_read(offset + 1, 1)
    assert chain == [(1, 0x40), (5, 0x50), (9, 0x70), (0x11, 0x80)]
    assert dev.msi is not None and dev.msi.offset == 0x50 and dev.msi.vectors == 4
    assert dev.msix is not None and dev.msix.offset == 0x80 and dev.msix.vectors == 4


def test_capability_bodies_pass_through(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    fake.config[0x72] = 0x5A  # the device changes a vendor register
    assert dev.config_read(0x72, 1) == 0x5A
    dev.config_write(0x44, 2, 0x0003)  # PM control: forwarded
    assert fake.config[0x44] == 0x03


def test_msi_capability_is_virtual(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    dev.config_write(0x54, 4, 0xFEE0_0000)
    assert fake.config[0x54:0x58] == bytes(4)
    assert dev.config_read(0x54, 4) == 0xFEE0_0000


def test_hidden_capability_when_msix_table_bar_is_missing() -> None:
    caps = [(pcidefs.PCI_CAP_ID_MSIX, 0x40, struct.pack("<HII", 0, 5, 5)), (pcidefs.PCI_CAP_ID_PM, 0x50, b"")]
    device = VfioPciDevice(FakeVfioDevice(config_image(caps=caps)))
    assert device.msix is None
    first = device.config_read(pcidefs.PCI_CAPABILITY_LIST, 1)
    assert (first, device.config_read(first, 1), device.config_read(first + 1, 1)) == (0x50, pcidefs.PCI_CAP_ID_PM, 0)
    device.close()


def test_capability_chain_loops_are_bounded() -> None:
    image = config_image(caps=[(pcidefs.PCI_CAP_ID_PM, 0x40, b""), (pcidefs.PCI_CAP_ID_VNDR, 0x48, b"")])
    image[0x49] = 0x40  # 0x48 -> 0x40 -> 0x48 ...
    device = VfioPciDevice(FakeVfioDevice(image))
    assert [device.config_read(o, 1) for o in (0x40, 0x48)] == [1, 9]
    assert device.config_read(0x49, 1) == 0
    device.close()


def test_intx_is_wired_at_open(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    assert dev.irq_mode == "intx"
    call = fake.calls[-1]
    assert (call.index, call.flags, call.count) == (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 1)
    assert dev.interrupt_fds() == list(call.fds)


def test_intx_eoi_on_bar_access(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    sink = dev.intx
    assert isinstance(sink, RecordingLevelSink)
    fake.fire(VFIO_PCI_INTX_IRQ_INDEX)
    assert dev.service_interrupts() == 1
    assert sink.level is True
    assert dev.service_interrupts() == 0
    dev.bar_read(4, 0, 4)
    assert sink.level is False
    last = fake.calls[-1]
    assert (last.index, last.flags, last.count) == (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 1)


def enable_bus_master(dev: VfioPciDevice) -> None:
    dev.config_write(pcidefs.PCI_COMMAND, 2, pcidefs.PCI_COMMAND_MEMORY | pcidefs.PCI_COMMAND_MASTER)


def test_msi_enable_rewires_host_vectors(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    enable_bus_master(dev)
    dev.config_write(0x54, 4, 0xFEE0_1000)
    dev.config_write(0x5C, 2, 0x40)
    dev.config_write(0x52, 2, pcidefs.PCI_MSI_FLAGS_ENABLE | (1 << 4))  # 2 vectors
    assert dev.irq_mode == "msi"
    disable, wire = fake.calls[-2], fake.calls[-1]
    assert (disable.index, disable.flags, disable.count) == (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0)
    assert (wire.index, wire.count, len(wire.fds)) == (VFIO_PCI_MSI_IRQ_INDEX, 2, 2)
    fake.fire(VFIO_PCI_MSI_IRQ_INDEX, 1)
    assert dev.service_interrupts() == 1
    sink = dev.msi_sink
    assert isinstance(sink, RecordingMsiSink)
    assert sink.messages == [(0xFEE0_1000, 0x41)]
    # More vectors enabled: rewired with 4.
    dev.config_write(0x52, 2, pcidefs.PCI_MSI_FLAGS_ENABLE | (2 << 4))
    assert fake.calls[-1].count == 4


def test_msix_enable_and_masking_stay_virtual(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    enable_bus_master(dev)
    table = 0x2000
    dev.bar_write(0, table + 16 + 0, 4, 0xFEE0_2000)
    dev.bar_write(0, table + 16 + 8, 4, 0x77)
    dev.config_write(0x82, 2, pcidefs.PCI_MSIX_FLAGS_ENABLE)
    assert dev.irq_mode == "msix"
    assert (fake.calls[-1].index, fake.calls[-1].count) == (VFIO_PCI_MSIX_IRQ_INDEX, 4)
    fake.fire(VFIO_PCI_MSIX_IRQ_INDEX, 1)
    dev.service_interrupts()
    sink = dev.msi_sink
    assert isinstance(sink, RecordingMsiSink)
    assert sink.messages == []  # vector 1 is still masked (reset default): pending
    assert dev.bar_read(0, 0x3000, 8) == 0b10
    dev.bar_write(0, table + 16 + 12, 4, 0)
    assert sink.messages == [(0xFEE0_2000, 0x77)]
    # The table is not written to the device's BAR.
    assert os.pread(fake.regions[0].fd, 4, table + 16) == bytes(4)
    dev.config_write(0x82, 2, 0)
    assert dev.irq_mode == "intx"


def test_mmap_areas_and_region_io(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    dev.bar_write(0, 0x10, 4, 0xDEADBEEF)  # in a mapped area
    assert os.pread(fake.regions[0].fd, 4, 0x10) == (0xDEADBEEF).to_bytes(4, "little")
    os.pwrite(fake.regions[0].fd, (0x1122334455667788).to_bytes(8, "little"), 0x3008)
    assert dev.bar_read(0, 0x3008, 8) == 0x1122334455667788
    dev.bar_write(2, 0x8_0000, 2, 0xBEEF)  # region I/O (not mappable)
    assert os.pread(fake.regions[2].fd, 2, 0x8_0000) == b"\xef\xbe"
    assert dev.bar_read(2, 0x8_0000, 1) == 0xEF


def test_host_failure_during_guest_access_reads_all_ones(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    fake.fail = True
    assert dev.bar_read(2, 0, 4) == 0xFFFF_FFFF
    dev.bar_write(2, 0, 4, 1)
    assert dev.config_read(pcidefs.PCI_VENDOR_ID, 2) == 0xFFFF
    assert dev.config_read(pcidefs.PCI_BASE_ADDRESS_0, 4) == 0  # emulated: still answered
    assert dev.host_error is not None
    fake.fail = False


def test_dma_windows_follow_guest_memory(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    machine = Machine(ram_size=1 << 20, ram_backing="memfd")
    dev.map_memory(machine.memory)
    assert list(fake.dma) == [0] and fake.dma[0][0].size == 1 << 20
    dev.unmap_memory(machine.memory)
    assert fake.dma == {}
    machine.close()


def test_reset(fake: FakeVfioDevice, dev: VfioPciDevice) -> None:
    enable_bus_master(dev)
    dev.config_write(0x82, 2, pcidefs.PCI_MSIX_FLAGS_ENABLE)
    dev.reset()
    assert fake.resets == 1
    assert dev.irq_mode == "intx"
    assert dev.config_read(pcidefs.PCI_COMMAND, 2) == 0


def test_close_releases_eventfds_and_backend(fake: FakeVfioDevice) -> None:
    device = VfioPciDevice(fake)
    fds = device.interrupt_fds()
    device.close()
    assert fake.closed and device.interrupt_fds() == []
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_plugged_into_a_machine(fake: FakeVfioDevice) -> None:
    machine = Machine(ram_size=1 << 20)
    device = VfioPciDevice(fake)
    machine.add_pci(device)
    info = next(i for i in machine.enumerate() if i.vendor_id == 0x1234)
    kinds = sorted((b.index, b.kind, b.size, b.prefetchable) for b in info.bars)
    assert kinds == [(0, "mem32", 0x4000, False), (2, "mem64", 0x10_0000, True), (4, "io", 0x20, False)]
    bar2 = next(b.address for b in info.bars if b.index == 2)
    machine.mmio.write(bar2 + 0x100, 4, 0xABCD)
    assert os.pread(fake.regions[2].fd, 4, 0x100) == (0xABCD).to_bytes(4, "little")
    gsi = info.interrupt_line
    fake.fire(VFIO_PCI_INTX_IRQ_INDEX)
    device.service_interrupts()
    assert machine.irq.levels[gsi] is True
    device.close()
    machine.close()


def test_no_intx_means_pin_zero() -> None:
    device = VfioPciDevice(FakeVfioDevice(config_image(pin=1), irq_counts={}))
    assert device.config_read(pcidefs.PCI_INTERRUPT_PIN, 1) == 0
    assert device.irq_mode is None
    device.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=192, max_size=192), st.integers(0, 255))
def test_random_config_images_never_crash(body: bytes, pointer: int) -> None:
    image = config_image()
    image[0x40:] = body
    image[pcidefs.PCI_STATUS] |= pcidefs.PCI_STATUS_CAP_LIST
    image[pcidefs.PCI_CAPABILITY_LIST] = pointer
    fake = FakeVfioDevice(image, irq_counts={0: 1, 1: 32, 2: 2048})
    device = VfioPciDevice(fake)
    for offset in range(0, 256, 4):
        device.config_read(offset, 4)
        device.config_write(offset, 4, 0xFFFF_FFFF)
    device.close()
