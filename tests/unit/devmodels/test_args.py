"""Constructor arguments are checked where they are passed (issue 16 item 5): each of these was
accepted and failed later, inside a guest's register write."""

from __future__ import annotations

import pytest

from devmodels import GuestMemory, Machine, MemoryRegion, UsageError
from devmodels.ahci import AhciController
from devmodels.ahci.ata import AtaDisk
from devmodels.args import check_implements, check_memory, protocol_members
from devmodels.backends import BlockBackend, LoopbackBackend, MemoryDiskBackend, NetBackend
from devmodels.e1000 import E1000
from devmodels.testdev import PciTestDevice
from virtio.blk import VirtioBlkDevice
from virtio.net import VirtioNetDevice


@pytest.fixture
def memory():
    m = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    yield m
    m.close()


def test_e1000_with_a_string_backend(memory):
    with pytest.raises(UsageError, match=r"E1000: backend must be a NetBackend or None, got str 'tap0'"):
        E1000(memory, "tap0")  # type: ignore[arg-type]


def test_e1000_with_a_wrong_memory():
    with pytest.raises(UsageError, match="E1000: memory must be a GuestMemory"):
        E1000(Machine)  # type: ignore[arg-type]


def test_virtio_blk_with_a_size_for_a_backend(memory):
    with pytest.raises(UsageError, match="VirtioBlkDevice: backend must be a BlockBackend, got int 4096"):
        VirtioBlkDevice(memory, 4096)  # type: ignore[arg-type]


def test_memory_disk_of_a_size_that_is_not_whole_sectors():
    with pytest.raises(UsageError, match="size 1000 is not a multiple of logical_block_size 512"):
        MemoryDiskBackend(1000)
    MemoryDiskBackend(4096, logical_block_size=4096).close()
    with pytest.raises(UsageError, match="data must be bytes-like"):
        MemoryDiskBackend(4096, data="text")  # type: ignore[arg-type]


def test_virtio_net_without_a_backend(memory):
    with pytest.raises(UsageError, match="VirtioNetDevice: backend must be a NetBackend"):
        VirtioNetDevice(memory, None)  # type: ignore[arg-type]


def test_virtio_devices_check_their_memory():
    disk = MemoryDiskBackend(4096)
    with pytest.raises(UsageError, match="VirtioBlkDevice: memory must be a GuestMemory"):
        VirtioBlkDevice(b"", disk)  # type: ignore[arg-type]
    disk.close()


def test_ahci_and_testdev_check_their_memory_and_drives():
    with pytest.raises(UsageError, match="AhciController: memory"):
        AhciController(None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="PciTestDevice: memory"):
        PciTestDevice(None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="AtaDisk: backend must be a BlockBackend"):
        AtaDisk("disk.img")  # type: ignore[arg-type]


def test_correct_arguments_still_construct(memory):
    ours, _ = LoopbackBackend.pair()
    E1000(memory, ours)
    E1000(memory)
    VirtioNetDevice(memory, ours)
    VirtioBlkDevice(memory, MemoryDiskBackend(1 << 16))
    assert check_memory("x", memory) is memory
    assert check_implements("x", "backend", ours, NetBackend) is ours


def test_protocol_members_lists_methods_and_properties():
    members = protocol_members(BlockBackend)
    assert {"capacity", "readonly", "logical_block_size", "submit", "completions", "drain", "close"} <= set(members)
    assert not any(name.startswith("_") for name in members)
