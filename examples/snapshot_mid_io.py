"""A snapshot in the middle of I/O, through JSON, into a fresh machine.

A guest (``BlkDriver``) drives virtio-blk over virtio-pci on a disk image file served by a
threaded backend. With eight writes still in the backend's threads and one more request
published in the ring but not yet notified, the VMM snapshots the device:
``snapshot_file.save`` quiesces it (the writes complete into the used ring) and encodes its
state, constructor arguments included, as a JSON document. A fresh machine gets the
guest's RAM, reopens the image, rebuilds the device from the document alone
(``snapshot_file.rebuild``) and plugs it where it was. The guest goes on there: it notifies
the request it had published and reaps all nine.

Run: ``python3 examples/snapshot_mid_io.py``
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from devmodels import Machine, snapshot_file
from devmodels.backends import RawFileBackend
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from virtio.blk.testing import BlkDriver
from virtio.snapshot import snapshot_kinds
from virtio.transport import VirtioPciFunction
from virtio.transport.testing import PciDriver

RAM = 32 << 20
SECTORS_PER_WRITE = 8  # 4 KiB


def main() -> None:
    """Start I/O on one machine, snapshot, finish it on another."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "disk.img"
        image.write_bytes(bytes(4 << 20))

        # -- the source machine: I/O in flight --------------------------------------------
        source = Machine(ram_size=RAM, ram_backing="memfd")
        disk = RawFileBackend(image, workers=2)
        function = VirtioPciFunction(VirtioBlkDevice(source.memory, disk))
        slot = source.add_pci(function)
        source.enumerate()
        blk = BlkDriver(PciDriver(source, slot))  # no ``served``: nobody runs the VMM loop yet
        for n in range(8):
            blk.request(VIRTIO_BLK_T_OUT, n * SECTORS_PER_WRITE, data=bytes([0x41 + n]) * 4096, token=f"write {n}")
        blk.kick()  # the device parsed the eight writes and gave them to the backend's threads
        blk.request(VIRTIO_BLK_T_IN, 3 * SECTORS_PER_WRITE, read_len=4096, token="read 3")
        blk.rings[0].kick()  # published in guest RAM; the notification never reaches this machine
        print(f"at the snapshot: {len(blk.rings[0].outstanding)} requests outstanding in the guest's ring "
              "(8 writes handed to the backend's threads, 1 read published but not notified)")

        # -- the snapshot: quiesce, state, JSON -----------------------------------------
        document = snapshot_file.save(function)  # the device's quiesce point: the writes complete
        header = json.loads(document)
        print(f"snapshot: {len(document)} bytes of JSON, kind {header['kind']!r}, format version {header['version']}")
        ram = source.memory.read(0, RAM)  # the guest's RAM goes with it (the VMM's job)
        disk.close()
        source.close()

        # -- the target machine: rebuilt from the document ------------------------------
        target = Machine(ram_size=RAM, ram_backing="memfd")
        target.memory.write(0, ram)
        disk = RawFileBackend(image, workers=2)  # the restorer opens the host resources
        rebuilt = snapshot_file.rebuild(document, snapshot_kinds(), target.memory, [disk])
        target.add_pci(rebuilt, slot=slot)  # BARs and MSI-X come from the snapshot's config space
        blk.move_to(PciDriver.for_function(target, rebuilt))

        # -- the guest goes on ----------------------------------------------------------
        blk.transport.notify(0)  # the notification for the request published before the snapshot
        results = {r.token: r for r in blk.complete()}
        assert sorted(results) == sorted([f"write {n}" for n in range(8)] + ["read 3"]), sorted(results)
        assert all(r.status == VIRTIO_BLK_S_OK for r in results.values())
        assert results["read 3"].data == bytes([0x44]) * 4096
        print(f"after restore: {len(results)} requests completed; 'read 3' returned "
              f"{results['read 3'].data[:4]!r}... written before the snapshot")
        assert blk.read(0, 1).data == b"A" * 512  # and new I/O works on the new machine
        disk.close()
        target.close()


if __name__ == "__main__":
    main()
