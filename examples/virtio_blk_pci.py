"""virtio-blk over virtio-pci on a memory disk, driven by the driver simulators.

The machine is in-process: RAM, an MMIO and a port I/O bus, PCI bus 0 with a host bridge.
The device is a ``VirtioBlkDevice`` behind our virtio-pci transport; the guest is
``BlkDriver`` over ``PciDriver``, which reaches the device only as a guest does: config
cycles through 0xCF8/0xCFC, the BAR the firmware assigned, rings in guest RAM.

Run: ``python3 examples/virtio_blk_pci.py``
"""

from __future__ import annotations

from devmodels import Machine
from devmodels.backends import MemoryDiskBackend
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH
from virtio.blk.testing import BlkDriver
from virtio.defs import VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1
from virtio.features import feature_mask
from virtio.transport import VirtioPciFunction
from virtio.transport.testing import PciDriver


def main() -> None:
    """Plug the device, let firmware enumerate it, write, read back, flush."""
    with Machine(ram_size=64 << 20) as machine, MemoryDiskBackend(4 << 20) as disk:
        # The device model: sans-IO, given guest memory and a backend. Its transport is a
        # PCI function; plugging it puts it on bus 0 (add_pci returns the Slot).
        device = VirtioBlkDevice(machine.memory, disk, serial="example-disk")
        function = VirtioPciFunction(device)
        slot = machine.add_pci(function)
        for info in machine.enumerate():  # firmware: size and assign BARs, enable decode
            print(f"{info.bdf}  {info.vendor_id:04x}:{info.device_id:04x}  class {info.class_code:06x}")

        # The guest side. PciDriver takes the slot (or PciDriver.for_function), reads the
        # virtio capabilities and talks to the common configuration in the BAR. Passing the
        # function as ``served`` lets it play the VMM's loop (posted work) after kicks.
        transport = PciDriver(machine, slot, served=function)
        # Feature arguments are masks; VIRTIO_F_* are bit numbers: feature_mask turns them
        # into one. Here: the split ring (everything offered but RING_PACKED).
        blk = BlkDriver(transport, accept=~feature_mask(VIRTIO_F_RING_PACKED))
        negotiated = transport.negotiated
        print(f"negotiated {negotiated:#x}: VERSION_1={bool(negotiated >> VIRTIO_F_VERSION_1 & 1)} "
              f"packed={bool(negotiated >> VIRTIO_F_RING_PACKED & 1)} flush={bool(negotiated >> VIRTIO_BLK_F_FLUSH & 1)}")

        data = b"devmodels example block\n" * 64  # 1536 bytes: three sectors
        written = blk.write(16, data)
        assert written.status == VIRTIO_BLK_S_OK, written
        read = blk.read(16, 3)
        assert read.status == VIRTIO_BLK_S_OK and read.data == data, read
        flushed = blk.submit(VIRTIO_BLK_T_FLUSH)
        assert flushed.status == VIRTIO_BLK_S_OK
        print(f"wrote and read back {len(read.data)} bytes at sector 16; flush ok; "
              f"the disk holds them at byte {16 * 512}: {disk.read_at(16 * 512, 24)!r}")
        print(f"device stats: {device.stats_dict()}")


if __name__ == "__main__":
    main()
