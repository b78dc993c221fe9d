"""A PCI function: type-0 config space, BARs, INTx, MSI and MSI-X (PCI 3.0 §6).

Rules:

1. A device model subclasses ``PciFunction`` (or builds one) and declares, in its
   constructor, its IDs, its BARs (each with a ``BusDevice`` handling accesses inside it)
   and its capabilities. ``realize()`` (called by the host at plug time, or lazily)
   records that config image as the power-on/reset image.
2. The VMM side reaches the function only through ``config_read``/``config_write`` (what a
   config cycle, the mpqemu proxy or vfio-user delivers) and ``bar_read``/``bar_write`` with
   offsets inside the BAR. BAR sizing follows PCI 3.0 §6.2.5.1 exactly through the
   writable masks: writing all-ones reads back ``~(size-1)`` plus the RO type bits.
3. Decode is gated by the Command register: ``bar_address`` is ``None`` while the BAR's
   space is disabled. Whoever maps BARs (the host bridge, a proxy) subscribes with
   ``add_mapping_listener`` and is told after any config write that may move a BAR.
4. Interrupts leave through injected sinks (``intx`` level sink, ``msi_sink``), set by the
   host at plug time. ``signal(vector)`` uses MSI-X, else MSI, else reports ``False`` so
   the device drives INTx with ``set_intx``. INTx honours Command.INTX_DISABLE and reports
   Status.INTERRUPT (§6.2.3). MSI/MSI-X messages are memory writes, so they leave only while
   Bus Master Enable is set; otherwise they are dropped with a ``pci.msi_blocked`` event.
5. ``dma_allowed`` is Command.MASTER: a device must not start DMA while it is clear.
6. Every function is a ``devmodels.runtime.ServedDevice``: by default one with no backends,
   timers or posted work; devices that have them override those methods.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ..runtime import ServedDeviceDefaults
from ._caps import CapabilityList
from ._config import ConfigSpace
from .defs import (
    PCI_BASE_ADDRESS_0,
    PCI_BASE_ADDRESS_MEM_PREFETCH,
    PCI_BASE_ADDRESS_MEM_TYPE_64,
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_CACHE_LINE_SIZE,
    PCI_CLASS_PROG,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_IO,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_COMMAND_PARITY,
    PCI_COMMAND_SERR,
    PCI_CONFIG_SPACE_SIZE,
    PCI_DEVICE_ID,
    PCI_EXP_CONFIG_SPACE_SIZE,
    PCI_HEADER_TYPE,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_LATENCY_TIMER,
    PCI_NUM_BARS,
    PCI_REVISION_ID,
    PCI_STATUS,
    PCI_STATUS_INTERRUPT,
    PCI_STATUS_W1C,
    PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID,
    PCI_VENDOR_ID,
)
from ._msi import MsiCapability
from ._msix import MsixCapability
from .._bus import BusDevice
from .._errors import SnapshotError, UsageError
from .._irq import LevelSink, MsiSink, NullLevelSink, NullMsiSink
from .._state import check_bool, check_bytes, check_type, check_version
from .._trace import tracepoint

__all__ = ["BarKind", "Bar", "PciFunction", "PciFunctionState", "MappingListener"]

_tp_bar_unhandled = tracepoint("pci.bar_unhandled")
_tp_msi_blocked = tracepoint("pci.msi_blocked")


class BarKind(enum.Enum):
    """What a BAR decodes."""

    MEM32 = "mem32"
    MEM64 = "mem64"
    IO = "io"


@dataclass(frozen=True)
class Bar:
    """A BAR's declaration.

    Attributes:
        index: 0..5 (a 64-bit BAR also uses ``index + 1``).
        size: a power of two, at least 16 for memory and 4 for I/O.
        kind: memory (32/64-bit) or I/O.
        prefetchable: the memory is prefetchable.
        device: handles accesses at offsets inside the BAR.
    """

    index: int
    size: int
    kind: BarKind
    prefetchable: bool
    device: BusDevice | None

    @property
    def is_io(self) -> bool:
        """Whether this BAR decodes port I/O."""
        return self.kind is BarKind.IO


MappingListener = Callable[["PciFunction"], None]


class _BusMasterGate:
    """The function's way out to ``msi_sink``, closed while Bus Master Enable is clear.

    PCIe 3.0 §7.5.1.1 (Command, Bus Master Enable): "as MSI/MSI-X interrupt Messages are
    in-band memory writes, setting the Bus Master Enable bit to 0b disables MSI/MSI-X
    interrupt Messages as well." A driver that clears it to quiesce the function must not
    receive interrupts afterwards.
    """

    __slots__ = ("_function",)

    def __init__(self, function: PciFunction) -> None:
        self._function = function

    def deliver_msi(self, address: int, data: int) -> None:
        function = self._function
        if function.dma_allowed:
            function.msi_sink.deliver_msi(address, data)
        elif _tp_msi_blocked.on:
            _tp_msi_blocked.emit(function=function.name, address=address, data=data)


@dataclass(frozen=True)
class PciFunctionState:
    """A function's generic PCI state: config bytes and MSI-X table/PBA."""

    version: int
    config: bytes
    msix_table: bytes | None
    msix_pba: bytes | None
    intx_level: bool


