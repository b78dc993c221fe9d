"""devmodels: reusable I/O device models for virtual machine monitors.

The core a VMM author imports:

- errors: ``GuestError`` (driver misbehaviour), ``HostError`` (backend failure),
  ``UsageError`` (VMM misuse), ``GuestMemoryError``, ``SnapshotError``;
- memory: ``GuestMemory`` of ``MemoryRegion`` (bytearray, anonymous mmap, memfd, fd);
- buses: ``Bus`` (MMIO / port I/O) dispatching to any ``BusDevice``;
- interrupts: ``IrqLine``, ``Trigger``, ``LevelSink``, ``MsiSink`` and test doubles;
- PCI: ``devmodels.pci`` (``PciFunction``, ``PciHost``, MSI/MSI-X, firmware enumeration);
- ``Machine``: all of the above assembled in-process;
- tracing: ``devmodels.trace`` (``enable("bus.*")``).
"""

from . import fds, snapshot, trace
from ._accel import NO_EXTENSIONS, extensions_loaded, implementations
from ._bus import MMIO_LIMIT, PIO_LIMIT, Bus, BusDevice, BusMapping
from ._errors import (
    AddressOverflowError,
    DenialOfService,
    DevmodelsError,
    GuestError,
    GuestMemoryError,
    HostError,
    SnapshotError,
    UsageError,
)
from ._irq import (
    IrqLine,
    IrqSource,
    LevelSink,
    MsiMessage,
    MsiSink,
    NullLevelSink,
    NullMsiSink,
    NullTrigger,
    RecordingLevelSink,
    RecordingMsiSink,
    RecordingTrigger,
    Trigger,
    TriggerLevelSink,
)
from ._machine import MMIO32_WINDOW, MMIO64_WINDOW, InterruptController, Machine, pci_intx_gsi
from ._memory import ADDRESS_LIMIT, Access, GuestMemory, MemoryRegion, Translator
from ._regs import Reg, RegisterFile
from ._regs import Access as RegAccess
from ._state import Snapshotable, from_dict, to_dict

__version__ = "0.1.0"

__all__ = [
    "fds",
    "snapshot",
    "trace",
    "NO_EXTENSIONS",
    "extensions_loaded",
    "implementations",
    "MMIO_LIMIT",
    "PIO_LIMIT",
    "Bus",
    "BusDevice",
    "BusMapping",
    "AddressOverflowError",
    "DenialOfService",
    "DevmodelsError",
    "GuestError",
    "GuestMemoryError",
    "HostError",
    "SnapshotError",
    "UsageError",
    "IrqLine",
    "IrqSource",
    "LevelSink",
    "MsiMessage",
    "MsiSink",
    "NullLevelSink",
    "NullMsiSink",
    "NullTrigger",
    "RecordingLevelSink",
    "RecordingMsiSink",
    "RecordingTrigger",
    "Trigger",
    "TriggerLevelSink",
    "InterruptController",
    "Machine",
    "pci_intx_gsi",
    "Access",
    "GuestMemory",
    "MemoryRegion",
    "Translator",
    "MMIO32_WINDOW",
    "MMIO64_WINDOW",
    "ADDRESS_LIMIT",
    "Reg",
    "RegAccess",
    "RegisterFile",
    "Snapshotable",
    "from_dict",
    "to_dict",
    "__version__",
]
