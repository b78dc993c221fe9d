"""The PCI host bridge: bus 0, config access (0xCF8/0xCFC and ECAM), BAR mapping.

Rules:

1. Functions are plugged at a device/function number of bus 0. The host gives each its
   interrupt sinks (INTx through ``intx_router(slot, pin)``, MSI through ``msi_sink``) and
   listens for BAR changes.
2. Config cycles to an empty slot read all-ones and are dropped (master abort).
3. When a function's decode or BARs change, its BARs are (re)mapped on the MMIO or port
   I/O bus at the programmed address. A BAR the guest programs over another mapping is
   left unmapped with a ``pci.bar_conflict`` trace event; it is never an exception. It is
   mapped once a later change (of any function) frees the range it asks for.
4. Legacy mechanism #1 (PCI 3.0 §3.2.2.3.2): a dword write to 0xCF8 latches
   CONFIG_ADDRESS; 0xCFC–0xCFF carry data for the latched register when bit 31 is set.
   ECAM (PCIe 3.0 §7.2.2): offset = bus << 20 | device << 15 | function << 12 | register.
"""

from __future__ import annotations

from collections.abc import Callable

from ._address import DevFn, as_devfn
from ._function import Bar, PciFunction
from .._bus import Bus, BusMapping
from .._errors import UsageError
from .._irq import LevelSink, MsiSink, NullLevelSink, NullMsiSink
from .._trace import tracepoint

__all__ = ["PciHost", "HostBridge", "ConfigPorts", "Ecam", "devfn", "PCI_CONFIG_ADDRESS_PORT"]

PCI_CONFIG_ADDRESS_PORT = 0xCF8
_CONFIG_ENABLE = 1 << 31

_tp_conflict = tracepoint("pci.bar_conflict")
_tp_map = tracepoint("pci.bar_map")

IntxRouter = Callable[[int, int], LevelSink]


def devfn(device: int, function: int = 0) -> DevFn:
    """Pack device (0–31) and function (0–7) numbers."""
    return DevFn.of(device, function)


class HostBridge(PciFunction):
    """The host bridge function at 00.0 (ID of the Q35 MCH, class 06:00:00)."""

    def __init__(self) -> None:
        super().__init__(0x8086, 0x29C0, 0x060000, interrupt_pin=0, name="host-bridge")


