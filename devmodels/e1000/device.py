"""The Intel 82540EM Gigabit Ethernet controller as a sans-IO PCI function.

The device (8086:100E, class 02:00:00, subsystem 8086:001E) exposes BAR0, 128 KiB of
memory-mapped registers, and BAR1, the 64-byte I/O window with IOADDR/IODATA (SDM §13.2),
an INTA# pin, the PCI Power Management capability and, only when the VMM asks for it, an
MSI capability (the real 82540EM has none).

Rules:

1. Register accesses go through one table (``regs.REGISTERS``, the truth about every
   register's access kind, plus the hooks of ``_HOOKS``, whose names are checked against the
   table at import) and ``devmodels.RegisterFile``; unknown offsets read 0 and are logged
   once.
2. Inputs are method calls: BAR accesses, ``receive_frame`` / ``receive_pending`` (frames
   from the wire), ``tick(now_ns)`` (time), ``set_link``. Outputs go to injected objects:
   the ``NetBackend`` (``send``), the PCI INTx/MSI sinks, guest memory. The device never
   reads a clock, opens anything or blocks.
3. Transmission starts when the driver writes TDT or sets TCTL.EN; reception happens when
   the VMM hands in a frame. With MAC loopback (RCTL.LBM = 01) or PHY loopback (BMCR bit
   14) transmitted frames come back to the receiver instead of the backend.
   With ``posted_writes=True`` those writes (and RDT/RCTL.EN, which pull waiting frames)
   only note the ring work; it runs in ``run_posted()``, which the VMM calls once the
   guest's access has completed, as a posted PCI write lets the CPU go on while the NIC
   fetches descriptors (``devmodels.runtime`` ``ServedDevice`` rule 4). Every later BAR
   access and reset runs or drops posted work first, so the order of effects the driver
   can observe is unchanged; ``quiesce()`` runs it, and ``state()`` refuses while any is
   pending (``devmodels._state`` rule 1).
4. DMA happens only while PCI Command.MASTER is set.
5. Guest errors never escape an entry point (see ``errors.py``); ``UsageError`` is raised
   only for bad constructor arguments or snapshots, and by ``state()`` before ``quiesce()``.
6. Served by a loop (``devmodels.runtime.ServedDevice``), the device asks for its
   backend's descriptor only while a frame would be written (``rx_ready``), so a full
   receive ring leaves frames in the backend instead of spinning the loop; a backend
   without a descriptor wakes the loop through the bound waker instead.
7. Snapshots (``devmodels._state``): ``quiesce()`` then ``state()``; the state carries
   ``E1000Args``; ``restore`` refuses a state of an e1000 built differently, and
   ``E1000.from_state`` builds one from the state instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..args import check_implements, check_memory
from .._errors import SnapshotError, UsageError
from .._memory import GuestMemory
from .._regs import Reg, RegisterFile, check_hook_names
from .._state import check_type, require_quiesced
from .._trace import tracepoint
from ..backends import NetBackend
from ..pci import BarKind, PciFunction
from ..pci.defs import PCI_CAP_ID_PM
from . import regs as r
from .eeprom import Eeprom, MicrowirePort, default_image
from .interrupts import InterruptUnit
from .offload import TsoContext
from .phy import M88Phy
from .rx import RxEngine, RxResult
from .state import CONTEXT_FIELDS, STATE_VERSION, E1000Args, E1000State, check_state
from .stats import Stats
from .tx import TxEngine

__all__ = ["E1000", "DEFAULT_MAC"]

DEFAULT_MAC = bytes.fromhex("525400123456")

_tp_link = tracepoint("e1000.link")
_tp_tx_backend = tracepoint("e1000.tx_backend_full")

# PCI Power Management (PCI PM 1.1): version 2, device-specific initialisation; no PME.
_PMC = 0b0000_0000_0010_0010
_PMCSR_WRITABLE = 0b0000_0000_0000_0011  # PowerState


class _Bar0:
    """BAR0: the register file, with 8-byte accesses split into two dwords; deferred ring
    work runs before any access (rule 3)."""

    def __init__(self, device: E1000) -> None:
        self._device = device
        self._registers = device.registers

    def read(self, offset: int, size: int) -> int:
        if self._device._posted:
            self._device._run_posted_ring_work()
        if size == 8:
            return self._registers.read(offset, 4) | self._registers.read(offset + 4, 4) << 32
        return self._registers.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if self._device._posted:
            self._device._run_posted_ring_work()
        if size == 8:
            self._registers.write(offset, 4, value & 0xFFFF_FFFF)
            self._registers.write(offset + 4, 4, value >> 32)
            return
        self._registers.write(offset, size, value)


class _IoWindow:
    """BAR1: IOADDR selects a register, IODATA reads or writes it (SDM §13.2.1)."""

    def __init__(self, device: E1000) -> None:
        self._device = device

    def read(self, offset: int, size: int) -> int:
        device = self._device
        if device._posted:
            device._run_posted_ring_work()
        if size != 4:
            return 0
        if offset == r.IOADDR:
            return device.io_addr
        if offset == r.IODATA:
            return device.registers.read(device.io_addr, 4)
        return 0  # 0x08-0x3F are reserved

    def write(self, offset: int, size: int, value: int) -> None:
        device = self._device
        if device._posted:
            device._run_posted_ring_work()
        if size != 4:
            return
        if offset == r.IOADDR:
            device.io_addr = value & 0x1_FFFC
        elif offset == r.IODATA:
            device.registers.write(device.io_addr, 4, value)


class E1000(PciFunction):
    """An 82540EM.

    Args:
        memory: guest RAM the device DMAs into and out of.
        backend: where transmitted frames go and received ones come from; ``None``
            drops transmitted frames (a cable to nowhere).
        mac: the MAC address written into the default EEPROM image.
        eeprom: a complete 64-word image to use instead (its checksum is not fixed up).
        revision: PCI revision ID (the 82540EM reports 0 or 3).
        msi: offer a 64-bit, one-vector MSI capability (not on real 82540EM hardware).
        mitigation: honour ITR and the RDTR/RADV/TIDV/TADV timers; the VMM must then call
            ``tick`` by ``next_deadline()``. ``False`` raises every interrupt at once.
        link: whether the cable is connected at power-on.
        posted_writes: leave the ring work register writes start to ``run_posted()``
            (rule 3); the VMM must call it after completing each guest access.
        name: for traces.

    Raises:
        UsageError: a bad memory, backend, MAC address, EEPROM image or revision.
    """

    def __init__(
        self,
        memory: GuestMemory,
        backend: NetBackend | None = None,
        *,
        mac: bytes = DEFAULT_MAC,
        eeprom: Sequence[int] | None = None,
        revision: int = 0,
        msi: bool = False,
        mitigation: bool = True,
        link: bool = True,
        posted_writes: bool = False,
        name: str = "e1000",
    ) -> None:
        check_memory("E1000", memory)
        check_implements("E1000", "backend", backend, NetBackend, optional=True)
        if revision not in (0, 3):
            raise UsageError(f"the 82540EM reports revision 0 or 3, got {revision}")
        super().__init__(
            r.E1000_VENDOR_ID,
            r.E1000_DEV_ID_82540EM,
            r.E1000_CLASS_ETHERNET,
            revision=revision,
            subsystem_vendor_id=r.E1000_SUBSYS_VENDOR_ID,
            subsystem_id=r.E1000_SUBSYS_ID,
            name=name,
        )
        self._args = E1000Args(bytes(mac), None if eeprom is None else tuple(eeprom), revision, bool(msi),
                               bool(mitigation), bool(link))
        self.memory = memory
        self.backend = backend
        self.posted_writes = bool(posted_writes)
        self._posted = False  # some posted ring work is pending (rule 3)
        self._waker: Callable[[], None] | None = None  # bound while a loop serves us (rule 6)
        self._tx_due = False
        self._pull_due = False
        words = (
            list(eeprom)
            if eeprom is not None
            else default_image(
                bytes(mac),
                device_id=r.E1000_DEV_ID_82540EM,
                vendor_id=r.E1000_VENDOR_ID,
                subsystem_id=r.E1000_SUBSYS_ID,
                subsystem_vendor_id=r.E1000_SUBSYS_VENDOR_ID,
            )
        )
        self.eeprom = Eeprom(words)
        self.eeprom_port = MicrowirePort(self.eeprom)
        self.phy = M88Phy(link)
        self.io_addr = 0
        self.registers = RegisterFile(self._table(), device="e1000")
        self.irq = InterruptUnit(self.registers, self, mitigation)
        self.stats = Stats(self.registers)
        self.tx = TxEngine(self.registers, memory, self.irq, self.stats, self._emit, lambda: self.dma_allowed)
        self.rx = RxEngine(self.registers, memory, self.irq, self.stats, lambda: self.dma_allowed)
        self.add_bar(0, r.BAR0_SIZE, _Bar0(self))
        self.add_bar(1, r.BAR1_SIZE, _IoWindow(self), BarKind.IO)
        pm = self.caps.add(PCI_CAP_ID_PM, 8, offset=r.PM_CAP_OFFSET)
        self.config.set(pm + 2, 2, _PMC)
        self.config.set_writable(pm + 4, 2, _PMCSR_WRITABLE)
        if msi:
            self.add_msi(1, is_64bit=True, per_vector_mask=False)
        self._link_reported = self.phy.link_up
        self._rx_waiting = False
        self._reset_mac()

    # -- the register table --------------------------------------------------------------

    def _table(self) -> list[Reg]:
        """The rows of ``regs.REGISTERS`` (the truth about every access kind) with this
        device's hooks bound (``_HOOKS``, checked against the table at import: rule 1)."""
        hooks: dict[str, dict[str, Callable[..., int]]] = {
            name: {kind: function.__get__(self) for kind, function in kinds.items()} for name, kinds in _HOOKS.items()
        }
        for name in r.STATS_64:
            hooks[name + "H"] = {"on_read": self._stats_high_reader(name)}
        return [
            Reg(spec.name, spec.offset, 4, spec.access, spec.mask, spec.reset, partial=True,
                **hooks.get(spec.name, {}))
            for spec in r.REGISTERS
        ]

    def _stats_high_reader(self, name: str):  # type: ignore[no-untyped-def]
        low = name + "L"

        def read(stored: int) -> int:
            # SDM §13.7: reading the high half clears the whole 64-bit counter.
            self.registers[low] = 0
            return stored

        return read

    # -- hooks ---------------------------------------------------------------------------

    def _write_ctrl(self, old: int, new: int) -> int:
        if new & r.CTRL_RST:
            # SDM §13.4.1: global reset, self-clearing; PCI config and the PHY survive.
            self._reset_mac()
            return self.registers["CTRL"]
        if new & r.CTRL_PHY_RST and not old & r.CTRL_PHY_RST:
            self.phy.reset()
            self._check_link()
        return new

    def _read_status(self, stored: int) -> int:
        if not self.phy.link_up:
            return r.STATUS_FD | r.STATUS_SPEED_1000
        return r.STATUS_FD | r.STATUS_LU | r.STATUS_SPEED_1000 | r.STATUS_ASDV_1000

    def _write_eecd(self, old: int, new: int) -> int:
        self.eeprom_port.pins(bool(new & r.EECD_SK), bool(new & r.EECD_CS), bool(new & r.EECD_DI))
        return new

    def _read_eecd(self, stored: int) -> int:
        value = (stored & ~(r.EECD_DO | r.EECD_GNT | r.EECD_SIZE)) | r.EECD_PRES
        if stored & r.EECD_REQ:
            value |= r.EECD_GNT  # no other agent competes for the EEPROM
        if self.eeprom_port.do:
            value |= r.EECD_DO
        return value

    def _write_eerd(self, old: int, new: int) -> int:
        if not new & r.EERD_START:
            return old & ~r.EERD_START
        address = (new >> r.EERD_ADDR_SHIFT) & 0xFF
        data = self.eeprom.read(address) if address < len(self.eeprom.words) else 0
        return (address << r.EERD_ADDR_SHIFT) | r.EERD_DONE | data << r.EERD_DATA_SHIFT

    def _write_mdic(self, old: int, new: int) -> int:
        result = self.phy.mdic_access(new)
        self._check_link()
        if result & r.MDIC_INT_EN:
            self.irq.raise_cause(r.ICR_MDAC)
        return result

    def _read_icr(self, stored: int) -> int:
        return self.irq.read_icr(stored)

    def _write_icr(self, old: int, new: int) -> int:
        self.registers["ICR"] = new
        self.irq.update()
        return new

    def _write_ics(self, old: int, new: int) -> int:
        self.irq.raise_cause(new)
        return 0

    def _write_ims(self, old: int, new: int) -> int:
        self.registers["IMS"] = new
        self.irq.update()
        return new

    def _write_imc(self, old: int, new: int) -> int:
        self.registers["IMS"] = self.registers["IMS"] & ~new
        self.irq.update()
        return 0

    def _write_rctl(self, old: int, new: int) -> int:
        self.registers["RCTL"] = new
        if new & r.RCTL_EN and not old & r.RCTL_EN:
            self._rx_waiting = True
            self._start_pull()
        return new

    def _write_tctl(self, old: int, new: int) -> int:
        self.registers["TCTL"] = new
        if new & r.TCTL_EN:
            self._start_tx()
        return new

    def _write_tdt(self, old: int, new: int) -> int:
        self.registers["TDT"] = new
        self._start_tx()
        return new

    def _write_rdt(self, old: int, new: int) -> int:
        self.registers["RDT"] = new
        self._start_pull()
        return new

    def _start_tx(self) -> None:
        if self.posted_writes:
            self._tx_due = self._posted = True
        else:
            self.tx.process()

    def _start_pull(self) -> None:
        if self.posted_writes:
            self._pull_due = self._posted = True
        else:
            self._pull()

    @property
    def posted(self) -> bool:
        """Whether ring work waits for ``run_posted`` (rule 3)."""
        return self._posted

    def _run_posted_ring_work(self) -> bool:
        """Run the ring work register writes left pending (rule 3): transmit, then take
        waiting frames. Returns whether there was any; cheap when there is none."""
        if not self._posted:
            return False
        self._posted = False
        if self._tx_due:
            self._tx_due = False
            self.tx.process()
        if self._pull_due:
            self._pull_due = False
            self._pull()
        return True

    def _read_pba(self, stored: int) -> int:
        """PBA (SDM §13.4.25): RXA is programmed in KB; TXA (bits 31:16) is what remains of
        the 64 KB packet buffer."""
        rxa = min(stored & 0x3F, 64)
        return (64 - rxa) << 16 | (stored & 0xFFFF)

    def _write_rdtr(self, old: int, new: int) -> int:
        if new & r.RDTR_FPD:
            self.irq.rx_flush()
        return new & ~r.RDTR_FPD

    # -- reset ---------------------------------------------------------------------------

    def _reset_mac(self) -> None:
        """CTRL.RST: registers to reset values, RAL0/RAH0 from the EEPROM (SDM §5.6.1)."""
        self.irq.reset()
        self.registers.reset()
        self.tx.reset()
        self.eeprom_port.reset()
        self.eeprom.write_enabled = False
        self._posted = self._tx_due = self._pull_due = False  # the rings are gone
        mac = self.eeprom.mac
        self.registers["RAL[0]"] = int.from_bytes(mac[:4], "little")
        self.registers["RAH[0]"] = int.from_bytes(mac[4:], "little") | r.RAH_AV
        self._rx_waiting = False

    def reset(self) -> None:
        """A PCI function-level / power-on reset: config space, MAC and PHY."""
        self.reset_function()
        self.phy.reset()
        self._reset_mac()
        self.io_addr = 0
        self._link_reported = self.phy.link_up

    # -- link ----------------------------------------------------------------------------

    def set_link(self, up: bool) -> None:
        """Connect or disconnect the cable; a change raises LSC (SDM §3.4.1)."""
        self.phy.set_cable(bool(up))
        self._check_link()

    @property
    def link_up(self) -> bool:
        """What STATUS.LU reports."""
        return self.phy.link_up

    def _check_link(self) -> None:
        up = self.phy.link_up
        if up != self._link_reported:
            self._link_reported = up
            if _tp_link.on:
                _tp_link.emit(up=up)
            self.irq.raise_cause(r.ICR_LSC)

    # -- frames --------------------------------------------------------------------------

    @property
    def loopback(self) -> bool:
        """Whether transmitted frames return to the receiver (rule 3)."""
        return (self.registers["RCTL"] & r.RCTL_LBM_MASK) == r.RCTL_LBM_MAC or self.phy.loopback

    def _emit(self, frame: bytearray) -> None:
        if self.loopback:
            self.rx.receive(frame)
            return
        if not self.phy.link_up or self.backend is None:
            return  # no carrier: the frame leaves the MAC and goes nowhere
        if not self.backend.send(frame) and _tp_tx_backend.on:
            _tp_tx_backend.emit(length=len(frame))

    def receive_frame(self, frame: bytes | bytearray | memoryview) -> RxResult:
        """A frame (without FCS) arrives from the wire; it is delivered, filtered or dropped.

        Frames that find no free descriptor are dropped and counted (MPC, RNBC, RXO).
        """
        if not self.phy.link_up:
            return RxResult.DISABLED
        return self.rx.receive(frame)

    def rx_ready(self) -> bool:
        """Whether a maximum-size frame would be written now (the VMM may pull one)."""
        return self.phy.link_up and self.rx.ready()

    def receive_pending(self, budget: int = 64) -> int:
        """Pull up to ``budget`` frames from the backend while descriptors are free.

        Frames stay in the backend (which bounds and counts its own drops) while the ring
        is full, so a slow guest loses nothing here. Returns the frames taken.
        """
        if self.backend is None or budget <= 0:
            return 0
        taken = 0
        while taken < budget and self.rx_ready():
            frames = self.backend.receive(1)
            if not frames:
                self._rx_waiting = False
                return taken
            self.rx.receive(frames[0])
            taken += 1
        self._rx_waiting = taken == budget or not self.rx_ready()
        return taken

    def _pull(self) -> None:
        """The driver made room: take what the backend holds (QEMU's flush on RDT)."""
        if self._rx_waiting:
            self.receive_pending()

    # -- time ----------------------------------------------------------------------------

    def tick(self, now_ns: int) -> None:
        """Advance the device's notion of time and fire expired timers."""
        self.irq.tick(now_ns)

    def next_deadline(self) -> int | None:
        """When the VMM must call ``tick`` next (absolute ns), or ``None``."""
        return self.irq.next_deadline()

    # -- serving (devmodels.runtime.ServedDevice, rule 6) ----------------------------------

    def bind_waker(self, wake: Callable[[], None] | None) -> None:
        """A backend without a descriptor wakes the loop through ``wake`` (rule 6)."""
        if self.backend is not None and self.backend.fileno() is None:
            self._waker = wake
            self.backend.set_notify(wake)

    def watched_fds(self) -> Mapping[int, Callable[[], None]]:
        """The backend's descriptor while a frame would be written (rule 6)."""
        if self.backend is None or not self.rx_ready():
            return {}
        fd = self.backend.fileno()
        return {fd: self._receive_ready} if fd is not None else {}

    def _receive_ready(self) -> None:
        self.receive_pending()

    def run_posted(self) -> bool:
        """Run posted ring work (rule 3), and take frames a descriptor-less backend
        announced through the waker (rule 6); whether there was any work."""
        ran = self._run_posted_ring_work()
        if self._waker is not None and self.rx_ready():
            ran = bool(self.receive_pending()) or ran
        return ran

    def quiesce(self) -> None:
        """Nothing the e1000 does outlives a call but posted work: run it (rule 3), so that
        ``state()`` can be taken."""
        self._run_posted_ring_work()

    # -- snapshot (devmodels._state) ---------------------------------------------------------

    snapshot_kind = "e1000"
    state_type = E1000State

    def constructor_args(self) -> E1000Args:
        """The constructor arguments a snapshot carries (``devmodels._state`` rule 3)."""
        return self._args

    @classmethod
    def from_state(cls, state: E1000State, memory: GuestMemory, backend: NetBackend | None = None, *,
                   posted_writes: bool = False, name: str = "e1000") -> E1000:
        """An e1000 built from ``state.args`` with the restorer's ``backend``, ``state``
        restored (``devmodels._state`` rule 5).

        Raises:
            SnapshotError: the args or the state are refused.
        """
        check_type("args", getattr(state, "args", None), E1000Args)
        a = state.args
        try:
            device = cls(memory, backend, mac=a.mac, eeprom=a.eeprom, revision=a.revision, msi=a.msi,
                         mitigation=a.mitigation, link=a.link, posted_writes=posted_writes, name=name)
        except UsageError as exc:
            raise SnapshotError("args", str(exc)) from None
        device.restore(state)
        return device

    def state(self) -> E1000State:
        """The device's state as plain data, at the quiesce point (``devmodels._state``
        rule 1).

        Raises:
            UsageError: posted ring work has not run; ``quiesce()`` first.
        """
        require_quiesced(self.name, "posted ring work pending" if self._posted else None)
        regs, cable, latched, an = self.phy.snapshot()
        now, asserted, last, deadlines = self.irq.snapshot()
        return E1000State(
            version=STATE_VERSION,
            args=self._args,
            pci=self.pci_state(),
            registers=tuple(sorted(self.registers.values.items())),
            io_addr=self.io_addr,
            eeprom=tuple(self.eeprom.words),
            eeprom_write_enabled=self.eeprom.write_enabled,
            eeprom_port=self.eeprom_port.snapshot(),
            phy_regs=regs,
            phy_cable=cable,
            phy_link_latched_low=latched,
            phy_an_complete=an,
            link_reported=self._link_reported,
            irq_now=now,
            irq_asserted=asserted,
            irq_last_assert=last,
            irq_deadlines=deadlines,
            tx_context_normal=_context_tuple(self.tx.ctx_normal),
            tx_context_tso=_context_tuple(self.tx.ctx_tso),
        )

    def restore(self, state: E1000State) -> None:
        """Validate ``state`` completely, then apply it.

        Raises:
            SnapshotError: any field is inconsistent; nothing was applied.
        """
        values = check_state(state, self._args, self.registers)
        self.check_pci_state(state.pci)
        self.load_pci_state(state.pci)
        self.registers.values = values
        self.io_addr = state.io_addr
        self.eeprom.words = list(state.eeprom)
        self.eeprom.write_enabled = state.eeprom_write_enabled
        self.eeprom_port.load(state.eeprom_port)
        self.phy.load(state.phy_regs, state.phy_cable, state.phy_link_latched_low, state.phy_an_complete)
        self._link_reported = state.link_reported
        self._posted = self._tx_due = self._pull_due = False  # a snapshot never holds any
        self.irq.load(state.irq_now, state.irq_asserted, state.irq_last_assert, state.irq_deadlines)
        self.tx.ctx_normal = _context_from(state.tx_context_normal)
        self.tx.ctx_tso = _context_from(state.tx_context_tso)
        self._rx_waiting = True
        if not (self.msi_enabled or self.msix_enabled):
            self.set_intx(state.irq_asserted)


