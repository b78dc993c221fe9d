"""``/dev/kvm``: opening it, its API version, its capabilities and the CPUID it supports.

Rules:

1. Importing this package never touches ``/dev/kvm``; ``Kvm()`` opens it. A missing or
   unusable device is a ``KvmError`` naming the call (``open /dev/kvm``) and the errno.
2. ``unavailable()`` says why KVM cannot be used here, or ``None``: tests and benches skip
   with that reason.
3. The API version must be 12 (``KVM_API_VERSION``, stable since Linux 2.6.22).
"""

from __future__ import annotations

import ctypes
import os

from .abi import CAPS, KVM_API_VERSION, cpuid2
from ._ioctl import KvmError, ioctl

__all__ = ["Kvm", "DEV_KVM", "unavailable"]

DEV_KVM = "/dev/kvm"
_CPUID_ENTRIES = 256


class Kvm:
    """An open ``/dev/kvm`` (rule 1).

    Args:
        path: the device node.

    Raises:
        KvmError: it cannot be opened, or speaks another API version (rule 3).
    """

    def __init__(self, path: str = DEV_KVM) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmError(f"open {path}", exc.errno or 0) from None
        try:
            version = ioctl(self.fd, "KVM_GET_API_VERSION")
            if version != KVM_API_VERSION:
                raise KvmError("KVM_GET_API_VERSION", 0, f"API version {version}, expected {KVM_API_VERSION}")
            self.vcpu_mmap_size = ioctl(self.fd, "KVM_GET_VCPU_MMAP_SIZE")
        except BaseException:
            os.close(self.fd)
            raise

    def check_extension(self, cap: str) -> int:
        """``KVM_CHECK_EXTENSION`` of ``cap`` (a ``CAPS`` name): 0 when absent."""
        return ioctl(self.fd, "KVM_CHECK_EXTENSION", CAPS[cap])

    def supported_cpuid(self) -> ctypes.Structure:
        """``KVM_GET_SUPPORTED_CPUID``: the CPUID table a vCPU may be given."""
        table = cpuid2(_CPUID_ENTRIES)
        ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", table)
        return table

    def close(self) -> None:
        """Close the device."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unavailable(path: str = DEV_KVM) -> str | None:
    """Why KVM cannot run guests here, or ``None`` (rule 2): it opens ``path`` and creates
    (and drops) one VM, the first call a host without working KVM refuses."""
    try:
        with Kvm(path) as kvm:
            vm = ioctl(kvm.fd, "KVM_CREATE_VM")
            os.close(vm)
    except KvmError as exc:
        return f"KVM is not usable here: {exc}"
    return None
