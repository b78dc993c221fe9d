"""``python -m bench SUBCOMMAND [ARGS...]``: one benchmark per entry of ``SUBCOMMANDS``.

To add one, write ``bench/<name>.py`` with ``main(argv) -> int`` and add a line below.
Modules are imported only when their subcommand runs, so one missing piece never breaks
the others (as ``devmodels.cli``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from devmodels.cli import dispatch

__all__ = ["SUBCOMMANDS", "main"]

# name: (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "rings": ("bench.rings", "main", "virtqueue pop+push per chain, split and packed: Cython vs pure Python"),
    "vhost-user-blk": ("bench.vhost_user_blk", "main", "fio in a TCG guest: devmodels vhost-user-blk vs qemu-storage-daemon"),
    "e1000": ("bench.e1000", "main",
              "echo rate and TCP throughput over TAP: devmodels e1000 (proxy or vfio-user) vs QEMU's e1000"),
    "ahci": ("bench.ahci", "main", "fio in a TCG guest: devmodels AHCI (proxy or vfio-user) vs QEMU's built-in AHCI"),
    "virtio-blk": ("bench.virtio_blk", "main",
                   "fio in a QEMU 11.1 guest: devmodels virtio-blk on our virtio-pci over vfio-user vs virtio-blk-pci"),
    "paradigms": ("bench.paradigms", "main",
                  "emulation vs paravirtualization with our devices over vfio-user: e1000/virtio-net, AHCI/virtio-blk"),
    "vfio-user": ("bench.vfio_user_cost", "main",
                  "what one vfio-user message costs our server: CPU per read and posted write, round trip"),
    "kvm": ("bench.kvm", "main", "our devices in KVM in process: exits/s, kick vs hand-off, MSI paths, in-process vs vfio-user"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run a benchmark subcommand; return its exit status."""
    return dispatch("python -m bench", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
