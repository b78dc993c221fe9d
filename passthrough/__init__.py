"""passthrough: hand a VM a physical PCI device (kernel VFIO) or one served by another
process (vfio-user), through the same ``PciFunction`` interface as emulated devices; and
serve any devmodels PCI device to a vfio-user VMM.

- ``VfioPciDevice``: a ``PciFunction`` over a ``VfioDeviceBackend`` (config virtualized,
  BARs by region I/O or mmap, MSI/MSI-X translated to eventfds, INTx with EOI);
- ``passthrough.user``: ``VfioUserServer``, ``VfioUserClient`` (a backend);
- ``passthrough.kernel``: ``open_pci_device`` and the container/group/device layers
  (``KernelVfioDevice`` is a backend);
- ``defs``/``layouts``/``caps``: the uAPI constants, structures and capability chains.
"""

from . import caps, defs, layouts
from .backend import DeviceInfo, DmaDomain, IrqInfo, RegionInfo, VfioDeviceBackend
from .device import IrqMode, VfioPciDevice
from .errors import (
    VfioDeviceBusyError,
    VfioError,
    VfioGroupNotFoundError,
    VfioGroupNotViableError,
    VfioNotAvailableError,
    VfioPermissionError,
    VfioUnsupportedError,
    VfioUserDisconnectedError,
    VfioUserError,
    VfioUserProtocolError,
    VfioUserReject,
)

__all__ = [
    "caps",
    "defs",
    "layouts",
    "DeviceInfo",
    "DmaDomain",
    "IrqInfo",
    "RegionInfo",
    "VfioDeviceBackend",
    "IrqMode",
    "VfioPciDevice",
    "VfioDeviceBusyError",
    "VfioError",
    "VfioGroupNotFoundError",
    "VfioGroupNotViableError",
    "VfioNotAvailableError",
    "VfioPermissionError",
    "VfioUnsupportedError",
    "VfioUserDisconnectedError",
    "VfioUserError",
    "VfioUserProtocolError",
    "VfioUserReject",
]
