"""The config-space view the QEMU proxy sees: a function with some capabilities unlinked.

QEMU 7.2's ``x-pci-proxy-dev`` delivers only INTx (an irqfd routed by KVM). It has no MSI
or MSI-X path: the proxy's own config copy has no such capability, so a message the remote
device sends goes nowhere. A guest driver that finds MSI or MSI-X in config space enables
it and then waits for interrupts that never arrive. ``HiddenCapabilities`` therefore offers
the function without them.

Rules:

1. Hiding is a read-side rewrite of the capability list (PCI 3.0 §6.7): the Capabilities
   Pointer (0x34) and every visible capability's next pointer skip hidden ones; the bytes
   of a hidden capability read as zero; Status.CAP_LIST (§6.2.3) reads clear when no
   capability stays visible. The function itself is unchanged.
2. Guest writes to the bytes of a hidden capability are dropped, so the hidden MSI/MSI-X
   enables can never be set; the rest of a write that straddles one goes through byte by
   byte.
3. The list is taken from ``function.caps`` once, at construction (capabilities are fixed
   when a device is built).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from devmodels.pci import defs as pci_defs, PciFunction

__all__ = ["ConfigView", "HiddenCapabilities", "DEFAULT_HIDDEN"]

# Capabilities the 7.2 proxy cannot serve.
DEFAULT_HIDDEN: tuple[int, ...] = (pci_defs.PCI_CAP_ID_MSI, pci_defs.PCI_CAP_ID_MSIX)


class ConfigView(Protocol):
    """What the server reaches config space through (a ``PciFunction`` is one)."""

    def config_read(self, offset: int, size: int) -> int:
        """A config read of ``size`` bytes at ``offset``."""
        ...

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A config write of ``size`` bytes at ``offset``."""
        ...


class HiddenCapabilities:
    """``function``'s config space with the capabilities in ``hidden`` unlinked (rule 1).

    Args:
        function: the device.
        hidden: capability IDs to hide (default MSI and MSI-X).

    Attributes:
        hidden_offsets: config offsets of the capabilities hidden.
    """

    def __init__(self, function: PciFunction, hidden: Iterable[int] = DEFAULT_HIDDEN) -> None:
        self.function = function
        hide = set(hidden)
        entries = list(function.caps)
        visible = [offset for cap_id, offset, _ in entries if cap_id not in hide]
        self.hidden_offsets = tuple(offset for cap_id, offset, _ in entries if cap_id in hide)
        # Per byte: keep = bits read from the function; add = bits forced on.
        self._keep: dict[int, int] = {}
        self._add: dict[int, int] = {}
        self._dropped: set[int] = set()
        if self.hidden_offsets:
            for cap_id, offset, length in entries:
                if cap_id in hide:
                    for pos in range(offset, offset + length):
                        self._force(pos, 0)
                        self._dropped.add(pos)
            self._force(pci_defs.PCI_CAPABILITY_LIST, visible[0] if visible else 0)
            for i, here in enumerate(visible):
                after = visible[i + 1] if i + 1 < len(visible) else 0
                self._force(here + pci_defs.PCI_CAP_LIST_NEXT, after)
            if not visible:
                self._keep[pci_defs.PCI_STATUS] = ~pci_defs.PCI_STATUS_CAP_LIST & 0xFF
                self._add[pci_defs.PCI_STATUS] = 0

    def _force(self, pos: int, value: int) -> None:
        self._keep[pos] = 0
        self._add[pos] = value & 0xFF

    def config_read(self, offset: int, size: int) -> int:
        """Read through the function, then rewrite the bytes of rule 1."""
        value = self.function.config_read(offset, size)
        keep = self._keep
        if not keep:
            return value
        for i in range(size):
            pos = offset + i
            if pos in keep:
                shift = 8 * i
                byte = (value >> shift) & 0xFF
                byte = (byte & keep[pos]) | self._add[pos]
                value = (value & ~(0xFF << shift)) | (byte << shift)
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write through the function, dropping bytes of hidden capabilities (rule 2)."""
        dropped = self._dropped
        if not dropped or dropped.isdisjoint(range(offset, offset + size)):
            self.function.config_write(offset, size, value)
            return
        for i in range(size):
            if offset + i not in dropped:
                self.function.config_write(offset + i, 1, (value >> (8 * i)) & 0xFF)
