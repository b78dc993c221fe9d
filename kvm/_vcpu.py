"""A vCPU: its registers, its shared ``kvm_run`` page and ``KVM_RUN``.

Rules:

1. ``run()`` enters the guest until the next exit and returns the exit reason; an exit
   caused by a signal or by ``immediate_exit`` is ``KVM_EXIT_INTR`` (10), as the kernel
   reports it when it has started running (``KVM_RUN`` returning EINTR before entry is
   folded into the same reason).
2. The exit's details are read from ``kvm_run`` (``io``/``mmio``) with precompiled
   ``struct`` layouts, and the answer to a read is written back there before the next
   ``run()``, as the KVM API requires (Documentation/virt/kvm/api.rst "KVM_RUN").
3. ``request_exit()`` may be called from any thread: it sets ``immediate_exit`` so the
   next (or the current, once a signal interrupts it) ``KVM_RUN`` returns at once.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import TYPE_CHECKING

from . import abi as abi
from ._ioctl import ioctl, run_ioctl

if TYPE_CHECKING:
    from ._vm import Vm

__all__ = ["Vcpu", "KVM_EXIT_INTR"]

KVM_EXIT_INTR = 10
_REASON = struct.Struct("<I")
IO_EXIT = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
MMIO_EXIT = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write


class Vcpu:
    """vCPU ``index`` of ``vm`` (rules 1-3)."""

    def __init__(self, vm: Vm, index: int) -> None:
        self.vm = vm
        self.index = index
        self.fd = ioctl(vm.fd, "KVM_CREATE_VCPU", index)
        try:
            self.run_page = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size, flags=mmap.MAP_SHARED)
            cpuid = vm.kvm.supported_cpuid()
            ioctl(self.fd, "KVM_SET_CPUID2", cpuid)
        except BaseException:
            os.close(self.fd)
            raise

    # -- registers ----------------------------------------------------------------------------

    def get_regs(self) -> abi.KvmRegs:
        """``KVM_GET_REGS``."""
        regs = abi.KvmRegs()
        ioctl(self.fd, "KVM_GET_REGS", regs)
        return regs

    def set_regs(self, regs: abi.KvmRegs) -> None:
        """``KVM_SET_REGS``."""
        ioctl(self.fd, "KVM_SET_REGS", regs)

    def get_sregs(self) -> abi.KvmSregs:
        """``KVM_GET_SREGS``."""
        sregs = abi.KvmSregs()
        ioctl(self.fd, "KVM_GET_SREGS", sregs)
        return sregs

    def set_sregs(self, sregs: abi.KvmSregs) -> None:
        """``KVM_SET_SREGS``."""
        ioctl(self.fd, "KVM_SET_SREGS", sregs)

    # -- running ------------------------------------------------------------------------------

    def run(self) -> int:
        """Enter the guest until the next exit; return the exit reason (rule 1)."""
        if not run_ioctl(self.fd):
            return KVM_EXIT_INTR
        return _REASON.unpack_from(self.run_page, abi.KVM_RUN_EXIT_REASON)[0]

    def request_exit(self) -> None:
        """Make the current or next ``run`` return ``KVM_EXIT_INTR`` (rule 3)."""
        self.run_page[abi.KVM_RUN_IMMEDIATE_EXIT] = 1

    def clear_exit_request(self) -> None:
        """Let ``run`` enter the guest again."""
        self.run_page[abi.KVM_RUN_IMMEDIATE_EXIT] = 0

    def close(self) -> None:
        """Unmap ``kvm_run`` and close the vCPU."""
        if not self.run_page.closed:
            self.run_page.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
