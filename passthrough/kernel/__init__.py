"""Kernel VFIO (``linux/vfio.h``): containers, groups and device fds.

``open_pci_device("0000:00:03.0")`` returns a ``KernelVfioDevice`` (a
``VfioDeviceBackend``) ready for ``passthrough.VfioPciDevice``. The layers:

- ``Type1Container``: ``/dev/vfio/vfio`` with the Type1 v2 IOMMU (a ``DmaDomain``);
- ``VfioGroup``: ``/dev/vfio/<group>``;
- ``KernelVfioDevice``: the device fd (regions, IRQs, reset, DMA windows);
- ``KernelOps``/``OsOps``: the system calls, replaceable by a fake kernel in tests.
"""

from .container import CONTAINER_PATH, IommuInfo, Type1Container
from .device import KernelVfioDevice, buffer_address, open_pci_device
from .group import VfioGroup, group_path
from .ops import KernelOps, OsOps

__all__ = [
    "CONTAINER_PATH",
    "IommuInfo",
    "Type1Container",
    "KernelVfioDevice",
    "buffer_address",
    "open_pci_device",
    "VfioGroup",
    "group_path",
    "KernelOps",
    "OsOps",
]
