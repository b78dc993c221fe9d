"""A device served over vfio-user: virtio-blk behind virtio-pci, driven from a client machine.

The server side is what ``devmodels vfio-user --device virtio-blk`` runs, in a thread of
this program: a ``VfioUserServer`` serving a ``VirtioPciFunction`` whose DMA goes to a
``DmaMemory`` (the windows the client maps). The client side is what a VMM such as QEMU's
``vfio-user-pci`` does: a ``VfioUserClient`` on the other end of the socket, wrapped as a
``VfioPciDevice`` that plugs into a ``Machine``'s PCI bus and shares the machine's RAM with
the server (``map_memory``: memfd-backed, so DMA is direct).

The guest is the same ``BlkDriver`` over ``PciDriver`` as in ``virtio_blk_pci.py``: it
cannot tell that the device is behind a socket. Its notifications are posted writes on
the socket; ``PciDriver`` reads the status register before looking at the ring, which
flushes them, as PCI ordering does.

Run: ``python3 examples/vfio_user_blk.py``
"""

from __future__ import annotations

import socket
import threading

from devmodels import Machine
from devmodels.backends import MemoryDiskBackend
from passthrough import VfioPciDevice
from passthrough.user import DmaMemory, VfioUserClient, VfioUserServer
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import VIRTIO_BLK_S_OK
from virtio.blk.testing import BlkDriver
from virtio.transport import VirtioPciFunction
from virtio.transport.testing import PciDriver


def main() -> None:
    """Serve, connect, enumerate, do I/O, disconnect."""
    # -- the server: a device and the memory its DMA reaches --------------------------------
    dma = DmaMemory()  # empty until the client maps its RAM (VFIO_USER_DMA_MAP)
    disk = MemoryDiskBackend(1 << 20)
    served = VirtioPciFunction(VirtioBlkDevice(dma, disk))
    server = VfioUserServer(served, dma)
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    thread = threading.Thread(target=server.serve, args=(server_end,), name="vfio-user-server", daemon=True)
    thread.start()

    # -- the client: a VMM's machine with the remote function plugged in --------------------
    with Machine(ram_size=32 << 20, ram_backing="memfd") as machine:
        client = VfioUserClient(client_end, timeout=20)  # VFIO_USER_VERSION negotiated here
        device = VfioPciDevice(client)  # regions, IRQs and config space from the server
        device.map_memory(machine.memory)  # the guest RAM, shared by fd
        slot = machine.add_pci(device)
        for info in machine.enumerate():
            print(f"{info.bdf}  {info.vendor_id:04x}:{info.device_id:04x}  class {info.class_code:06x}")

        blk = BlkDriver(PciDriver(machine, slot))  # over vfio-user: nothing to poll locally
        data = bytes(range(256)) * 8
        assert blk.write(100, data).status == VIRTIO_BLK_S_OK
        result = blk.read(100, len(data) // 512)
        assert result.status == VIRTIO_BLK_S_OK and result.data == data
        assert disk.read_at(100 * 512, len(data)) == data  # the server's disk has it
        print(f"wrote and read back {len(data)} bytes over vfio-user; server stats: {server.stats}")
        device.close()  # disconnects: the server's serve() returns

    thread.join(10)
    assert not thread.is_alive(), "the server did not stop"
    disk.close()


if __name__ == "__main__":
    main()
