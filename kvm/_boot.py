"""64-bit entry, set up by the loader: identity-mapped page tables, a flat GDT, the registers.

The payloads start in long mode (SDM Vol. 3 §9.8.5) with paging on, so they need no
real-mode or mode-switch code of their own: fewer instructions for a hypervisor to
emulate, and the same start for every payload.

Rules:

1. The boot structures live in ``BOOT_AREA`` (guest-physical 0x1000-0xAFFF), which the
   loader refuses to load anything over. Page 0 stays unused, so a null pointer lands in
   memory nobody owns.
2. The page tables identity-map the first 4 GiB (RAM below, the PCI 32-bit window, the
   I/O APIC and local APIC above) and the first 1 GiB of the 64-bit PCI window
   (``MMIO64_WINDOW`` of ``devmodels.Machine``), in 2 MiB pages (SDM Vol. 3 §4.5, Table
   4-17/4-18): present, writable and user-accessible, so that a payload may run its
   loops in ring 3 — which a software hypervisor (PVM) executes natively while it
   emulates ring-0 code (``payloads/start.S``). CR4 leaves SMEP/SMAP off.
3. The GDT holds a null descriptor, a 64-bit code segment (selector 0x08) and a data
   segment (0x10) (SDM Vol. 3 §3.4.5, §5.2.1). The vCPU starts at ``entry`` with
   interrupts off (RFLAGS = 0x2) and RSP at ``stack`` when given.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from devmodels import GuestMemory, MMIO64_WINDOW

from . import abi as abi

if TYPE_CHECKING:
    from ._vcpu import Vcpu

__all__ = ["BOOT_AREA", "write_boot_structures", "long_mode_sregs", "enter"]

PML4 = 0x1000
PDPT_LOW = 0x2000
PD_LOW = 0x3000  # four pages: 0x3000-0x6FFF
PDPT_HIGH = 0x7000
PD_HIGH = 0x8000
GDT = 0x9000
BOOT_AREA = (0x1000, 0xB000 - 0x1000)

_PRESENT, _WRITABLE, _USER, _LARGE = 1, 2, 4, 0x80
_TABLE = _PRESENT | _WRITABLE | _USER
_PAGE_2M = _PRESENT | _WRITABLE | _USER | _LARGE
_GDT_ENTRIES = (0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF)  # null, code64 (L=1), data
CODE_SELECTOR, DATA_SELECTOR = 0x08, 0x10

# CR0: PE | MP | ET | NE | WP | AM | PG; CR4: PAE; EFER: LME | LMA (SDM Vol. 3 §2.5, §9.8.5).
CR0 = 0x8005_0033
CR4 = 1 << 5
EFER = 0x500


def write_boot_structures(memory: GuestMemory) -> None:
    """Write the page tables and the GDT into ``BOOT_AREA`` (rules 1-3)."""
    low_window = MMIO64_WINDOW[0]
    tables = bytearray(BOOT_AREA[1])

    def put(gpa: int, value: int) -> None:
        struct.pack_into("<Q", tables, gpa - BOOT_AREA[0], value)

    put(PML4, PDPT_LOW | _TABLE)
    put(PML4 + 8 * (low_window >> 39), PDPT_HIGH | _TABLE)
    for gib in range(4):
        put(PDPT_LOW + 8 * gib, (PD_LOW + 0x1000 * gib) | _TABLE)
        for i in range(512):
            put(PD_LOW + 0x1000 * gib + 8 * i, (gib << 30 | i << 21) | _PAGE_2M)
    put(PDPT_HIGH + 8 * ((low_window >> 30) & 511), PD_HIGH | _TABLE)
    for i in range(512):
        put(PD_HIGH + 8 * i, (low_window | i << 21) | _PAGE_2M)
    for i, descriptor in enumerate(_GDT_ENTRIES):
        put(GDT + 8 * i, descriptor)
    memory.write(BOOT_AREA[0], tables)


def _segment(selector: int, code: bool) -> abi.KvmSegment:
    segment = abi.KvmSegment()
    segment.base, segment.limit, segment.selector = 0, 0xFFFF_FFFF, selector
    segment.type = 0xB if code else 0x3  # execute/read accessed; read/write accessed
    segment.present, segment.dpl, segment.s, segment.g = 1, 0, 1, 1
    segment.l, segment.db = (1, 0) if code else (0, 1)
    return segment


def long_mode_sregs(sregs: abi.KvmSregs) -> abi.KvmSregs:
    """``sregs`` changed to the long-mode state of rules 2-3 (the rest kept as KVM set it)."""
    sregs.cs = _segment(CODE_SELECTOR, True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, _segment(DATA_SELECTOR, False))
    sregs.gdt.base, sregs.gdt.limit = GDT, 8 * len(_GDT_ENTRIES) - 1
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = CR0, PML4, CR4, EFER
    return sregs


def enter(vcpu: Vcpu, memory: GuestMemory, entry: int, stack: int = 0) -> None:
    """Write the boot structures and point ``vcpu`` at ``entry`` in long mode (rule 3)."""
    write_boot_structures(memory)
    vcpu.set_sregs(long_mode_sregs(vcpu.get_sregs()))
    regs = abi.KvmRegs()
    regs.rip, regs.rsp, regs.rflags = entry, stack, 0x2
    vcpu.set_regs(regs)
