"""A KVM virtual machine: guest RAM slots, the in-kernel irqchip, interrupts, eventfds, vCPUs.

Rules:

1. ``Vm`` owns the VM descriptor and its vCPUs; ``close`` releases them. Guest RAM stays
   the caller's ``GuestMemory`` (KVM maps the same pages; nothing is copied).
2. Only mmap-backed regions (``MemoryRegion.memfd``/``anonymous``/``from_fd``) can be
   guest RAM: KVM needs their host address. A ``bytearray`` region is a ``UsageError``.
3. The irqchip is KVM's (``KVM_CREATE_IRQCHIP``: 8259 PICs, I/O APIC, local APICs in the
   kernel). GSIs 0-23 are the I/O APIC's pins (0-15 also the PICs'), as KVM routes them by
   default; ``set_msi_routes`` keeps those routes and adds MSI routes above them.
4. Every ioctl failure is a ``KvmError`` naming the ioctl and the errno.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from devmodels import MemoryRegion, UsageError

from . import abi as abi
from ._ioctl import ioctl
from ._system import Kvm
from ._vcpu import Vcpu

__all__ = ["Vm", "IOAPIC_PINS", "TSS_ADDRESS", "IDENTITY_MAP_ADDRESS"]

IOAPIC_PINS = 24
TSS_ADDRESS = 0xFFFB_D000  # three pages below 4 GiB, clear of RAM and device windows (as QEMU)
IDENTITY_MAP_ADDRESS = 0xFFFB_C000


def region_address(region: MemoryRegion) -> int:
    """The host address of ``region``'s mapping (rule 2)."""
    buffer = region.buffer
    if isinstance(buffer, bytearray):
        raise UsageError(f"{region!r} is a bytearray; KVM guest RAM needs an mmap-backed region (memfd, anonymous)")
    view = ctypes.c_char.from_buffer(buffer)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # drop the buffer export, or the mapping could not be closed


class Vm:
    """A VM on ``kvm`` (rules 1-4).

    Args:
        kvm: the open ``/dev/kvm``.
        irqchip: create the in-kernel irqchip (rule 3).

    Raises:
        KvmError: KVM refused the VM or its set-up.
    """

    def __init__(self, kvm: Kvm, *, irqchip: bool = True) -> None:
        self.kvm = kvm
        self.fd = ioctl(kvm.fd, "KVM_CREATE_VM")
        self.vcpus: list[Vcpu] = []
        self._slots: dict[int, MemoryRegion] = {}
        self.irqchip = irqchip
        try:
            ioctl(self.fd, "KVM_SET_TSS_ADDR", TSS_ADDRESS)
            ioctl(self.fd, "KVM_SET_IDENTITY_MAP_ADDR", ctypes.c_uint64(IDENTITY_MAP_ADDRESS))
            if irqchip:
                ioctl(self.fd, "KVM_CREATE_IRQCHIP")
        except BaseException:
            os.close(self.fd)
            raise

    # -- memory ------------------------------------------------------------------------------

    def add_memory(self, region: MemoryRegion, *, readonly: bool = False) -> int:
        """Map ``region`` as guest RAM at its ``base``; return the slot number (rule 2)."""
        slot = len(self._slots)
        entry = abi.KvmUserspaceMemoryRegion(slot, 1 << 1 if readonly or region.readonly else 0, region.base,
                                             region.size, region_address(region))
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", entry, detail=f"slot {slot} {region!r}")
        self._slots[slot] = region
        return slot

    # -- interrupts ---------------------------------------------------------------------------

    def irq_line(self, gsi: int, level: bool) -> None:
        """Drive GSI ``gsi`` (``KVM_IRQ_LINE``)."""
        ioctl(self.fd, "KVM_IRQ_LINE", abi.KvmIrqLevel(gsi, int(level)))

    def signal_msi(self, address: int, data: int) -> bool:
        """Inject an MSI (``KVM_SIGNAL_MSI``); ``False`` if the guest blocked it (masked APIC)."""
        msi = abi.KvmMsi(address & 0xFFFF_FFFF, address >> 32, data & 0xFFFF_FFFF)
        return ioctl(self.fd, "KVM_SIGNAL_MSI", msi) > 0

    def set_msi_routes(self, routes: Sequence[tuple[int, int, int]]) -> None:
        """Set the GSI routing table: the default irqchip pins plus ``(gsi, address, data)``
        MSI routes (``KVM_SET_GSI_ROUTING``; rule 3)."""
        entries: list[tuple[int, int, int, int]] = []
        for gsi in range(IOAPIC_PINS):
            if gsi < 16:
                chip = abi.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else abi.KVM_IRQCHIP_PIC_SLAVE
                entries.append((gsi, abi.KVM_IRQ_ROUTING_IRQCHIP, chip, gsi % 8))
            entries.append((gsi, abi.KVM_IRQ_ROUTING_IRQCHIP, abi.KVM_IRQCHIP_IOAPIC, gsi))
        table = abi.irq_routing(len(entries) + len(routes))
        for i, (gsi, kind, chip, pin) in enumerate(entries):
            entry = table.entries[i]
            entry.gsi, entry.type = gsi, kind
            entry.u.irqchip.irqchip, entry.u.irqchip.pin = chip, pin
        for i, (gsi, address, data) in enumerate(routes, len(entries)):
            if gsi < IOAPIC_PINS:
                raise UsageError(f"MSI route GSI {gsi} is an I/O APIC pin; use {IOAPIC_PINS} and up")
            entry = table.entries[i]
            entry.gsi, entry.type = gsi, abi.KVM_IRQ_ROUTING_MSI
            entry.u.msi.address_lo, entry.u.msi.address_hi = address & 0xFFFF_FFFF, address >> 32
            entry.u.msi.data = data & 0xFFFF_FFFF
        ioctl(self.fd, "KVM_SET_GSI_ROUTING", table)

    def irqfd(self, fd: int, gsi: int, *, resample_fd: int | None = None, deassign: bool = False) -> None:
        """Make a write to eventfd ``fd`` raise GSI ``gsi`` (``KVM_IRQFD``)."""
        flags = (abi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0) | (abi.KVM_IRQFD_FLAG_RESAMPLE if resample_fd is not None else 0)
        ioctl(self.fd, "KVM_IRQFD", abi.KvmIrqfd(fd, gsi, flags, resample_fd or 0))

    def ioeventfd(self, fd: int, address: int, length: int, *, pio: bool = False, datamatch: int | None = None,
                  deassign: bool = False) -> None:
        """Make a guest write of ``length`` bytes at ``address`` signal eventfd ``fd`` instead of
        exiting (``KVM_IOEVENTFD``); length 0 matches any width."""
        flags = (abi.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (abi.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= abi.KVM_IOEVENTFD_FLAG_DATAMATCH
        ioctl(self.fd, "KVM_IOEVENTFD", abi.KvmIoeventfd(datamatch or 0, address, length, fd, flags),
              detail=f"{'pio' if pio else 'mmio'} {address:#x}+{length}")

    # -- vCPUs --------------------------------------------------------------------------------

    def create_vcpu(self) -> Vcpu:
        """Add a vCPU (IDs from 0) with the CPUID KVM supports."""
        vcpu = Vcpu(self, len(self.vcpus))
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        """Close the vCPUs and the VM (rule 1)."""
        while self.vcpus:
            self.vcpus.pop().close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._slots.clear()
