"""Guest errors the AHCI model recognises, each carrying the PxIS bit it becomes.

Rules:

1. Every class here is a ``GuestError``: something the guest built wrongly (a command
   table, a PRDT, an address). None of them escapes the controller's entry points: the
   port catches them and sets the PxIS bit in ``pxis`` (AHCI 1.3.1 §6.1.2 fatal errors),
   halting the port until software clears PxCMD.ST.
2. ATA-level failures (an unsupported opcode, an LBA past the end) are *not* exceptions:
   they are ordinary device results with ERR/ABRT or IDNF in the task file (``command.py``).
3. A ``GuestMemoryError`` from ``GuestMemory`` (a table or buffer outside RAM) is mapped to
   PxIS.HBFS by the port (§6.1.2: "a bad software pointer" is a host bus fatal error).
"""

from __future__ import annotations

from .._errors import GuestError
from .regs import PxIS_HBFS, PxIS_IFS, PxIS_OFS

__all__ = [
    "AhciGuestError",
    "BadCommandFis",
    "PrdtOverflow",
    "PrdtUnderflow",
    "BusMasterDisabled",
]


class AhciGuestError(GuestError):
    """A guest error that ends a command in a fatal port error.

    Attributes:
        pxis: the PxIS bit the HBA sets (``status`` holds the same value).
    """

    pxis: int = PxIS_IFS

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.status = self.pxis


class BadCommandFis(AhciGuestError):
    """The command table's CFIS is not a Register H2D FIS, or its length is invalid.

    AHCI 1.3.1 §6.1.4: the HBA cannot send what it cannot decode; PxIS.IFS.
    """

    pxis = PxIS_IFS


class PrdtOverflow(AhciGuestError):
    """The device returned more data than the PRDT describes (AHCI 1.3.1 §3.3.5 PxIS.OFS)."""

    pxis = PxIS_OFS

    def __init__(self, needed: int, available: int) -> None:
        self.needed = needed
        self.available = available
        super().__init__(f"device sends {needed} bytes but the PRDT describes {available}")


class PrdtUnderflow(AhciGuestError):
    """A host-to-device transfer whose PRDT describes fewer bytes than the command moves.

    The HBA runs out of data mid-transfer; the model ends the command with PxIS.IFS (an
    interface fatal error: the transfer stopped) rather than leave the device waiting.
    """

    pxis = PxIS_IFS

    def __init__(self, needed: int, available: int) -> None:
        self.needed = needed
        self.available = available
        super().__init__(f"command moves {needed} bytes but the PRDT describes {available}")


class BusMasterDisabled(AhciGuestError):
    """A command was issued while PCI Command.MASTER is clear: every DMA master-aborts.

    AHCI 1.3.1 §6.1.2: a master abort on the host bus is PxIS.HBFS.
    """

    pxis = PxIS_HBFS
