"""Every KVM ioctl goes through ``ioctl`` here, so each failure names the call and the errno.

Rules:

1. An ioctl that fails raises ``HostError`` naming the ioctl (its uAPI name), the errno
   name and its text: "KVM_CREATE_VM failed: EPERM (Operation not permitted)". The errno
   stays on ``KvmError.errno``.
2. Integer arguments are passed as ``unsigned long`` through libc's ``ioctl`` (``ctypes``),
   because ``fcntl.ioctl`` takes a C ``int`` and several KVM arguments (a TSS address)
   do not fit one. Structure arguments go by reference. Both release the GIL.
3. ``KVM_RUN`` is the hot path: ``run_ioctl`` calls it through ``fcntl.ioctl`` (the cheapest
   call from Python; it also releases the GIL) and reports an interrupted run as ``False``
   instead of raising.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
from typing import Any

from devmodels import HostError

from .abi import IOCTLS

__all__ = ["KvmError", "ioctl", "run_ioctl"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.restype = ctypes.c_int
_KVM_RUN = IOCTLS["KVM_RUN"]


class KvmError(HostError):
    """A KVM ioctl (or opening ``/dev/kvm``) failed (rule 1).

    Attributes:
        call: the ioctl's name (``KVM_CREATE_VM``) or ``open /dev/kvm``.
        errno: the error number.
    """

    def __init__(self, call: str, errno: int, detail: str = "") -> None:
        self.call = call
        self.errno = errno
        name = _errno.errorcode.get(errno, str(errno))
        extra = f"; {detail}" if detail else ""
        super().__init__(f"{call} failed: {name} ({os.strerror(errno)}){extra}")


def ioctl(fd: int, name: str, arg: int | ctypes.Structure | ctypes.Array[Any] | ctypes.c_uint64 | None = None, *,
          detail: str = "") -> int:
    """Call ioctl ``name`` (an ``IOCTLS`` key) on ``fd``; return its non-negative result.

    Raises:
        KvmError: the call failed (rule 1).
    """
    request = ctypes.c_ulong(IOCTLS[name])
    if arg is None or isinstance(arg, int):
        result = _libc.ioctl(fd, request, ctypes.c_ulong(arg or 0))
    else:
        result = _libc.ioctl(fd, request, ctypes.byref(arg))
    if result < 0:
        raise KvmError(name, ctypes.get_errno(), detail)
    return int(result)


def run_ioctl(fd: int) -> bool:
    """``KVM_RUN`` on vCPU ``fd``: ``True`` after an exit, ``False`` if a signal interrupted it.

    Raises:
        KvmError: any other failure.
    """
    try:
        fcntl.ioctl(fd, _KVM_RUN, 0)
    except InterruptedError:
        return False
    except OSError as exc:
        raise KvmError("KVM_RUN", exc.errno or 0) from None
    return True
