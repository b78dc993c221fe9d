"""HiddenCapabilities: MSI and MSI-X unlinked from the config view the proxy sees."""

from __future__ import annotations

from devmodels import GuestMemory
from devmodels.pci import PciFunction
from devmodels.pci import defs as p
from mpqemu import HiddenCapabilities
from devmodels.testdev import PciTestDevice


def _walk(view: HiddenCapabilities | PciFunction) -> list[tuple[int, int]]:
    """``(cap_id, offset)`` following the list as a driver does (bounded)."""
    out: list[tuple[int, int]] = []
    if not view.config_read(p.PCI_STATUS, 2) & p.PCI_STATUS_CAP_LIST:
        return out
    pos = view.config_read(p.PCI_CAPABILITY_LIST, 1)
    while pos and len(out) < 48:
        out.append((view.config_read(pos, 1), pos))
        pos = view.config_read(pos + p.PCI_CAP_LIST_NEXT, 1)
    return out


class _Recording(PciFunction):
    def __init__(self) -> None:
        super().__init__(0x1234, 0x0001, 0x020000, name="rec")
        self.add_bar(0, 0x1000, None)
        self.pm = self.caps.add(p.PCI_CAP_ID_PM, 8)
        self.msi_cap = self.add_msi(1)
        self.vndr = self.caps.add(p.PCI_CAP_ID_VNDR, 8)
        self.config.set_writable(self.vndr + 4, 4, 0xFFFF_FFFF)
        self.msix_cap = self.add_msix(2, bar=0)
        self.writes: list[tuple[int, int]] = []

    def after_config_write(self, offset: int, size: int) -> None:
        self.writes.append((offset, size))


def test_testdev_offers_no_capability_list() -> None:
    dev = PciTestDevice(GuestMemory())
    assert [cid for cid, _ in _walk(dev)] == [p.PCI_CAP_ID_MSIX, p.PCI_CAP_ID_MSI]
    view = HiddenCapabilities(dev)
    assert _walk(view) == []
    assert view.config_read(p.PCI_CAPABILITY_LIST, 1) == 0
    assert view.config_read(p.PCI_STATUS, 2) & p.PCI_STATUS_CAP_LIST == 0
    for cap_id, offset, length in dev.caps:
        assert all(view.config_read(offset + i, 1) == 0 for i in range(length)), cap_id
    # Everything else reads through unchanged.
    assert view.config_read(p.PCI_VENDOR_ID, 4) == dev.config_read(p.PCI_VENDOR_ID, 4)
    assert view.config_read(p.PCI_BASE_ADDRESS_0, 4) == dev.config_read(p.PCI_BASE_ADDRESS_0, 4)


def test_status_keeps_its_dynamic_bits() -> None:
    dev = PciTestDevice(GuestMemory())
    view = HiddenCapabilities(dev)
    dev.set_intx(True)
    assert view.config_read(p.PCI_STATUS, 2) & p.PCI_STATUS_INTERRUPT
    assert view.config_read(p.PCI_COMMAND, 4) >> 16 & p.PCI_STATUS_INTERRUPT


def test_visible_capabilities_are_relinked() -> None:
    fn = _Recording()
    view = HiddenCapabilities(fn)
    assert _walk(view) == [(p.PCI_CAP_ID_PM, fn.pm), (p.PCI_CAP_ID_VNDR, fn.vndr)]
    assert view.config_read(p.PCI_STATUS, 2) & p.PCI_STATUS_CAP_LIST
    # A dword read of a capability header sees the rewritten next pointer in byte 1.
    assert view.config_read(fn.pm, 4) & 0xFFFF == p.PCI_CAP_ID_PM | fn.vndr << 8
    assert view.config_read(fn.vndr + 1, 1) == 0  # MSI-X after it is hidden: end of list
    assert view.hidden_offsets == (fn.msi_cap.offset, fn.msix_cap.offset)


def test_showing_everything_is_the_function_itself() -> None:
    fn = _Recording()
    view = HiddenCapabilities(fn, hidden=())
    assert _walk(view) == _walk(fn)
    assert len(_walk(fn)) == 4


def test_writes_to_hidden_capabilities_are_dropped() -> None:
    dev = PciTestDevice(GuestMemory())
    view = HiddenCapabilities(dev)
    assert dev.msi is not None and dev.msix is not None
    view.config_write(dev.msi.offset + 2, 2, 0x0001)  # MSI enable
    view.config_write(dev.msix.offset + 2, 2, 0x8000)  # MSI-X enable
    assert not dev.msi_enabled and not dev.msix_enabled
    assert view.config_read(dev.msi.offset + 2, 2) == 0


def test_straddling_write_keeps_the_visible_bytes() -> None:
    fn = _Recording()
    view = HiddenCapabilities(fn)
    # The last 2 bytes of the vendor capability, then the first 2 of the hidden MSI-X one.
    assert fn.msix_cap.offset == fn.vndr + 8
    view.config_write(fn.vndr + 6, 4, 0xDDCC_BBAA)
    assert fn.config_read(fn.vndr + 6, 2) == 0xBBAA
    assert fn.writes == [(fn.vndr + 6, 1), (fn.vndr + 7, 1)]
    fn.writes.clear()
    view.config_write(fn.vndr + 4, 4, 0x1234_5678)  # wholly visible: one write
    assert fn.writes == [(fn.vndr + 4, 4)]
    assert view.config_read(fn.vndr + 4, 4) == 0x1234_5678
