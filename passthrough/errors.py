"""Errors of the passthrough package, each in one of devmodels' three families.

Rules:

1. Host-side failures (the kernel refused an ioctl, the vfio-user peer died or replied
   with an error, a malformed reply) are ``HostError`` subclasses. Each message says what
   failed *and what to do about it* (load a module, bind the device to vfio-pci, fix
   permissions).
2. Misuse by the VMM (a region index that does not exist, mapping memory twice) is
   ``UsageError``.
3. A hostile vfio-user *client* never raises out of the server: its messages get error
   replies. ``VfioUserReject`` (a ``GuestError``: the client is the server's untrusted
   input) carries the errno from the check to the reply and never leaves the server.
"""

from __future__ import annotations

import errno as _errno

from devmodels import GuestError, HostError

__all__ = [
    "VfioError",
    "VfioNotAvailableError",
    "VfioGroupNotFoundError",
    "VfioGroupNotViableError",
    "VfioDeviceBusyError",
    "VfioPermissionError",
    "VfioUnsupportedError",
    "VfioUserError",
    "VfioUserProtocolError",
    "VfioUserDisconnectedError",
    "VfioUserReject",
]


class VfioError(HostError):
    """A kernel VFIO operation failed.

    Attributes:
        errno: the errno of the failing system call, if any.
        hint: what to do about it.
    """

    def __init__(self, message: str, *, errno: int | None = None, hint: str = "") -> None:
        self.errno = errno
        self.hint = hint
        text = message
        if errno is not None:
            text += f" ({_errno.errorcode.get(errno, errno)}: {_os_strerror(errno)})"
        if hint:
            text += f"; {hint}"
        super().__init__(text)


def _os_strerror(code: int) -> str:
    import os

    return os.strerror(code)


class VfioNotAvailableError(VfioError):
    """``/dev/vfio/vfio`` (or the VFIO API) is missing."""


class VfioGroupNotFoundError(VfioError):
    """The device has no IOMMU group, or ``/dev/vfio/<group>`` does not exist."""


class VfioGroupNotViableError(VfioError):
    """Some device of the group is bound to a host driver (``VFIO_GROUP_FLAGS_VIABLE`` clear)."""


class VfioDeviceBusyError(VfioError):
    """The group or device is already open elsewhere (EBUSY)."""


class VfioPermissionError(VfioError):
    """Opening a VFIO node or locking memory was refused (EACCES/EPERM/ENOMEM for pinning)."""


class VfioUnsupportedError(VfioError):
    """The kernel lacks a needed extension (Type1v2 IOMMU) or the device is not vfio-pci."""


class VfioUserError(HostError):
    """The vfio-user peer answered a command with an error reply.

    Attributes:
        command: the command number.
        errno: the errno in the reply (may be 0, vfio-user.rst "Header").
    """

    def __init__(self, command: int, errno: int, what: str = "") -> None:
        from .defs import VFIO_USER_COMMAND_NAMES

        self.command = command
        self.errno = errno
        name = VFIO_USER_COMMAND_NAMES.get(command, str(command))
        reason = f"{_errno.errorcode.get(errno, errno)}: {_os_strerror(errno)}" if errno else "no errno"
        super().__init__(f"vfio-user {name} failed ({reason}){': ' + what if what else ''}")


class VfioUserProtocolError(HostError):
    """The peer sent bytes that break the vfio-user protocol (bad header, short reply)."""


class VfioUserDisconnectedError(VfioUserProtocolError):
    """The peer closed the socket."""


class VfioUserReject(GuestError):
    """The vfio-user client broke a rule of the protocol; the server answers with an error.

    The client is the server's untrusted input, as a guest is a device's, hence
    ``GuestError``; ``status`` is the errno of the error reply (rule 3).

    Attributes:
        errno: the errno for the reply (also ``status``).
        reason: for the trace event.
    """

    def __init__(self, errno: int, reason: str) -> None:
        self.errno = errno
        self.status = errno
        self.reason = reason
        super().__init__(f"{_errno.errorcode.get(errno, errno)}: {reason}")
