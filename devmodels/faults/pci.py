"""``PciFaults``: the ``pci.*`` faults, applied between a PCI function and the server serving it.

A server (mpqemu, vfio-user, an in-process host) reaches a ``PciFunction`` only through
``config_read``/``config_write``/``bar_read``/``bar_write`` and hears from it only through
its ``intx`` and ``msi_sink`` (``PciFunction`` rules 2 and 4). ``install`` puts the fault
layer on exactly those six points of one function instance, after the server installed
its sinks; ``uninstall`` takes it off. The device model is not changed.

Rules:

1. ``pci.no-response`` (a state fault): while its window is open, reads return all ones
   (configuration space too unless ``config`` is false), writes are dropped, INTx is held
   deasserted and MSI/MSI-X messages are dropped, and ``paused`` is true so the serving
   loop gives the device no work (``FaultyServedDevice``). When it closes, the device's
   INTx level is driven again and it carries on from where it stopped.
2. ``pci.lost-irq`` (an event fault): each MSI/MSI-X message (of ``vector`` only, when
   given; the vector is found from the message the function sends) and each INTx
   assertion is an event; one the fault acts on is lost. A lost INTx assertion keeps the
   line low until the device deasserts it, or until no ``pci.lost-irq`` window is open
   any more, when the device's level is driven again.
3. Counters (``stats``) say what was swallowed; nothing here raises for the guest.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._irq import LevelSink, MsiSink
from .._trace import tracepoint
from ..pci import PciFunction
from ..pci.defs import PCI_COMMAND_INTX_DISABLE, PCI_INTERRUPT_PIN, PCI_STATUS, PCI_STATUS_INTERRUPT
from .engine import ActiveFault, FaultEngine
from .plan import LostInterrupt

__all__ = ["PciFaults", "PciFaultStats"]

_tp_pci = tracepoint("faults.pci")
_POINTS = ("config_read", "config_write", "bar_read", "bar_write")


@dataclass
class PciFaultStats:
    """What was swallowed (rule 3)."""

    reads: int = 0
    writes: int = 0
    msi_lost: int = 0
    intx_lost: int = 0


class _IntxGate:
    """The function's INTx sink as the fault layer sees it (rules 1, 2)."""

    def __init__(self, owner: PciFaults, real: LevelSink) -> None:
        self.owner = owner
        self.real = real
        self.want = False  # what the device drives
        self.out = False  # what the guest sees
        self.held = False  # an assertion was lost (rule 2)

    def set_level(self, asserted: bool) -> None:
        asserted = bool(asserted)
        rising = asserted and not self.want
        self.want = asserted
        if not asserted:
            self.held = False
        elif rising and self.owner._lose_interrupt(None):
            self.held = True
            self.owner.stats.intx_lost += 1
        self.drive()

    def drive(self) -> None:
        level = self.want and not self.held and not self.owner.silent
        if level != self.out:
            self.out = level
            self.real.set_level(level)


class _MsiGate:
    """The function's MSI sink as the fault layer sees it (rules 1, 2)."""

    def __init__(self, owner: PciFaults, real: MsiSink) -> None:
        self.owner = owner
        self.real = real

    def deliver_msi(self, address: int, data: int) -> None:
        owner = self.owner
        if owner.silent or (owner.engine and owner._lose_interrupt((address, data))):
            owner.stats.msi_lost += 1
            return
        self.real.deliver_msi(address, data)


