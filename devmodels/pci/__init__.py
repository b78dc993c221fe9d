"""PCI: config space with access masks, BARs, capabilities, MSI/MSI-X, host bridge, firmware.

A device model builds on ``PciFunction``; a VMM plugs functions into a ``PciHost`` (or
serves them through a proxy) and reaches them with config cycles and BAR accesses.
"""

from . import defs
from ._address import DevFn, Slot, as_devfn
from ._caps import CapabilityList
from ._config import ConfigSpace
from ._firmware import BarInfo, ConfigAccess, FunctionInfo, Window, enumerate_bus0
from ._function import Bar, BarKind, MappingListener, PciFunction, PciFunctionState
from ._host import PCI_CONFIG_ADDRESS_PORT, ConfigPorts, Ecam, HostBridge, PciHost, devfn
from ._msi import MsiCapability
from ._msix import MsixCapability

__all__ = [
    "defs",
    "DevFn",
    "Slot",
    "as_devfn",
    "CapabilityList",
    "ConfigSpace",
    "BarInfo",
    "ConfigAccess",
    "FunctionInfo",
    "Window",
    "enumerate_bus0",
    "Bar",
    "BarKind",
    "MappingListener",
    "PciFunction",
    "PciFunctionState",
    "PCI_CONFIG_ADDRESS_PORT",
    "ConfigPorts",
    "Ecam",
    "HostBridge",
    "PciHost",
    "devfn",
    "MsiCapability",
    "MsixCapability",
]