_STATE_VERSION = 1


class PciFunction(ServedDeviceDefaults):
    """A PCI function on which devices are built (a ``ServedDevice``, rule 6).

    Args:
        vendor_id, device_id: the IDs.
        class_code: 24-bit class/subclass/prog-if (e.g. ``0x020000`` Ethernet).
        revision: revision ID.
        subsystem_vendor_id, subsystem_id: subsystem IDs.
        interrupt_pin: 0 (none) or 1..4 (INTA#..INTD#).
        express: a 4 KiB (extended) config space.
        name: for traces and listings.
    """

    def __init__(
        self,
        vendor_id: int,
        device_id: int,
        class_code: int,
        *,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 1,
        express: bool = False,
        name: str = "",
    ) -> None:
        if not 0 <= interrupt_pin <= 4:
            raise UsageError(f"interrupt_pin must be 0..4, got {interrupt_pin}")
        self.name = name or type(self).__name__
        self.config = ConfigSpace(PCI_EXP_CONFIG_SPACE_SIZE if express else PCI_CONFIG_SPACE_SIZE)
        self.caps = CapabilityList(self.config)
        self.bars: list[Bar | None] = [None] * PCI_NUM_BARS
        self.msi: MsiCapability | None = None
        self.msix: MsixCapability | None = None
        self.intx: LevelSink = NullLevelSink()
        self.msi_sink: MsiSink = NullMsiSink()
        self._msi_out = _BusMasterGate(self)
        self._intx_level = False
        self._listeners: list[MappingListener] = []
        self._reset_image: bytes | None = None
        c = self.config
        c.set(PCI_VENDOR_ID, 2, vendor_id)
        c.set(PCI_DEVICE_ID, 2, device_id)
        c.set(PCI_REVISION_ID, 1, revision)
        c.set(PCI_CLASS_PROG, 3, class_code)
        c.set(PCI_HEADER_TYPE, 1, 0)
        c.set(PCI_SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        c.set(PCI_SUBSYSTEM_ID, 2, subsystem_id)
        c.set(PCI_INTERRUPT_PIN, 1, interrupt_pin)
        c.set_writable(
            PCI_COMMAND,
            2,
            PCI_COMMAND_IO
            | PCI_COMMAND_MEMORY
            | PCI_COMMAND_MASTER
            | PCI_COMMAND_PARITY
            | PCI_COMMAND_SERR
            | PCI_COMMAND_INTX_DISABLE,
        )
        c.set_w1c(PCI_STATUS, 2, PCI_STATUS_W1C)
        c.set_writable(PCI_CACHE_LINE_SIZE, 1, 0xFF)
        c.set_writable(PCI_LATENCY_TIMER, 1, 0xFF)
        c.set_writable(PCI_INTERRUPT_LINE, 1, 0xFF)

    # -- declaration (device side) --------------------------------------------------------

    def add_bar(
        self,
        index: int,
        size: int,
        device: BusDevice | None,
        kind: BarKind = BarKind.MEM32,
        *,
        prefetchable: bool = False,
    ) -> Bar:
        """Declare a BAR.

        Raises:
            UsageError: bad index, size, or a clash with another BAR.
        """
        if not 0 <= index < PCI_NUM_BARS:
            raise UsageError(f"BAR index must be 0..5, got {index}")
        minimum = 4 if kind is BarKind.IO else 16
        if not isinstance(size, int) or size < minimum or size & (size - 1):
            raise UsageError(f"BAR{index} size {size!r} must be a power of two >= {minimum}")
        if kind is BarKind.IO and size > 256:
            raise UsageError(f"I/O BAR{index} size {size:#x} exceeds 256 bytes")
        if kind is BarKind.MEM32 and size > 1 << 31:
            raise UsageError(f"32-bit BAR{index} size {size:#x} is too large")
        if kind is BarKind.MEM64 and size > 1 << 63:
            # Bit 63 is the highest address bit a 64-bit BAR can size (PCI 3.0 §6.2.5.1).
            raise UsageError(f"64-bit BAR{index} size {size:#x} exceeds 2**63")
        if kind is BarKind.MEM64 and index == PCI_NUM_BARS - 1:
            raise UsageError("a 64-bit BAR cannot start at BAR5")
        used = [index, index + 1] if kind is BarKind.MEM64 else [index]
        for i in used:
            if self.bars[i] is not None or (i > 0 and self._bar_is_upper_half(i)):
                raise UsageError(f"BAR{i} is already in use")
        bar = Bar(index, size, kind, prefetchable, device)
        self.bars[index] = bar
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        if kind is BarKind.IO:
            self.config.set(offset, 4, PCI_BASE_ADDRESS_SPACE_IO)
            self.config.set_writable(offset, 4, ~(size - 1) & 0xFFFF_FFFC)
        else:
            flags = PCI_BASE_ADDRESS_MEM_TYPE_64 if kind is BarKind.MEM64 else 0
            flags |= PCI_BASE_ADDRESS_MEM_PREFETCH if prefetchable else 0
            self.config.set(offset, 4, flags)
            mask = ~(size - 1) & 0xFFFF_FFFF_FFFF_FFFF
            self.config.set_writable(offset, 4, mask & 0xFFFF_FFF0)
            if kind is BarKind.MEM64:
                self.config.set_writable(offset + 4, 4, mask >> 32)
        return bar

    def _bar_is_upper_half(self, index: int) -> bool:
        lower = self.bars[index - 1]
        return lower is not None and lower.kind is BarKind.MEM64

    def add_msi(self, vectors: int = 1, *, is_64bit: bool = True, per_vector_mask: bool = True) -> MsiCapability:
        """Declare an MSI capability."""
        if self.msi is not None:
            raise UsageError("the function already has an MSI capability")
        self.msi = MsiCapability(self.config, self.caps, vectors, is_64bit=is_64bit, per_vector_mask=per_vector_mask)
        return self.msi

    def add_msix(self, vectors: int, bar: int, table_offset: int = 0, pba_offset: int | None = None) -> MsixCapability:
        """Declare an MSI-X capability whose table and PBA live in BAR ``bar``.

        Raises:
            UsageError: the BAR is not declared or too small for table and PBA.
        """
        if self.msix is not None:
            raise UsageError("the function already has an MSI-X capability")
        if not 0 <= bar < PCI_NUM_BARS:
            raise UsageError(f"MSI-X BAR index must be 0..5, got {bar}")
        declared = self.bars[bar]
        if declared is None or declared.is_io:
            raise UsageError(f"MSI-X needs memory BAR{bar} declared first")
        msix = MsixCapability(self.config, self.caps, vectors, bar, table_offset, pba_offset)
        if msix.end > declared.size:
            raise UsageError(f"BAR{bar} ({declared.size:#x} bytes) cannot hold the MSI-X table and PBA")
        self.msix = msix
        return msix

    def realize(self) -> None:
        """Freeze the current config image as the reset image (idempotent)."""
        if self._reset_image is None:
            self._reset_image = bytes(self.config.data)

    # -- guest side: config ---------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """A config-space read of ``size`` bytes (1/2/4) at ``offset``."""
        self.realize()
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A config-space write; the masks apply, then BAR/command/MSI effects follow."""
        self.realize()
        before_cmd = self.command
        before_bars = self._bar_words()
        self.config.write(offset, size, value)
        if self.msi is not None and self.msi.covers(offset, size):
            self.msi.after_config_write(self._msi_out)
        if self.msix is not None and self.msix.covers(offset, size):
            self.msix.after_config_write(self._msi_out)
        after_cmd = self.command
        if (before_cmd ^ after_cmd) & PCI_COMMAND_INTX_DISABLE:
            self._drive_intx()
        if (before_cmd ^ after_cmd) & (PCI_COMMAND_IO | PCI_COMMAND_MEMORY) or self._bar_words() != before_bars:
            self._notify_mapping()
        self.after_config_write(offset, size)

    def after_config_write(self, offset: int, size: int) -> None:
        """Hook for devices with their own config side effects (default: none)."""

    def _bar_words(self) -> bytes:
        return bytes(self.config.data[PCI_BASE_ADDRESS_0 : PCI_BASE_ADDRESS_0 + 4 * PCI_NUM_BARS])

    @property
    def command(self) -> int:
        """The Command register."""
        return self.config.get(PCI_COMMAND, 2)

    @property
    def dma_allowed(self) -> bool:
        """Bus Master Enable (rule 5)."""
        return bool(self.command & PCI_COMMAND_MASTER)

    def bar_address(self, index: int) -> int | None:
        """Where BAR ``index`` decodes now, or ``None`` (not declared, decode off, or 0)."""
        bar = self.bars[index] if 0 <= index < PCI_NUM_BARS else None
        if bar is None:
            return None
        enable = PCI_COMMAND_IO if bar.is_io else PCI_COMMAND_MEMORY
        if not self.command & enable:
            return None
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        if bar.kind is BarKind.MEM64:
            address = self.config.get(offset, 8) & ~0xF
        elif bar.is_io:
            address = self.config.get(offset, 4) & ~0x3
        else:
            address = self.config.get(offset, 4) & ~0xF
        return address or None

    def add_mapping_listener(self, listener: MappingListener) -> None:
        """Call ``listener(self)`` whenever BAR decode may have changed (rule 3)."""
        self._listeners.append(listener)

    def remove_mapping_listener(self, listener: MappingListener) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify_mapping(self) -> None:
        for listener in tuple(self._listeners):
            listener(self)

    # -- guest side: BARs -----------------------------------------------------------------

    def bar_read(self, index: int, offset: int, size: int) -> int:
        """A read of ``size`` bytes at ``offset`` inside BAR ``index``."""
        bar = self.bars[index] if 0 <= index < PCI_NUM_BARS else None
        if bar is None or not 0 <= offset <= bar.size - size:
            return self._bar_unhandled(index, offset, size, "read")
        msix = self.msix
        if msix is not None and msix.bar == index:
            if msix.in_table(offset, size):
                return msix.table_read(offset, size)
            if msix.in_pba(offset, size):
                return msix.pba_read(offset, size)
        if bar.device is None:
            return self._bar_unhandled(index, offset, size, "read")
        return bar.device.read(offset, size)

    def bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        """A write of ``size`` bytes at ``offset`` inside BAR ``index``."""
        bar = self.bars[index] if 0 <= index < PCI_NUM_BARS else None
        if bar is None or not 0 <= offset <= bar.size - size:
            self._bar_unhandled(index, offset, size, "write")
            return
        msix = self.msix
        if msix is not None and msix.bar == index:
            if msix.in_table(offset, size):
                msix.table_write(offset, size, value, self._msi_out)
                return
            if msix.in_pba(offset, size):
                return  # PBA is read-only (§6.8.2.10)
        if bar.device is None:
            self._bar_unhandled(index, offset, size, "write")
            return
        bar.device.write(offset, size, value)

    def _bar_unhandled(self, index: int, offset: int, size: int, op: str) -> int:
        if _tp_bar_unhandled.on:
            _tp_bar_unhandled.emit(function=self.name, bar=index, offset=offset, size=size, op=op)
        return 0

    # -- interrupts (device side) ---------------------------------------------------------

    def set_intx(self, asserted: bool) -> None:
        """Drive this function's INTx pin (rule 4)."""
        self._intx_level = bool(asserted)
        self._drive_intx()

    def _drive_intx(self) -> None:
        level = self._intx_level
        self.config.set_bits(PCI_STATUS, 2, PCI_STATUS_INTERRUPT, level)
        disabled = self.command & PCI_COMMAND_INTX_DISABLE
        self.intx.set_level(level and not disabled and self.config.get(PCI_INTERRUPT_PIN, 1) != 0)

    def signal(self, vector: int) -> bool:
        """Send ``vector`` by MSI-X or MSI if enabled; ``False`` means use INTx."""
        if self.msix is not None and self.msix.notify(vector, self._msi_out):
            return True
        if self.msi is not None and self.msi.notify(vector, self._msi_out):
            return True
        return False

    @property
    def msix_enabled(self) -> bool:
        """Whether the guest enabled MSI-X."""
        return self.msix is not None and self.msix.enabled

    @property
    def msi_enabled(self) -> bool:
        """Whether the guest enabled MSI."""
        return self.msi is not None and self.msi.enabled

    # -- reset and snapshot ---------------------------------------------------------------

    def reset_function(self) -> None:
        """Return config space, MSI-X and INTx to their power-on state (a device's own
        reset calls this and then resets its registers)."""
        self.realize()
        assert self._reset_image is not None
        self.config.data[:] = self._reset_image
        if self.msix is not None:
            self.msix.reset()
        self._intx_level = False
        self.intx.set_level(False)
        self._notify_mapping()

    def pci_state(self) -> PciFunctionState:
        """The generic PCI part of the function's snapshot."""
        self.realize()
        return PciFunctionState(
            version=_STATE_VERSION,
            config=bytes(self.config.data),
            msix_table=bytes(self.msix.table) if self.msix else None,
            msix_pba=bytes(self.msix.pba) if self.msix else None,
            intx_level=self._intx_level,
        )

    def check_pci_state(self, state: PciFunctionState) -> None:
        """Validate a snapshot against this function's layout (nothing is applied).

        Raises:
            SnapshotError: any field that this function could not have produced.
        """
        self.realize()
        assert self._reset_image is not None
        check_type("pci", state, PciFunctionState)
        check_version("pci.version", state.version, _STATE_VERSION)
        config = check_bytes("pci.config", state.config, self.config.size)
        check_bool("pci.intx_level", state.intx_level)
        image = self._reset_image
        writable, w1c = self.config.writable, self.config.w1c
        status_dynamic = PCI_STATUS_INTERRUPT
        msi_pending = (
            range(self.msi._pending_offset, self.msi._pending_offset + 4)
            if self.msi is not None and self.msi.per_vector_mask
            else range(0)
        )
        for pos in range(self.config.size):
            fixed = ~(writable[pos] | w1c[pos]) & 0xFF
            if pos in (PCI_STATUS, PCI_STATUS + 1):
                fixed &= ~(status_dynamic >> (8 * (pos - PCI_STATUS))) & 0xFF
            if pos in msi_pending:
                continue
            if (config[pos] ^ image[pos]) & fixed:
                raise SnapshotError("pci.config", f"read-only bits differ at offset {pos:#x}")
        if msi_pending and self.msi is not None:
            pending = int.from_bytes(config[msi_pending.start : msi_pending.stop], "little")
            if pending >> self.msi.vectors:
                raise SnapshotError("pci.config", "MSI pending bits set beyond the vector count")
        if self.msix is not None:
            if state.msix_table is None or state.msix_pba is None:
                raise SnapshotError("pci.msix", "the function has MSI-X but the snapshot has none")
            table = check_bytes("pci.msix_table", state.msix_table)
            pba = check_bytes("pci.msix_pba", state.msix_pba)
            self.msix.check_state(table, pba)
        elif state.msix_table is not None or state.msix_pba is not None:
            raise SnapshotError("pci.msix", "the snapshot has MSI-X but the function has none")

    def load_pci_state(self, state: PciFunctionState) -> None:
        """Apply a snapshot already validated by ``check_pci_state``."""
        self.config.data[:] = state.config
        if self.msix is not None and state.msix_table is not None and state.msix_pba is not None:
            self.msix.load_state(state.msix_table, state.msix_pba)
        self._intx_level = state.intx_level
        self._drive_intx()
        self._notify_mapping()

    def __repr__(self) -> str:
        vendor = self.config.get(PCI_VENDOR_ID, 2)
        device = self.config.get(PCI_DEVICE_ID, 2)
        return f"<{self.name} {vendor:04x}:{device:04x}>"