class PciFaults:
    """The ``pci.*`` faults of ``engine`` on ``function`` (rules 1–3).

    Args:
        function: the function a server serves.
        engine: the device's fault engine; registers scope ``pci``/``name`` and the
            ``pci.no-response`` actuator.
        name: the part name plans target.
    """

    def __init__(self, function: PciFunction, engine: FaultEngine, name: str = "pci") -> None:
        self.function = function
        self.engine = engine
        self.name = name
        self.stats = PciFaultStats()
        self.silent = False
        self._config_silent = False
        self._intx: _IntxGate | None = None
        self._msi: _MsiGate | None = None
        engine.add_scope("pci", name)
        engine.add_actuator("pci.no-response", self)
        engine.on_change(self._redrive)

    @property
    def paused(self) -> bool:
        """Whether the device must be given no work (rule 1)."""
        return self.silent

    # -- install -----------------------------------------------------------------------------

    def install(self) -> None:
        """Interpose on the function's access points and its sinks (module docstring). Call
        after the server installed its ``intx``/``msi_sink``."""
        if self._intx is not None:
            return
        fn = self.function
        originals = {name: getattr(fn, name) for name in _POINTS}
        self._originals = originals
        all_ones = self._all_ones

        def config_read(offset: int, size: int) -> int:
            if self._config_silent:
                return all_ones(size, "config")
            return originals["config_read"](offset, size)

        def config_write(offset: int, size: int, value: int) -> None:
            if self._config_silent:
                self.stats.writes += 1
                return
            originals["config_write"](offset, size, value)

        def bar_read(index: int, offset: int, size: int) -> int:
            if self.silent:
                return all_ones(size, "bar")
            return originals["bar_read"](index, offset, size)

        def bar_write(index: int, offset: int, size: int, value: int) -> None:
            if self.silent:
                self.stats.writes += 1
                return
            originals["bar_write"](index, offset, size, value)

        fn.config_read = config_read  # type: ignore[method-assign]
        fn.config_write = config_write  # type: ignore[method-assign]
        fn.bar_read = bar_read  # type: ignore[method-assign]
        fn.bar_write = bar_write  # type: ignore[method-assign]
        self._intx = _IntxGate(self, fn.intx)
        # what the function drives now (PciFunction rule 4: Status.INTERRUPT, unless disabled)
        level = (fn.config.get(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT and not fn.command & PCI_COMMAND_INTX_DISABLE
                 and fn.config.get(PCI_INTERRUPT_PIN, 1) != 0)
        self._intx.want = self._intx.out = bool(level)
        self._msi = _MsiGate(self, fn.msi_sink)
        fn.intx = self._intx
        fn.msi_sink = self._msi

    def uninstall(self) -> None:
        """Take the fault layer off the function again."""
        if self._intx is None or self._msi is None:
            return
        fn = self.function
        for name in _POINTS:
            delattr(fn, name)  # the class's methods show through again
        fn.intx = self._intx.real
        fn.msi_sink = self._msi.real
        self._intx.real.set_level(self._intx.want)
        self._intx = self._msi = None

    def _all_ones(self, size: int, what: str) -> int:
        self.stats.reads += 1
        if _tp_pci.on:
            _tp_pci.emit(fault="no-response", read=what, size=size)
        return (1 << (8 * size)) - 1

    # -- pci.no-response (rule 1) ------------------------------------------------------------

    def start(self, active: ActiveFault) -> None:
        """The device stops answering."""
        self.silent = True
        fault = active.fault
        self._config_silent = bool(getattr(fault, "config", True))
        if self._intx is not None:
            self._intx.drive()

    def stop(self, active: ActiveFault) -> None:
        """The device answers again, unless another window still holds it silent."""
        others = [a for a in self.engine if a is not active and a.on and a.fault.kind == "pci.no-response"]
        self.silent = bool(others)
        self._config_silent = any(getattr(a.fault, "config", True) for a in others)
        if self._intx is not None:
            self._intx.drive()

    # -- pci.lost-irq (rule 2) ---------------------------------------------------------------

    def _lose_interrupt(self, message: tuple[int, int] | None) -> bool:
        """Whether a lost-irq fault takes this interrupt: an MSI ``(address, data)``, or
        INTx (None). The vector is looked up only for a fault that names one."""
        engine = self.engine
        if not engine:
            return False
        now = engine.clock()
        vector: int | None = None
        looked_up = False
        for active in engine.matching("pci", self.name):
            fault = active.fault
            if not isinstance(fault, LostInterrupt):
                continue
            if fault.vector is not None:
                if message is None:
                    continue  # a vector names an MSI/MSI-X message, not INTx
                if not looked_up:
                    vector, looked_up = self.vector_of(*message), True
                if fault.vector != vector:
                    continue
            if engine.decide(active, now):
                if _tp_pci.on:
                    _tp_pci.emit(fault=active.id, lost="intx" if message is None else f"msi {message}")
                return True
        return False

    def _redrive(self) -> None:
        """After the faults changed: an INTx assertion held by a lost-irq window that is no
        longer open is delivered (rule 2)."""
        gate = self._intx
        if gate is None or not gate.held:
            return
        now = self.engine.clock()
        if not any(isinstance(a.fault, LostInterrupt) and a.in_window(now) for a in self.engine):
            gate.held = False
            gate.drive()

    def vector_of(self, address: int, data: int) -> int | None:
        """The MSI-X or MSI vector whose message is ``(address, data)``, if any."""
        fn = self.function
        if fn.msix is not None and fn.msix.enabled:
            for vector in range(fn.msix.vectors):
                entry_address, entry_data, _ = fn.msix.entry(vector)
                if (entry_address, entry_data) == (address, data):
                    return vector
            return None
        if fn.msi is not None and fn.msi.enabled:
            for vector in range(fn.msi.enabled_vectors):
                if fn.msi.message(vector) == (address, data):
                    return vector
        return None
