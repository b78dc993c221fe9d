"""The virtualized config space of a passed-through function: which bits the VMM emulates.

A passed-through function's config space is a mix (as in kernel vfio-pci and QEMU's
``vfio-pci``): most registers are the device's own, but some must not be, because they
describe the *host* (BAR addresses, the ROM BAR), or because the VMM implements them
(interrupt line, the capability chain it shows, MSI and MSI-X, whose messages the VMM
translates to its own interrupt interface).

Rules:

1. ``emulated`` is a per-bit mask: set bits read from the VMM's virtual copy, clear bits
   from the device. ``forwarded`` is a per-byte flag: guest writes to forwarded bytes go
   to the device (and to the virtual copy, whose write masks then decide what it keeps).
2. Emulated and not forwarded: BARs, ROM BAR, capability pointer, interrupt line, the
   header-type multi-function bit, every capability header (ID and next pointer, so the
   VMM can hide capabilities), and the whole MSI and MSI-X structures.
   Status.CAP_LIST is emulated (it follows the virtual chain).
3. Read from the device and forwarded: everything else, including Command (whose virtual
   copy is also kept, for decode and Bus Master gating) and capability bodies.
4. The device's capability chain is untrusted: the walk is bounded (48 links, offsets in
   [0x40, 0x100), dword aligned, no revisits).
"""

from __future__ import annotations

from dataclasses import dataclass

from devmodels.pci import CapabilityList, ConfigSpace, defs as pcidefs

__all__ = ["MAX_CAP_LINKS", "CapabilityEntry", "ConfigPolicy", "walk_capabilities", "msi_length", "PlacedCapabilityList"]

MAX_CAP_LINKS = 48


@dataclass(frozen=True)
class CapabilityEntry:
    """One capability of the device's chain: ID, offset and the bytes it may span."""

    cap_id: int
    offset: int
    span: int


def walk_capabilities(image: bytes) -> list[CapabilityEntry]:
    """The device's conventional capability chain, in chain order (rule 4)."""
    if len(image) < pcidefs.PCI_CONFIG_SPACE_SIZE:
        return []
    if not int.from_bytes(image[pcidefs.PCI_STATUS : pcidefs.PCI_STATUS + 2], "little") & pcidefs.PCI_STATUS_CAP_LIST:
        return []
    found: list[tuple[int, int]] = []
    seen: set[int] = set()
    offset = image[pcidefs.PCI_CAPABILITY_LIST] & ~0b11
    while offset and len(found) < MAX_CAP_LINKS:
        if offset < 0x40 or offset in seen or offset + 2 > pcidefs.PCI_CONFIG_SPACE_SIZE:
            break
        seen.add(offset)
        found.append((image[offset], offset))
        offset = image[offset + pcidefs.PCI_CAP_LIST_NEXT] & ~0b11
    starts = sorted(seen) + [pcidefs.PCI_CONFIG_SPACE_SIZE]
    return [CapabilityEntry(cap_id, off, starts[starts.index(off) + 1] - off) for cap_id, off in found]


def msi_length(control: int) -> int:
    """Length of an MSI structure with Message Control ``control`` (PCI 3.0 §6.8.1)."""
    return 10 + (4 if control & pcidefs.PCI_MSI_FLAGS_64BIT else 0) + (10 if control & pcidefs.PCI_MSI_FLAGS_MASKBIT else 0)


class PlacedCapabilityList(CapabilityList):
    """A capability list that puts the next structure of a given ID at a preset offset.

    The core ``MsiCapability``/``MsixCapability`` allocate their structure with
    ``caps.add(cap_id, length)``; a passed-through function needs them exactly where the
    physical function has them, so the device sets ``placement[cap_id]`` first.
    """

    def __init__(self, config: ConfigSpace) -> None:
        super().__init__(config)
        self.placement: dict[int, int] = {}

    def add(self, cap_id: int, length: int, offset: int | None = None) -> int:
        """``CapabilityList.add``, using (and consuming) a preset offset for ``cap_id``."""
        if offset is None and cap_id in self.placement:
            offset = self.placement.pop(cap_id)
        return super().add(cap_id, length, offset)


class ConfigPolicy:
    """The ``emulated``/``forwarded`` masks of rule 1 for a config space of ``size`` bytes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.emulated = bytearray(size)
        self.forwarded = bytearray(b"\x01" * size)

    def emulate(self, offset: int, length: int, bits: int | None = None, *, forward: bool = False) -> None:
        """Emulate ``length`` bytes at ``offset`` (all bits, or ``bits`` of a one-byte field)."""
        end = min(offset + length, self.size)
        for pos in range(offset, end):
            self.emulated[pos] = 0xFF if bits is None else (self.emulated[pos] | bits) & 0xFF
            if not forward:
                self.forwarded[pos] = 0

    def emulated_mask(self, offset: int, length: int) -> int:
        """The emulated bits of ``[offset, offset+length)`` as a little-endian integer."""
        return int.from_bytes(self.emulated[offset : offset + length], "little")

    def forwarded_runs(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Maximal ``(offset, length)`` runs of forwarded bytes inside the access."""
        runs: list[tuple[int, int]] = []
        start = None
        end = min(offset + length, self.size)
        for pos in range(offset, end + 1):
            on = pos < end and self.forwarded[pos]
            if on and start is None:
                start = pos
            elif not on and start is not None:
                runs.append((start, pos - start))
                start = None
        return runs
