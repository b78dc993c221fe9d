"""An emulated Intel 82540EM Gigabit Ethernet controller (the "e1000"), sans-IO.

Public surface:

- ``E1000``: the PCI function (BAR0 registers, BAR1 IOADDR/IODATA, INTx, optional MSI);
- ``E1000State``: its snapshot;
- ``RxResult``: what became of a frame handed to ``E1000.receive_frame``;
- ``regs``, ``layouts``, ``offload``: datasheet constants, descriptor layouts, offload maths;
- the guest errors of ``errors``;
- ``testing``: ``E1000Driver``, a driver simulator doing what Linux's e1000 does
  (imported on demand: ``from devmodels.e1000.testing import E1000Driver``).
"""

from . import layouts, offload, regs
from .device import DEFAULT_MAC, E1000
from .eeprom import EEPROM_SUM, Eeprom, MicrowirePort, default_image
from .errors import (
    DescriptorRingError,
    E1000GuestError,
    FrameTooLongError,
    TsoContextError,
    TxDescriptorError,
)
from .phy import M88Phy
from .rx import RxResult
from .state import E1000State
from .snapshot import SNAPSHOT_KIND

__all__ = [
    "SNAPSHOT_KIND",
    "layouts",
    "offload",
    "regs",
    "DEFAULT_MAC",
    "E1000",
    "EEPROM_SUM",
    "Eeprom",
    "MicrowirePort",
    "default_image",
    "DescriptorRingError",
    "E1000GuestError",
    "FrameTooLongError",
    "TsoContextError",
    "TxDescriptorError",
    "M88Phy",
    "RxResult",
    "E1000State",
]
