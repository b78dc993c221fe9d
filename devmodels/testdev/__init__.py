"""The devmodels PCI test device (our own; proves the bus, PCI, interrupt and DMA paths)."""

from . import regs
from .device import PciTestDevice, PciTestDeviceState

__all__ = ["regs", "PciTestDevice", "PciTestDeviceState"]
