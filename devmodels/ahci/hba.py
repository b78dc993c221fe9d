"""The AHCI host bus adapter: an ICH9-style PCI function (8086:2922) with up to six ports.

Rules:

1. ABAR is BAR5 (4 KiB, 32-bit memory): generic host control registers at 0x00-0xFF from
   the ``_table`` below, port ``n`` at ``0x100 + 0x80 * n`` (AHCI 1.3.1 §3). Dispatch is one
   table lookup; 64-bit accesses are split into two dword accesses, everything else that
   matches no register goes to the register file's single "unimplemented" path.
2. Interrupts (§10.6): IS.IPS[n] latches whenever port n has an enabled PxIS condition;
   the INTx line is GHC.IE && IS != 0. With MSI (only when the constructor asks for it:
   QEMU's mpqemu proxy cannot deliver MSI) one message is sent each time an IS bit becomes
   set, so an event that arrives while the guest handles an earlier one is not lost.
3. Sans-IO: backends are driven only through ``submit``/``completions``. The VMM calls
   ``poll()`` when a backend signals completions (``BlockBackend.set_notify``); every MMIO
   write also polls once, so synchronous backends finish inside the write.
4. GHC.HR (§10.4.3) resets the HBA at once but reads 1 until every port's cancelled
   backend requests have come back; only then does it clear and links come up again.
5. Snapshots (``devmodels._state``) are taken at the quiesce point: ``quiesce()`` runs
   posted work and waits for every backend request, then ``state()`` copies; ``state()``
   and ``restore()`` raise ``UsageError`` naming ``quiesce()`` while work is in flight.
   The state carries ``AhciArgs`` (ports, MSI, each port's drive); ``restore`` refuses a
   state of a controller built or equipped differently, and ``from_state`` builds one
   from the state around the media the restorer opens.
6. Posted writes (``posted_writes=True``): a write that issues commands (PxCI, PxCMD.ST)
   stores the register and returns; the command engine runs at the next ``poll()``, which
   the VMM calls right after it has completed the guest's write (a proxy answers first,
   then polls: the guest runs on while commands are fetched, as with a posted PCI write).
   Every other entry point (register and config accesses, reset, attach, snapshots) runs
   the posted work first, so what the guest and the host observe is ordered exactly as
   without posting; only the moment commands start differs.
7. Served by a loop (``devmodels.runtime.ServedDevice``): the loop's waker becomes every
   attached drive's backend ``set_notify`` hook (drives attached or media inserted later
   get it too), and ``run_posted()`` is ``poll()``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from ..args import check_memory
from .._errors import HostError, SnapshotError, UsageError
from .._memory import GuestMemory
from .._regs import Access, Reg, RegisterFile
from .._state import check_type, require_quiesced
from .._trace import tracepoint
from ..backends import BlockBackend
from ..pci import PciFunction
from . import regs as r
from .atapi import AtapiCdrom
from .command import Drive
from .port import AhciPort
from .ata import AtaDisk
from .state import AhciArgs, AhciState, AtaDiskArgs, AtapiArgs, apply_state, capture_state, check_state, constructor_args

__all__ = ["AhciController"]

_tp_stray = tracepoint("ahci.stray_completion")
_tp_reset = tracepoint("ahci.hba_reset")

_POLL_ROUNDS = 64  # synchronous backends can chain requests; bound the rounds per call


class AhciController(PciFunction):
    """An AHCI 1.3 SATA controller.

    Args:
        memory: guest RAM the controller DMAs to and from.
        ports: how many ports to implement (1..6).
        msi: add a single-vector MSI capability (rule 2); INTx (INTA#) is always there.
        posted_writes: defer command fetching to the next ``poll()`` (rule 6).
        name: for traces.

    Raises:
        UsageError: ``ports`` is out of range.
    """

    s64a = True  # CAP.S64A: command lists, FIS areas and PRDs may sit above 4 GiB
    staggered_spin_up = True  # CAP.SSS: a link comes up when software sets PxCMD.SUD

    def __init__(
        self, memory: GuestMemory, *, ports: int = r.MAX_PORTS, msi: bool = False, posted_writes: bool = False,
        name: str = "ahci",
    ) -> None:
        check_memory("AhciController", memory)
        if not isinstance(ports, int) or not 1 <= ports <= r.MAX_PORTS:
            raise UsageError(f"an ICH9 AHCI controller has 1..{r.MAX_PORTS} ports, got {ports!r}")
        super().__init__(
            r.AHCI_VENDOR_ID, r.AHCI_DEVICE_ID, r.AHCI_CLASS, revision=r.AHCI_REVISION, interrupt_pin=1, name=name
        )
        self.memory = memory
        self.posted_writes = bool(posted_writes)
        self._posted: list[AhciPort] = []  # ports whose command engine waits for poll() (rule 6)
        self._waker: Callable[[], None] | None = None  # bound while a loop serves us (rule 7)
        self.resetting = False
        self._tags = itertools.count(1)
        self._ie_was = False
        self._intx_sink: object = None  # the sink update_irq last drove (see there)
        self.cap = (
            r.CAP_S64A | r.CAP_SNCQ | r.CAP_SSS | r.CAP_SAL | r.CAP_SCLO | r.SPEED_GEN2 << r.CAP_ISS_SHIFT
            | r.CAP_SAM | (r.NUM_SLOTS - 1) << r.CAP_NCS_SHIFT | (ports - 1)
        )
        self.implemented = (1 << ports) - 1
        self.registers = RegisterFile(self._table(), device="ahci")
        self.ports = [AhciPort(self, i, memory) for i in range(ports)]
        self.add_bar(r.AHCI_ABAR_INDEX, r.AHCI_ABAR_SIZE, self)
        if msi:
            self.add_msi(1, is_64bit=True, per_vector_mask=False)

    def _table(self) -> list[Reg]:
        ro = Access.RO
        return [
            Reg("CAP", r.CAP, access=ro, reset=self.cap),
            # §3.1.2: with CAP.SAM set, GHC.AE is read-only 1
            Reg("GHC", r.GHC, mask=r.GHC_IE | r.GHC_HR, reset=r.GHC_AE, on_read=self._read_ghc, on_write=self._write_ghc),
            Reg("IS", r.IS, access=Access.W1C, mask=self.implemented),
            Reg("PI", r.PI, access=ro, reset=self.implemented),
            Reg("VS", r.VS, access=ro, reset=r.VS_1_3),
            Reg("CCC_CTL", r.CCC_CTL, access=ro),  # CAP.CCCS = 0: no command completion coalescing
            Reg("CCC_PORTS", r.CCC_PORTS, access=ro),
            Reg("EM_LOC", r.EM_LOC, access=ro),  # CAP.EMS = 0: no enclosure management
            Reg("EM_CTL", r.EM_CTL, access=ro),
            Reg("CAP2", r.CAP2, access=ro),  # no BIOS handoff, no device sleep, no APST
            Reg("BOHC", r.BOHC, access=ro),  # reserved while CAP2.BOH is 0 (§3.1.11)
        ]

    def _read_ghc(self, stored: int) -> int:
        return stored | (r.GHC_HR if self.resetting else 0)

    def _write_ghc(self, old: int, new: int) -> int:
        if new & r.GHC_HR:
            self._hba_reset()
            return r.GHC_AE  # the reset clears GHC.IE too
        return new

    # -- BAR5 (BusDevice) -----------------------------------------------------------------

    @property
    def dma_allowed(self) -> bool:
        """PCI Command.MASTER."""
        return bool(super().dma_allowed)

    def read(self, offset: int, size: int) -> int:
        """A guest read of ABAR (rule 1), after any posted work (rule 6)."""
        if self._posted:
            self.poll()
        if size == 8:
            return self.read(offset, 4) | self.read(offset + 4, 4) << 32
        port = self._port_at(offset)
        if port is not None:
            return port.read(offset & (r.PORT_STRIDE - 1), size)
        return self.registers.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write of ABAR (rule 1), then a poll (rule 3) and an interrupt update.

        With posted writes (rule 6), earlier posted work runs first; if this write posts
        work, only the interrupt state is updated and the poll waits for the VMM.
        """
        if size == 8:
            self.write(offset, 4, value & 0xFFFF_FFFF)
            self.write(offset + 4, 4, value >> 32)
            return
        if self._posted:
            self.poll()
        port = self._port_at(offset)
        if port is not None:
            port.write(offset & (r.PORT_STRIDE - 1), size, value)
        else:
            self.registers.write(offset, size, value)
        if self._posted:
            self.update_irq()
        else:
            self.poll()

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A config-space write, after any posted work (rule 6: e.g. bus mastering)."""
        if self._posted:
            self.poll()
        super().config_write(offset, size, value)

    def post(self, port: AhciPort) -> bool:
        """Called by a port whose command engine has work: ``True`` if it was posted for
        the next ``poll()`` (rule 6), ``False`` if the port must run it now."""
        if not self.posted_writes:
            return False
        if port not in self._posted:
            self._posted.append(port)
        return True

    @property
    def posted(self) -> bool:
        """Posted work waits for ``poll()`` (rule 6)."""
        return bool(self._posted)

    def _port_at(self, offset: int) -> AhciPort | None:
        if offset < r.PORT_BASE:
            return None
        index = (offset - r.PORT_BASE) // r.PORT_STRIDE
        return self.ports[index] if index < len(self.ports) else None

    # -- interrupts (rule 2) --------------------------------------------------------------

    def update_irq(self) -> None:
        """Latch IS from the ports and drive INTx or send MSI."""
        pending = 0
        for port in self.ports:
            if port.interrupt_pending:
                pending |= 1 << port.index
        values = self.registers.values  # by offset: this runs on every poll and write
        before = values[r.IS]
        status = before | pending
        values[r.IS] = status
        enabled = bool(values[r.GHC] & r.GHC_IE)
        rising = enabled and not self._ie_was
        self._ie_was = enabled
        if self.msi_enabled:
            self._drive(False)
            if enabled and (status & ~before or rising and status):
                self.signal(0)
            return
        self._drive(enabled and bool(status))

    def _drive(self, level: bool) -> None:
        # Driving the level the pin already has, into the same sink, changes nothing
        # (PciFunction re-drives by itself when INTx Disable toggles); skip the config work.
        if level == self._intx_level and self.intx is self._intx_sink:
            return
        self._intx_sink = self.intx
        self.set_intx(level)

    # -- HBA reset (rule 4) ---------------------------------------------------------------

    def _hba_reset(self) -> None:
        if _tp_reset.on:
            _tp_reset.emit(busy=self.busy)
        self.registers["IS"] = 0
        self.resetting = True
        for port in self.ports:
            port.hba_reset()
        self._finish_reset_if_idle()

    def _finish_reset_if_idle(self) -> None:
        if self.resetting and not self.busy:
            self.resetting = False
            for port in self.ports:
                port.after_hba_reset()

    def new_tag(self) -> int:
        """A backend request tag unique within this controller."""
        return next(self._tags)

    # -- host side ------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Some port has backend requests in flight."""
        return any(port.busy for port in self.ports)

    def attach(self, port: int, drive: Drive | None) -> None:
        """Connect ``drive`` (an ``AtaDisk`` or ``AtapiCdrom``) to ``port``, or disconnect it.

        Raises:
            UsageError: no such port, or the port has requests in flight.
        """
        if self._posted:
            self.poll()
        target = self._host_port(port)
        target.attach(drive)
        if self._waker is not None:
            self._hook(target)
        self.update_irq()

    def change_medium(self, port: int, medium: BlockBackend | None) -> None:
        """Insert ``medium`` into (or, with None, remove it from) the CD drive on ``port``.

        Raises:
            UsageError: no such port, no ATAPI drive there, or requests in flight.
        """
        if self._posted:
            self.poll()
        drive = self._host_port(port).drive
        if not isinstance(drive, AtapiCdrom):
            raise UsageError(f"port {port} has no ATAPI drive")
        if medium is None:
            drive.remove()
        else:
            drive.insert(medium)
            if self._waker is not None:
                medium.set_notify(self._waker)

    def _host_port(self, port: int) -> AhciPort:
        if not isinstance(port, int) or not 0 <= port < len(self.ports):
            raise UsageError(f"port must be 0..{len(self.ports) - 1}, got {port!r}")
        target = self.ports[port]
        if target.busy:
            raise UsageError(f"port {port} has requests in flight; poll() until it is idle")
        return target

    # -- serving (devmodels.runtime.ServedDevice, rule 7) ----------------------------------

    def bind_waker(self, wake: Callable[[], None] | None) -> None:
        """Backends announce completions through ``wake`` (rule 7)."""
        self._waker = wake
        for port in self.ports:
            self._hook(port)

    def _hook(self, port: AhciPort) -> None:
        backend = port.drive.backend if port.drive is not None else None
        if backend is not None:
            backend.set_notify(self._waker)

    def run_posted(self) -> bool:
        """``poll()`` (rule 7): posted work and completions; whether there was any."""
        had_posted = bool(self._posted)
        return bool(self.poll()) or had_posted

    def quiesce(self) -> None:
        """Run posted work and wait for every backend request in flight (rule 5)."""
        self.poll()
        for _ in range(_POLL_ROUNDS):
            if not self.busy:
                return
            for port in self.ports:
                for backend in port.backends():
                    backend.drain()
            self.poll()
        raise HostError("the AHCI backends kept requests in flight through quiesce()")

    def poll(self) -> int:
        """Run posted work (rule 6), collect backend completions and finish commands
        (rule 3); return how many completions were handled.

        Work is bounded: at most ``_POLL_ROUNDS`` rounds of ``completions()`` per backend.
        """
        while self._posted:
            self._posted.pop(0).run()
        handled = 0
        for _ in range(_POLL_ROUNDS):
            backends: dict[int, BlockBackend] = {}
            for port in self.ports:
                if port.busy:
                    for backend in port.backends():
                        backends[id(backend)] = backend
            if not backends:
                break
            progress = 0
            for backend in backends.values():
                for completion in backend.completions():
                    progress += 1
                    for port in self.ports:
                        if port.complete(completion):
                            break
                    else:
                        if _tp_stray.on:
                            _tp_stray.emit(tag=completion.tag)
            handled += progress
            if not progress:
                break
        self._finish_reset_if_idle()
        self.update_irq()
        return handled

    def reset(self) -> None:
        """Power-on reset of the function (PCI config and HBA), keeping attached drives.

        Requests in flight are cancelled; as with GHC.HR, GHC.HR reads 1 until the backend
        has returned them (rule 4), so it is safe at any time (mpqemu DEVICE_RESET).
        """
        if self._posted:
            self.poll()
        self.reset_function()
        self.registers.reset()
        self._hba_reset()
        self._ie_was = False
        self.update_irq()

    # -- snapshots (rule 5) ---------------------------------------------------------------

    snapshot_kind = "ahci"
    state_type = AhciState

    def _in_flight(self) -> str | None:
        if self._posted:
            return "posted command work pending"
        if self.busy:
            return "backend requests in flight"
        if self.resetting:
            return "an HBA reset waiting for backend requests"
        return None

    def constructor_args(self) -> AhciArgs:
        """The constructor arguments a snapshot carries, with the drives attached now."""
        return constructor_args(self)

    def state(self) -> AhciState:
        """Snapshot the controller at the quiesce point (rule 5).

        Raises:
            UsageError: work is in flight; ``quiesce()`` first.
        """
        require_quiesced(self.name, self._in_flight())
        return capture_state(self)

    def restore(self, state: AhciState) -> None:
        """Validate ``state`` completely, then apply it.

        Raises:
            SnapshotError: a field is inconsistent with this controller; nothing changed.
            UsageError: the controller has work in flight; ``quiesce()`` first.
        """
        in_flight = self._in_flight()
        if in_flight is not None:
            raise UsageError(f"{self.name}: restore() with {in_flight}; call quiesce() first")
        check_state(self, state)
        apply_state(self, state)
        self._ie_was = bool(self.registers["GHC"] & r.GHC_IE)
        self.update_irq()

    @classmethod
    def from_state(cls, state: AhciState, memory: GuestMemory, media: Sequence[BlockBackend | None] = (), *,
                   posted_writes: bool = False, name: str = "ahci") -> AhciController:
        """A controller built from ``state.args``, its drives around ``media`` (one per port,
        in port order: ``None`` for an empty port or an empty CD tray; missing entries are
        ``None``), with ``state`` restored (rule 5; ``devmodels._state`` rule 5).

        Raises:
            SnapshotError: the args, the media or the state do not fit together.
        """
        check_type("args", getattr(state, "args", None), AhciArgs)
        args = state.args
        check_type("args.drives", args.drives, tuple)
        if len(media) > len(args.drives):
            raise SnapshotError("args.drives", f"{len(media)} media for {len(args.drives)} ports")
        media = tuple(media) + (None,) * (len(args.drives) - len(media))
        try:
            hba = cls(memory, ports=args.ports, msi=args.msi, posted_writes=posted_writes, name=name)
            if len(args.drives) != len(hba.ports):
                raise SnapshotError("args.drives", f"{len(args.drives)} drives for {len(hba.ports)} ports")
            for port, (drive, medium) in enumerate(zip(args.drives, media, strict=True)):
                if isinstance(drive, AtaDiskArgs):
                    if medium is None:
                        raise SnapshotError(f"args.drives[{port}]", "an ATA disk needs a backend")
                    hba.attach(port, AtaDisk(medium, model=drive.model, serial=drive.serial, firmware=drive.firmware,
                                             rotational=drive.rotational))
                elif isinstance(drive, AtapiArgs):
                    hba.attach(port, AtapiCdrom(medium, model=drive.model, serial=drive.serial, firmware=drive.firmware,
                                                vendor=drive.vendor, product=drive.product, revision=drive.revision))
                elif drive is not None:
                    raise SnapshotError(f"args.drives[{port}]", f"not a drive: {type(drive).__name__}")
                elif medium is not None:
                    raise SnapshotError(f"args.drives[{port}]", "a medium for a port without a drive")
        except SnapshotError:
            raise
        except UsageError as exc:
            raise SnapshotError("args", str(exc)) from None
        hba.restore(state)
        return hba
