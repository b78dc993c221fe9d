"""Config space bytes and masks (devmodels.pci._config)."""

from __future__ import annotations

import pytest

from devmodels import UsageError
from devmodels.pci import CapabilityList, ConfigSpace, defs


def test_sizes() -> None:
    assert ConfigSpace().size == 256
    assert len(ConfigSpace(4096).data) == 4096
    with pytest.raises(UsageError):
        ConfigSpace(512)


def test_guest_write_applies_rw_w1c_and_ro() -> None:
    c = ConfigSpace()
    c.set(0x40, 4, 0xAAAA_5555)
    c.set_writable(0x40, 4, 0x0000_FF00)
    c.set_w1c(0x40, 4, 0x00FF_0000)
    c.write(0x40, 4, 0x1234_56FF)
    # byte0 RO stays 0x55; byte1 RW takes 0x56; byte2 W1C clears written ones of 0xAA;
    # byte3 RO stays 0xAA.
    assert c.read(0x40, 4) == (0xAA << 24) | ((0xAA & ~0x34) << 16) | (0x56 << 8) | 0x55


def test_device_side_setters_ignore_masks() -> None:
    c = ConfigSpace()
    c.set(0x10, 2, 0x1_BEEF)
    assert c.get(0x10, 2) == 0xBEEF
    c.set_bits(0x10, 2, 0x0010, True)
    c.set_bits(0x10, 2, 0x0001, False)
    assert c.get(0x10, 2) == 0xBEFE
    for setter in (c.set, c.set_writable, c.set_w1c):
        with pytest.raises(UsageError):
            setter(0xFE, 4, 0)
        with pytest.raises(UsageError):
            setter(-1, 1, 0)
        with pytest.raises(UsageError):
            setter(0, 0, 0)


@pytest.mark.parametrize("size", [256, 4096])
def test_accesses_past_the_end(size: int) -> None:
    c = ConfigSpace(size)
    c.set(size - 3, 3, 0xABCDEF)
    c.set_writable(size - 3, 3, 0xFFFFFF)
    assert c.read(size - 3, 4) == 0xABCDEF  # the missing byte reads as zero
    c.write(size - 3, 4, 0x11_22_33_44)  # three bytes land, one is dropped
    assert c.get(size - 3, 3) == 0x223344
    assert c.read(size, 4) == 0
    assert c.read(size + 100, 2) == 0
    c.write(size, 4, 0xFFFF_FFFF)
    c.write(size * 10, 4, 0xFFFF_FFFF)
    assert bytes(c.data[:-3]) == bytes(size - 3)


def test_negative_offsets_and_sizes_are_harmless() -> None:
    c = ConfigSpace()
    c.set_writable(0, 4, 0xFFFF_FFFF)
    assert c.read(-1, 4) == 0 and c.read(0, 0) == 0 and c.read(0, -4) == 0
    c.write(-1, 4, 0xFFFF_FFFF)
    c.write(0, 0, 0xFF)
    c.write(0, -1, 0xFF)
    assert bytes(c.data) == bytes(256)


def test_huge_guest_size_is_bounded() -> None:
    c = ConfigSpace()
    c.set_writable(0xF0, 16, (1 << 128) - 1)
    c.write(0xF0, 1 << 40, (1 << 128) - 1)  # stops at the end, does not loop 2**40 times
    assert c.read(0xF0, 1 << 40) == (1 << 128) - 1


def test_capability_list_links_and_protects_headers() -> None:
    c = ConfigSpace()
    caps = CapabilityList(c)
    first = caps.add(defs.PCI_CAP_ID_PM, 8)
    second = caps.add(defs.PCI_CAP_ID_VNDR, 6)
    third = caps.add(defs.PCI_CAP_ID_MSI, 10, offset=0x80)
    assert (first, second, third) == (0x40, 0x48, 0x80)
    assert c.get(defs.PCI_CAPABILITY_LIST, 1) == 0x40
    assert c.get(defs.PCI_STATUS, 2) & defs.PCI_STATUS_CAP_LIST
    assert c.get(first + 1, 1) == second and c.get(second + 1, 1) == third and c.get(third + 1, 1) == 0
    assert list(caps) == [(defs.PCI_CAP_ID_PM, 0x40, 8), (defs.PCI_CAP_ID_VNDR, 0x48, 6), (defs.PCI_CAP_ID_MSI, 0x80, 10)]
    assert caps.find(defs.PCI_CAP_ID_VNDR) == 0x48 and caps.find(defs.PCI_CAP_ID_MSIX) is None
    c.write(first, 2, 0xFFFF)  # ID and next pointer are RO
    assert c.get(first, 2) == (second << 8) | defs.PCI_CAP_ID_PM
    assert caps.add(defs.PCI_CAP_ID_EXP, 4) == 0x8C  # after the highest one


@pytest.mark.parametrize(("length", "offset"), [(1, None), (8, 0x42), (8, 0x3C), (0x10, 0xF8), (4, 0x44)])
def test_capability_list_rejects_bad_placement(length: int, offset: int | None) -> None:
    caps = CapabilityList(ConfigSpace())
    caps.add(defs.PCI_CAP_ID_PM, 8)
    with pytest.raises(UsageError):
        caps.add(defs.PCI_CAP_ID_VNDR, length, offset)
