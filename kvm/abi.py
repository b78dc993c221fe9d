"""The KVM ABI this package speaks: ioctl numbers, exit reasons and ``ctypes`` layouts.

Rules:

1. Everything here is a constant or a ``ctypes`` structure copied from the Linux uAPI
   headers ``<linux/kvm.h>`` and ``<asm/kvm.h>`` (x86-64), with the headers' names. Nothing
   here performs a call; ``_ioctl`` does.
2. ioctl numbers are computed with the ``_IOC`` encoding of ``<asm-generic/ioctl.h>`` from
   the structure sizes below, so a wrong layout shows up as a wrong number (the unit tests
   compare both with a C program built against the host's headers).
"""

from __future__ import annotations

import ctypes

__all__ = [
    "KVMIO",
    "KVM_API_VERSION",
    "KvmRegs",
    "KvmSegment",
    "KvmDtable",
    "KvmSregs",
    "KvmUserspaceMemoryRegion",
    "KvmIrqLevel",
    "KvmMsi",
    "KvmIrqfd",
    "KvmIoeventfd",
    "KvmPitConfig",
    "KvmCpuidEntry2",
    "KvmIrqRoutingEntry",
    "cpuid2",
    "irq_routing",
    "IOCTLS",
    "EXIT_REASONS",
    "CAPS",
]

KVMIO = 0xAE
KVM_API_VERSION = 12

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | KVMIO << 8 | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


_u8, _u16, _u32, _s32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64


class KvmRegs(ctypes.Structure):
    """``struct kvm_regs`` (KVM_GET_REGS / KVM_SET_REGS)."""

    _fields_ = [(name, _u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
    )]


class KvmSegment(ctypes.Structure):
    """``struct kvm_segment``: a segment register's hidden part."""

    _fields_ = [
        ("base", _u64), ("limit", _u32), ("selector", _u16), ("type", _u8),
        ("present", _u8), ("dpl", _u8), ("db", _u8), ("s", _u8), ("l", _u8), ("g", _u8), ("avl", _u8),
        ("unusable", _u8), ("padding", _u8),
    ]


class KvmDtable(ctypes.Structure):
    """``struct kvm_dtable``: GDTR / IDTR."""

    _fields_ = [("base", _u64), ("limit", _u16), ("padding", _u16 * 3)]


class KvmSregs(ctypes.Structure):
    """``struct kvm_sregs`` (KVM_GET_SREGS / KVM_SET_SREGS)."""

    _fields_ = [
        ("cs", KvmSegment), ("ds", KvmSegment), ("es", KvmSegment), ("fs", KvmSegment),
        ("gs", KvmSegment), ("ss", KvmSegment), ("tr", KvmSegment), ("ldt", KvmSegment),
        ("gdt", KvmDtable), ("idt", KvmDtable),
        ("cr0", _u64), ("cr2", _u64), ("cr3", _u64), ("cr4", _u64), ("cr8", _u64),
        ("efer", _u64), ("apic_base", _u64), ("interrupt_bitmap", _u64 * 4),
    ]


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region`` (KVM_SET_USER_MEMORY_REGION)."""

    _fields_ = [("slot", _u32), ("flags", _u32), ("guest_phys_addr", _u64), ("memory_size", _u64),
                ("userspace_addr", _u64)]


class KvmIrqLevel(ctypes.Structure):
    """``struct kvm_irq_level`` (KVM_IRQ_LINE): a GSI and its level."""

    _fields_ = [("irq", _u32), ("level", _u32)]


class KvmMsi(ctypes.Structure):
    """``struct kvm_msi`` (KVM_SIGNAL_MSI)."""

    _fields_ = [("address_lo", _u32), ("address_hi", _u32), ("data", _u32), ("flags", _u32), ("devid", _u32),
                ("pad", _u8 * 12)]


class KvmIrqfd(ctypes.Structure):
    """``struct kvm_irqfd`` (KVM_IRQFD)."""

    _fields_ = [("fd", _u32), ("gsi", _u32), ("flags", _u32), ("resamplefd", _u32), ("pad", _u8 * 16)]


class KvmIoeventfd(ctypes.Structure):
    """``struct kvm_ioeventfd`` (KVM_IOEVENTFD)."""

    _fields_ = [("datamatch", _u64), ("addr", _u64), ("len", _u32), ("fd", _s32), ("flags", _u32),
                ("pad", _u8 * 36)]


class KvmPitConfig(ctypes.Structure):
    """``struct kvm_pit_config`` (KVM_CREATE_PIT2)."""

    _fields_ = [("flags", _u32), ("pad", _u32 * 15)]


class KvmCpuidEntry2(ctypes.Structure):
    """``struct kvm_cpuid_entry2``."""

    _fields_ = [("function", _u32), ("index", _u32), ("flags", _u32), ("eax", _u32), ("ebx", _u32),
                ("ecx", _u32), ("edx", _u32), ("padding", _u32 * 3)]


class _KvmIrqRoutingMsi(ctypes.Structure):
    _fields_ = [("address_lo", _u32), ("address_hi", _u32), ("data", _u32), ("devid", _u32)]


class _KvmIrqRoutingIrqchip(ctypes.Structure):
    _fields_ = [("irqchip", _u32), ("pin", _u32)]


class _KvmIrqRoutingUnion(ctypes.Union):
    _fields_ = [("irqchip", _KvmIrqRoutingIrqchip), ("msi", _KvmIrqRoutingMsi), ("pad", _u32 * 8)]


class KvmIrqRoutingEntry(ctypes.Structure):
    """``struct kvm_irq_routing_entry``: one GSI's route (an irqchip pin or an MSI message)."""

    _fields_ = [("gsi", _u32), ("type", _u32), ("flags", _u32), ("pad", _u32), ("u", _KvmIrqRoutingUnion)]


