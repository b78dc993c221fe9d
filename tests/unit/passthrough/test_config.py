"""Config-space virtualization helpers (passthrough.config)."""

from __future__ import annotations

from devmodels.pci import ConfigSpace
from devmodels.pci import defs as pcidefs
from passthrough.config import (
    MAX_CAP_LINKS,
    ConfigPolicy,
    PlacedCapabilityList,
    msi_length,
    walk_capabilities,
)
from passthrough.testing import config_image


def test_walk_reports_chain_order_and_spans() -> None:
    image = config_image(caps=[(0x10, 0x60, b""), (0x01, 0x40, b""), (0x05, 0x48, b"")])
    entries = walk_capabilities(bytes(image))
    assert [(e.cap_id, e.offset, e.span) for e in entries] == [(0x10, 0x60, 0xA0), (0x01, 0x40, 8), (0x05, 0x48, 0x18)]


def test_walk_is_bounded_and_ignores_bad_pointers() -> None:
    image = config_image(caps=[(0x01, 0x40, b"")])
    image[0x41] = 0x40  # loop
    assert len(walk_capabilities(bytes(image))) == 1
    image[pcidefs.PCI_CAPABILITY_LIST] = 0x20  # inside the header
    assert walk_capabilities(bytes(image)) == []
    image[pcidefs.PCI_STATUS] &= ~pcidefs.PCI_STATUS_CAP_LIST
    image[pcidefs.PCI_CAPABILITY_LIST] = 0x40
    assert walk_capabilities(bytes(image)) == []
    # Every dword from 0x40 to 0xFC chained: the longest chain without a revisit.
    chain = config_image(caps=[(0x09, 0x40 + 4 * i, b"") for i in range(MAX_CAP_LINKS)])
    assert len(walk_capabilities(bytes(chain))) == MAX_CAP_LINKS
    assert walk_capabilities(b"\0" * 64) == []


def test_msi_length() -> None:
    assert msi_length(0) == 10
    assert msi_length(pcidefs.PCI_MSI_FLAGS_64BIT) == 14
    assert msi_length(pcidefs.PCI_MSI_FLAGS_64BIT | pcidefs.PCI_MSI_FLAGS_MASKBIT) == 24


def test_placed_capability_list_uses_the_preset_offset_once() -> None:
    caps = PlacedCapabilityList(ConfigSpace())
    caps.placement[0x05] = 0x80
    assert caps.add(0x05, 14) == 0x80
    assert caps.add(0x05, 14, 0x90) == 0x90
    assert caps.placement == {}


def test_policy_masks_and_runs() -> None:
    policy = ConfigPolicy(256)
    policy.emulate(0x10, 8)
    policy.emulate(0x06, 1, 0x10, forward=True)
    assert policy.emulated_mask(0x04, 4) == 0x0010_0000
    assert policy.emulated_mask(0x10, 4) == 0xFFFF_FFFF
    assert policy.forwarded_runs(0x0C, 0x10) == [(0x0C, 4), (0x18, 4)]
    assert policy.forwarded_runs(0x04, 4) == [(0x04, 4)]
    assert policy.forwarded_runs(0xFE, 8) == [(0xFE, 2)]