class _BarWindow:
    """Adapts one BAR of a function to the bus interface."""

    __slots__ = ("function", "index")

    def __init__(self, function: PciFunction, index: int) -> None:
        self.function = function
        self.index = index

    def read(self, offset: int, size: int) -> int:
        return self.function.bar_read(self.index, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.function.bar_write(self.index, offset, size, value)


class PciHost:
    """Bus 0 of a PCI hierarchy.

    Args:
        mmio: the memory bus BARs are mapped on.
        pio: the port I/O bus.
        intx_router: gives the level sink for (slot, pin 1..4); default drops INTx.
        msi_sink: where MSI/MSI-X messages go; default drops them.
    """

    def __init__(
        self,
        mmio: Bus,
        pio: Bus,
        intx_router: IntxRouter | None = None,
        msi_sink: MsiSink | None = None,
    ) -> None:
        self.mmio = mmio
        self.pio = pio
        self.intx_router: IntxRouter = intx_router or (lambda slot, pin: NullLevelSink())
        self.msi_sink: MsiSink = msi_sink or NullMsiSink()
        self.functions: dict[int, PciFunction] = {}
        self._maps: dict[int, dict[int, BusMapping]] = {}
        self.plug(HostBridge(), devfn(0))

    # -- hot plug -------------------------------------------------------------------------

    def plug(self, function: PciFunction, at: int | None = None) -> DevFn:
        """Put ``function`` at ``at`` (a devfn, or a ``Slot`` for its function 0) or the first
        free slot; return the devfn.

        Raises:
            UsageError: the slot is taken, no slot is free, or the function is plugged.
        """
        if function in self.functions.values():
            raise UsageError(f"{function!r} is already plugged")
        if at is None:
            free = [devfn(d) for d in range(1, 32) if devfn(d) not in self.functions]
            if not free:
                raise UsageError("no free slot on bus 0")
            at = free[0]
        at = as_devfn(at)
        if at in self.functions:
            raise UsageError(f"devfn {at:#x} ({at >> 3:02x}.{at & 7}) is taken")
        function.realize()
        pin = function.config.get(0x3D, 1)
        function.intx = self.intx_router(at >> 3, pin) if pin else NullLevelSink()
        function.msi_sink = self.msi_sink
        function.add_mapping_listener(self._remap)
        self.functions[at] = function
        self._maps[at] = {}
        self._remap(function)
        return at

    def unplug(self, function: PciFunction) -> None:
        """Remove ``function`` and its BAR mappings; its INTx is deasserted and detached."""
        at = self.devfn_of(function)
        for mapping in self._maps.pop(at).values():
            self._bus_for(mapping).unregister(mapping)
        function.remove_mapping_listener(self._remap)
        del self.functions[at]
        # A removed function stops driving its INTx wire; a shared line must not stay
        # asserted on its behalf.
        function.intx.set_level(False)
        function.intx = NullLevelSink()
        function.msi_sink = NullMsiSink()
        self._retry_unmapped()

    def devfn_of(self, function: PciFunction) -> DevFn:
        """The devfn ``function`` is plugged at."""
        for at, fn in self.functions.items():
            if fn is function:
                return DevFn(at)
        raise UsageError(f"{function!r} is not plugged")

    # -- config access --------------------------------------------------------------------

    def config_read(self, bus: int, at: int, offset: int, size: int) -> int:
        """A config read; empty slots and other buses read all-ones (rule 2)."""
        function = self.functions.get(at) if bus == 0 else None
        if function is None or offset >= function.config.size:
            return (1 << (8 * size)) - 1
        return function.config_read(offset, size)

    def config_write(self, bus: int, at: int, offset: int, size: int, value: int) -> None:
        """A config write; dropped for empty slots (rule 2)."""
        function = self.functions.get(at) if bus == 0 else None
        if function is not None and offset < function.config.size:
            function.config_write(offset, size, value)

    # -- BAR mapping ----------------------------------------------------------------------

    def _bus_for(self, mapping: BusMapping) -> Bus:
        window = mapping.device
        assert isinstance(window, _BarWindow)
        bar = window.function.bars[window.index]
        return self.pio if bar is not None and bar.is_io else self.mmio

    def _remap(self, function: PciFunction) -> None:
        if self._sync(function):
            self._retry_unmapped()

    def _sync(self, function: PciFunction) -> bool:
        """Make ``function``'s mappings follow its BARs; return whether any was removed."""
        current = self._maps[self.devfn_of(function)]
        removed = False
        for index, bar in enumerate(function.bars):
            if bar is None:
                continue
            wanted = function.bar_address(index)
            mapping = current.get(index)
            if mapping is not None and mapping.base == wanted:
                continue
            bus = self.pio if bar.is_io else self.mmio
            if mapping is not None:
                bus.unregister(mapping)
                del current[index]
                removed = True
            if wanted is not None:
                self._map_bar(function, bar, bus, wanted, current)
        return removed

    def _retry_unmapped(self) -> None:
        # A BAR left unmapped by a conflict (rule 3) decodes once the range it wanted is
        # free again, whichever function freed it. This calls ``_sync``, not ``_remap``, so
        # it does not recurse; functions already in sync cost one address check per BAR.
        for function in tuple(self.functions.values()):
            self._sync(function)

    def _map_bar(self, function: PciFunction, bar: Bar, bus: Bus, base: int, current: dict[int, BusMapping]) -> None:
        if base + bar.size > bus.limit:
            if _tp_conflict.on:
                _tp_conflict.emit(function=function.name, bar=bar.index, base=base, reason="outside bus")
            return
        try:
            current[bar.index] = bus.register(base, bar.size, _BarWindow(function, bar.index), f"{function.name}.bar{bar.index}")
        except UsageError as exc:
            if _tp_conflict.on:
                _tp_conflict.emit(function=function.name, bar=bar.index, base=base, reason=str(exc))
            return
        if _tp_map.on:
            _tp_map.emit(function=function.name, bar=bar.index, base=base, size=bar.size)


class ConfigPorts:
    """Configuration mechanism #1 at 0xCF8–0xCFF, as a port I/O ``BusDevice`` (rule 4)."""

    def __init__(self, host: PciHost) -> None:
        self.host = host
        self.address = 0

    def _target(self, byte: int) -> tuple[int, int, int] | None:
        if not self.address & _CONFIG_ENABLE:
            return None
        bus = (self.address >> 16) & 0xFF
        at = (self.address >> 8) & 0xFF
        register = (self.address & 0xFC) | byte
        return bus, at, register

    def read(self, offset: int, size: int) -> int:
        """A port read: CONFIG_ADDRESS (dword at 0) or CONFIG_DATA (4–7)."""
        if offset == 0 and size == 4:
            return self.address
        if offset >= 4:
            target = self._target(offset - 4)
            if target is not None:
                return self.host.config_read(*target, size)
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        """A port write: latch CONFIG_ADDRESS or write CONFIG_DATA."""
        if offset == 0 and size == 4:
            self.address = value & 0x80FF_FFFC
        elif offset >= 4:
            target = self._target(offset - 4)
            if target is not None:
                self.host.config_write(*target, size, value)


class Ecam:
    """Enhanced configuration access (memory-mapped config space) for buses 0..buses-1."""

    def __init__(self, host: PciHost, buses: int = 1) -> None:
        self.host = host
        self.buses = buses

    @property
    def size(self) -> int:
        """Bytes of MMIO the window needs."""
        return self.buses << 20

    def read(self, offset: int, size: int) -> int:
        """A config read through ECAM."""
        return self.host.config_read(offset >> 20, (offset >> 12) & 0xFF, offset & 0xFFF, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A config write through ECAM."""
        self.host.config_write(offset >> 20, (offset >> 12) & 0xFF, offset & 0xFFF, size, value)