class _KvmCpuid2Header(ctypes.Structure):
    _fields_ = [("nent", _u32), ("padding", _u32)]


class _KvmIrqRoutingHeader(ctypes.Structure):
    _fields_ = [("nr", _u32), ("flags", _u32)]


def cpuid2(entries: int) -> ctypes.Structure:
    """A ``struct kvm_cpuid2`` with room for ``entries`` entries (``nent`` set to it)."""

    class KvmCpuid2(ctypes.Structure):
        _fields_ = [("nent", _u32), ("padding", _u32), ("entries", KvmCpuidEntry2 * entries)]

    table = KvmCpuid2()
    table.nent = entries
    return table


def irq_routing(entries: int) -> ctypes.Structure:
    """A ``struct kvm_irq_routing`` with ``entries`` entries (``nr`` set to it)."""

    class KvmIrqRouting(ctypes.Structure):
        _fields_ = [("nr", _u32), ("flags", _u32), ("entries", KvmIrqRoutingEntry * entries)]

    table = KvmIrqRouting()
    table.nr = entries
    return table


_size = ctypes.sizeof

IOCTLS: dict[str, int] = {
    # /dev/kvm
    "KVM_GET_API_VERSION": _io(0x00),
    "KVM_CREATE_VM": _io(0x01),
    "KVM_CHECK_EXTENSION": _io(0x03),
    "KVM_GET_VCPU_MMAP_SIZE": _io(0x04),
    "KVM_GET_SUPPORTED_CPUID": _iowr(0x05, _size(_KvmCpuid2Header)),
    # VM
    "KVM_CREATE_VCPU": _io(0x41),
    "KVM_SET_USER_MEMORY_REGION": _iow(0x46, _size(KvmUserspaceMemoryRegion)),
    "KVM_SET_TSS_ADDR": _io(0x47),
    "KVM_SET_IDENTITY_MAP_ADDR": _iow(0x48, 8),
    "KVM_CREATE_IRQCHIP": _io(0x60),
    "KVM_IRQ_LINE": _iow(0x61, _size(KvmIrqLevel)),
    "KVM_SET_GSI_ROUTING": _iow(0x6A, _size(_KvmIrqRoutingHeader)),
    "KVM_IRQFD": _iow(0x76, _size(KvmIrqfd)),
    "KVM_CREATE_PIT2": _iow(0x77, _size(KvmPitConfig)),
    "KVM_IOEVENTFD": _iow(0x79, _size(KvmIoeventfd)),
    "KVM_SIGNAL_MSI": _iow(0xA5, _size(KvmMsi)),
    # vCPU
    "KVM_RUN": _io(0x80),
    "KVM_GET_REGS": _ior(0x81, _size(KvmRegs)),
    "KVM_SET_REGS": _iow(0x82, _size(KvmRegs)),
    "KVM_GET_SREGS": _ior(0x83, _size(KvmSregs)),
    "KVM_SET_SREGS": _iow(0x84, _size(KvmSregs)),
    "KVM_SET_CPUID2": _iow(0x90, _size(_KvmCpuid2Header)),
}

EXIT_REASONS: dict[int, str] = {
    0: "KVM_EXIT_UNKNOWN",
    1: "KVM_EXIT_EXCEPTION",
    2: "KVM_EXIT_IO",
    3: "KVM_EXIT_HYPERCALL",
    4: "KVM_EXIT_DEBUG",
    5: "KVM_EXIT_HLT",
    6: "KVM_EXIT_MMIO",
    7: "KVM_EXIT_IRQ_WINDOW_OPEN",
    8: "KVM_EXIT_SHUTDOWN",
    9: "KVM_EXIT_FAIL_ENTRY",
    10: "KVM_EXIT_INTR",
    17: "KVM_EXIT_INTERNAL_ERROR",
    24: "KVM_EXIT_SYSTEM_EVENT",
}

CAPS: dict[str, int] = {
    "KVM_CAP_IRQCHIP": 0,
    "KVM_CAP_USER_MEMORY": 3,
    "KVM_CAP_SET_TSS_ADDR": 4,
    "KVM_CAP_IRQ_ROUTING": 25,
    "KVM_CAP_IRQFD": 32,
    "KVM_CAP_PIT2": 33,
    "KVM_CAP_IOEVENTFD": 36,
    "KVM_CAP_SIGNAL_MSI": 77,
    "KVM_CAP_IMMEDIATE_EXIT": 136,
}

# struct kvm_run offsets (<linux/kvm.h>; x86-64 has no s390 psw fields before the union).
KVM_RUN_IMMEDIATE_EXIT = 1
KVM_RUN_EXIT_REASON = 8
KVM_RUN_IF_FLAG = 13
KVM_RUN_UNION = 32
KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1
KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI = 1, 2
KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC = 0, 1, 2
KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_IOEVENTFD_FLAG_PIO, KVM_IOEVENTFD_FLAG_DEASSIGN = 1, 2, 4
KVM_IRQFD_FLAG_DEASSIGN, KVM_IRQFD_FLAG_RESAMPLE = 1, 2
KVM_INTERNAL_ERROR_EMULATION = 1
