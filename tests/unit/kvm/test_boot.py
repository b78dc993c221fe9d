"""kvm._boot: the identity map, the GDT and the long-mode register state."""

from __future__ import annotations

import struct

from devmodels import GuestMemory, MemoryRegion
from devmodels._machine import MMIO64_WINDOW
from kvm import abi as abi
from kvm._boot import BOOT_AREA, GDT, PML4, long_mode_sregs, write_boot_structures


def _walk(memory: GuestMemory, address: int) -> tuple[int, int]:
    """(physical address, flags OR'd along the walk) of a 2 MiB mapping (SDM Vol. 3 §4.5)."""
    flags = 0x7
    table = PML4
    for shift in (39, 30):
        entry = struct.unpack("<Q", memory.read(table + 8 * ((address >> shift) & 511), 8))[0]
        assert entry & 1, f"not present at level {shift} for {address:#x}"
        flags &= entry
        table = entry & ~0xFFF & ((1 << 52) - 1)
    entry = struct.unpack("<Q", memory.read(table + 8 * ((address >> 21) & 511), 8))[0]
    assert entry & 0x81 == 0x81, "not a present 2 MiB page"
    return (entry & ~0x1F_FFFF & ((1 << 52) - 1)) | (address & 0x1F_FFFF), flags & entry


def test_rule_2_the_first_4_gib_and_the_64_bit_window_are_identity_mapped_for_user_too() -> None:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    write_boot_structures(memory)
    for address in (0, 0x10_0000, 0x1234_5678, 0xC000_0000, 0xFEC0_0000, 0xFEE0_00B0, 0xFFFF_F000,
                    MMIO64_WINDOW[0], MMIO64_WINDOW[0] + 0x3FFF_F000):
        physical, flags = _walk(memory, address)
        assert physical == address
        assert flags & 0x7 == 0x7  # present, writable, user


def test_rule_1_everything_is_inside_the_boot_area() -> None:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    memory.fill(0, 1 << 20, 0xEE)
    write_boot_structures(memory)
    assert memory.read(0, BOOT_AREA[0]) == b"\xee" * BOOT_AREA[0]
    end = BOOT_AREA[0] + BOOT_AREA[1]
    assert memory.read(end, 0x1000) == b"\xee" * 0x1000


def test_rule_3_gdt_and_registers_describe_64_bit_ring_0() -> None:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
    write_boot_structures(memory)
    code = struct.unpack("<Q", memory.read(GDT + 8, 8))[0]
    assert code >> 53 & 1 == 1 and code >> 45 & 3 == 0  # L=1, DPL 0
    sregs = long_mode_sregs(abi.KvmSregs())
    assert sregs.cs.l == 1 and sregs.cs.selector == 0x08 and sregs.ss.selector == 0x10
    assert sregs.cr0 & 0x8000_0001 == 0x8000_0001  # PG, PE
    assert sregs.cr4 & 0x20 and sregs.efer & 0x500 == 0x500  # PAE; LME, LMA
    assert sregs.cr3 == PML4
