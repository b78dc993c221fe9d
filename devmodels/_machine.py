"""An in-process machine: RAM, MMIO and port I/O buses, an interrupt controller stand-in,
and a PCI host bridge, so tests, fuzzers and demos drive devices exactly as a guest would.

Layout (Q35-like):

- RAM at 0 up to ``ram_size`` (at most 2.75 GiB, below the ECAM window), also mapped on
  the MMIO bus so that BARs cannot be placed over it;
- ECAM for bus 0 at 0xB000_0000 (1 MiB);
- 32-bit PCI memory window 0xC000_0000–0xFEBF_FFFF; 64-bit window at 0x80_0000_0000;
- port I/O: 0xCF8–0xCFF config ports, PCI I/O window 0xC000–0xFFFF.

PCI addresses: ``add_pci`` returns the ``Slot`` it used; the config-cycle methods take a
devfn and read a ``Slot`` as its function 0 (``devmodels.pci.as_devfn``), so the slot
``add_pci`` returned can be passed on as it is. ``devfn_of(function)`` gives the devfn.

INTx of slot S pin P (1..4) is swizzled to GSI 16 + (S + P - 1) mod 4, as the Q35
firmware tables route it. MSI messages are recorded and handed to ``on_msi`` callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ._bus import PIO_LIMIT, Bus
from ._errors import GuestMemoryError, UsageError
from ._irq import IrqLine, LevelSink, MsiMessage
from ._memory import GuestMemory, MemoryRegion
from .pci import ConfigPorts, DevFn, Ecam, FunctionInfo, PciFunction, PciHost, Slot, Window, as_devfn, enumerate_bus0
from .pci._host import PCI_CONFIG_ADDRESS_PORT

__all__ = ["Machine", "InterruptController", "ECAM_BASE", "MMIO32_WINDOW", "MMIO64_WINDOW", "PIO_WINDOW"]

ECAM_BASE = 0xB000_0000
MMIO32_WINDOW = (0xC000_0000, 0xFEC0_0000 - 0xC000_0000)
MMIO64_WINDOW = (0x80_0000_0000, 0x10_0000_0000)
PIO_WINDOW = (0xC000, 0x4000)

RamBacking = Literal["bytearray", "anonymous", "memfd"]


class _RamWindow:
    """RAM as the CPU sees it on the MMIO bus.

    Mapping RAM there makes the bus the whole system address space: a BAR the guest
    programs over RAM is refused by the bus (a ``pci.bar_conflict``), as a chipset sends
    those addresses to DRAM rather than to PCI.
    """

    def __init__(self, memory: GuestMemory, base: int) -> None:
        self._memory = memory
        self._base = base

    def read(self, offset: int, size: int) -> int:
        try:
            return int.from_bytes(self._memory.read(self._base + offset, size), "little")
        except GuestMemoryError:  # the region was removed after the mapping was made
            return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        try:
            self._memory.write(self._base + offset, value.to_bytes(size, "little"))
        except GuestMemoryError:
            pass


class _GsiSink:
    def __init__(self, controller: InterruptController, gsi: int) -> None:
        self._controller = controller
        self._gsi = gsi

    def set_level(self, asserted: bool) -> None:
        self._controller._level_changed(self._gsi, asserted)


class InterruptController:
    """A stand-in for an IOAPIC + LAPIC: level lines by GSI and an MSI log.

    Attributes:
        levels: current level of every GSI that ever changed.
        msi: every MSI message delivered, oldest first (bounded to ``msi_log_limit``).
        on_msi, on_level: callbacks for VMM code that wants to react.
    """

    def __init__(self, msi_log_limit: int = 4096) -> None:
        self._lines: dict[int, IrqLine] = {}
        self.levels: dict[int, bool] = {}
        self.msi: list[MsiMessage] = []
        self.msi_log_limit = msi_log_limit
        self.on_msi: list[Callable[[MsiMessage], None]] = []
        self.on_level: list[Callable[[int, bool], None]] = []

    def line(self, gsi: int) -> IrqLine:
        """The shared line of ``gsi``."""
        line = self._lines.get(gsi)
        if line is None:
            line = self._lines[gsi] = IrqLine(_GsiSink(self, gsi), name=f"gsi{gsi}")
        return line

    def _level_changed(self, gsi: int, asserted: bool) -> None:
        self.levels[gsi] = asserted
        for callback in tuple(self.on_level):
            callback(gsi, asserted)

    def deliver_msi(self, address: int, data: int) -> None:
        """Record an MSI message (``MsiSink``)."""
        message = MsiMessage(address, data)
        if len(self.msi) >= self.msi_log_limit:
            del self.msi[: len(self.msi) // 2]
        self.msi.append(message)
        for callback in tuple(self.on_msi):
            callback(message)


def pci_intx_gsi(slot: int, pin: int) -> int:
    """The GSI of INTx pin ``pin`` (1..4) of ``slot`` (Q35 swizzle)."""
    return 16 + (slot + pin - 1) % 4


class Machine:
    """RAM, buses, an interrupt controller and PCI bus 0.

    Args:
        ram_size: bytes of RAM at gpa 0.
        ram_backing: ``bytearray`` (private, fastest to create), ``anonymous`` (mmap),
            or ``memfd`` (shareable with another process).
    """

    def __init__(self, ram_size: int = 64 << 20, ram_backing: RamBacking = "anonymous") -> None:
        if not 0 < ram_size <= ECAM_BASE:
            raise UsageError(f"ram_size must be in (0, {ECAM_BASE:#x}], got {ram_size:#x}")
        makers = {
            "bytearray": MemoryRegion.from_bytearray,
            "anonymous": MemoryRegion.anonymous,
            "memfd": MemoryRegion.memfd,
        }
        if ram_backing not in makers:
            raise UsageError(f"ram_backing must be one of {sorted(makers)}, got {ram_backing!r}")
        self.memory = GuestMemory([makers[ram_backing](0, ram_size)])
        self.mmio = Bus("mmio")
        self.mmio.register(0, ram_size, _RamWindow(self.memory, 0), "ram")
        self.pio = Bus("pio", PIO_LIMIT)
        self.irq = InterruptController()
        self.pci = PciHost(self.mmio, self.pio, self._route_intx, self.irq)
        self.config_ports = ConfigPorts(self.pci)
        self.pio.register(PCI_CONFIG_ADDRESS_PORT, 8, self.config_ports, "pci-config")
        self.ecam = Ecam(self.pci)
        self.mmio.register(ECAM_BASE, self.ecam.size, self.ecam, "pci-ecam")

    def _route_intx(self, slot: int, pin: int) -> LevelSink:
        return self.irq.line(pci_intx_gsi(slot, pin)).source()

    def add_pci(self, function: PciFunction, slot: int | None = None) -> Slot:
        """Plug ``function`` at ``slot`` (function 0) or the first free slot; return the slot.

        The ``Slot`` returned is an ``int`` that the config-cycle methods and the driver
        simulators read as function 0 of that slot (``slot.devfn`` is its devfn).

        Raises:
            UsageError: ``function`` is not a ``PciFunction``, the slot is out of range or
                taken, or no slot is free.
        """
        if not isinstance(function, PciFunction):
            raise UsageError(f"add_pci: function must be a PciFunction, got {type(function).__name__}")
        at = self.pci.plug(function, None if slot is None else Slot(slot).devfn)
        return at.slot

    def devfn_of(self, function: PciFunction) -> DevFn:
        """The devfn ``function`` is plugged at on bus 0.

        Raises:
            UsageError: it is not plugged.
        """
        return self.pci.devfn_of(function)

    # -- config cycles through the legacy ports (what a guest does) -----------------------

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        """A config read via 0xCF8/0xCFC (a ``Slot`` means its function 0)."""
        devfn = as_devfn(devfn)
        self.pio.write(PCI_CONFIG_ADDRESS_PORT, 4, 1 << 31 | bus << 16 | devfn << 8 | (offset & 0xFC))
        return self.pio.read(0xCFC + (offset & 3), size)

    def config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        """A config write via 0xCF8/0xCFC (a ``Slot`` means its function 0)."""
        devfn = as_devfn(devfn)
        self.pio.write(PCI_CONFIG_ADDRESS_PORT, 4, 1 << 31 | bus << 16 | devfn << 8 | (offset & 0xFC))
        self.pio.write(0xCFC + (offset & 3), size, value)

    def enumerate(self) -> list[FunctionInfo]:
        """Run the firmware's PCI enumeration and BAR assignment (through config cycles)."""
        routes = {(slot, pin): pci_intx_gsi(slot, pin) for slot in range(32) for pin in range(1, 5)}
        return enumerate_bus0(
            self,
            io=Window(*PIO_WINDOW),
            mem32=Window(*MMIO32_WINDOW),
            mem64=Window(*MMIO64_WINDOW),
            irq_of_pin=routes,
        )

    def close(self) -> None:
        """Release guest RAM."""
        self.memory.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