# Register name -> hook kind -> E1000 method (rule 1). Checked against the table here, at
# import: a name that is not a register of ``regs.REGISTERS`` cannot drop its hook silently.
_HOOKS: dict[str, dict[str, Callable[..., int]]] = {
    "CTRL": {"on_write": E1000._write_ctrl},
    "STATUS": {"on_read": E1000._read_status},
    "EECD": {"on_write": E1000._write_eecd, "on_read": E1000._read_eecd},
    "EERD": {"on_write": E1000._write_eerd},
    "MDIC": {"on_write": E1000._write_mdic},
    "ICR": {"on_read": E1000._read_icr, "on_write": E1000._write_icr},
    "ICS": {"on_write": E1000._write_ics},
    "IMS": {"on_write": E1000._write_ims},
    "IMC": {"on_write": E1000._write_imc},
    "RCTL": {"on_write": E1000._write_rctl},
    "TCTL": {"on_write": E1000._write_tctl},
    "TDT": {"on_write": E1000._write_tdt},
    "RDT": {"on_write": E1000._write_rdt},
    "RDTR": {"on_write": E1000._write_rdtr},
    "PBA": {"on_read": E1000._read_pba},
}
check_hook_names((spec.name for spec in r.REGISTERS), _HOOKS, "e1000")


def _context_tuple(ctx: TsoContext) -> tuple[int, ...]:
    return tuple(getattr(ctx, name) for name, _ in CONTEXT_FIELDS)


def _context_from(values: tuple[int, ...]) -> TsoContext:
    return TsoContext(**{name: value for (name, _), value in zip(CONTEXT_FIELDS, values, strict=True)})
