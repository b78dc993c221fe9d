"""The devmodels PCI test device (our own; proves the bus, PCI, interrupt and DMA paths)."""

from . import regs
from .device import PciTestDevice, PciTestDeviceState
from .snapshot import SNAPSHOT_KIND

__all__ = ["SNAPSHOT_KIND", "regs", "PciTestDevice", "PciTestDeviceState"]
