"""The three error families of devmodels.

Rules:

1. ``GuestError`` is driver misbehaviour: something a guest wrote (a register value, a
   descriptor, a DMA address) broke a rule of the device's specification. Devices turn it
   into architected behaviour (a status byte, NEEDS_RESET, a task-file error) at their
   entry points; it never escapes ``write``/``notify`` into the VMM.
2. ``HostError`` is a host backend failure (a file, a socket, a TAP): not the guest's fault.
3. ``UsageError`` is the VMM author calling the library wrongly (bad configuration,
   overlapping registrations, wrong arguments). It is a ``ValueError`` and names what was
   wrong.

The families never mix: no class derives from two of them.
"""

from __future__ import annotations

__all__ = [
    "DevmodelsError",
    "GuestError",
    "GuestMemoryError",
    "AddressOverflowError",
    "DenialOfService",
    "HostError",
    "UsageError",
    "SnapshotError",
]


class DevmodelsError(Exception):
    """Base of every exception the library raises on purpose."""


class GuestError(DevmodelsError):
    """The guest driver broke a rule of the device's specification.

    Attributes:
        status: the wire status the specification defines for this violation, if any
            (for example ``VIRTIO_BLK_S_IOERR``); ``None`` where it defines none.
    """

    status: int | None = None


class GuestMemoryError(GuestError):
    """An access that is not wholly inside guest RAM.

    Attributes:
        gpa: the guest-physical address of the access.
        length: its length in bytes.
    """

    def __init__(self, gpa: int, length: int, reason: str = "not backed by guest RAM") -> None:
        self.gpa = gpa
        self.length = length
        self.reason = reason
        super().__init__(f"guest access gpa={gpa:#x} len={length:#x}: {reason}")


class AddressOverflowError(GuestMemoryError):
    """``gpa + length`` runs past 2**64 (vm-memory ``AddressOverflow``)."""

    def __init__(self, gpa: int, length: int) -> None:
        super().__init__(gpa, length, "gpa + length overflows 2**64")


class DenialOfService(GuestError):
    """A guest error that looks like an attack rather than a bug (h2 ``DenialOfServiceError``).

    A VMM may choose to stop the VM when it sees one.
    """


class HostError(DevmodelsError):
    """A host backend (file, socket, TAP, process) failed."""


class UsageError(DevmodelsError, ValueError):
    """The VMM called the library wrongly; the message names what was wrong."""


class SnapshotError(UsageError):
    """A snapshot handed to ``restore`` is inconsistent; nothing was applied.

    Attributes:
        field: the dotted name of the offending field.
        reason: what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"snapshot field {field!r}: {reason}")
