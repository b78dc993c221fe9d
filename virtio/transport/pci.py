"""Virtio over PCI, modern interface only (VIRTIO 1.2 §4.1).

``VirtioPciFunction`` is a ``PciFunction`` carrying one ``VirtioDevice``.

Layout: vendor 0x1AF4, device 0x1040 + device ID, revision 1 (§4.1.2.1); one 64-bit
memory BAR (BAR0 by default) holding, each at a 4 KiB boundary, the common configuration
(§4.1.4.3), the ISR status byte (§4.1.4.5), the device configuration (§4.1.4.6), the
notification area (§4.1.4.4; ``queue_notify_off`` = queue index,
``notify_off_multiplier`` = 4) and the MSI-X table and PBA. Vendor-specific capabilities
describe the structures, followed by a VIRTIO_PCI_CAP_PCI_CFG access window (§4.1.4.9)
and the MSI-X capability.

Rules:

1. The common configuration is a register table (CONVENTIONS: register-tables) whose rows call the device's
   transport-neutral entry points; this module holds only PCI state: the MSI-X vector of
   the configuration and of each queue, and the ISR byte.
2. Accesses must have the field's natural width (§4.1.3.1; 64-bit fields as two 32-bit
   halves). Any other access, or one outside every structure, reads 0 and is dropped with
   a trace event, never an exception.
3. Interrupts (§4.1.5.3, §4.1.5.4): with MSI-X enabled a notification goes to the mapped
   vector, or nowhere for NO_VECTOR; otherwise the ISR bit is set and INTx follows "ISR is
   non-zero". Reading the ISR returns and clears it, deasserting INTx. A configuration
   change sets ISR bit 1 in both modes, as the ISR section requires.
4. A vector write outside the MSI-X table (or any, without MSI-X) maps to NO_VECTOR,
   which is how a mapping failure is reported (§4.1.5.1.2.1). Reset unmaps everything.
5. Built with ``msix_vectors=0`` the function has no MSI-X capability and interrupts by
   INTx only (for attachment paths that cannot deliver MSI).
6. Snapshots (``devmodels._state``): ``VirtioPciState[D]`` carries the transport's
   constructor arguments (``VirtioPciArgs``) and the device's typed state; its kind is
   the device's with ``-pci`` (``virtio-blk-pci``). ``from_state`` builds the function
   around a device the restorer built from the state's device args.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from devmodels import Reg, RegAccess as Access, RegisterFile, SnapshotError, UsageError
from devmodels.snapshot import check_args, check_int, check_type, check_version
from devmodels.trace import tracepoint
from devmodels.pci import BarKind, PciFunction, PciFunctionState
from devmodels.pci.defs import PCI_CAP_ID_VNDR

from ._serving import ServedThroughDevice
from ..defs import (
    VIRTIO_ID_BLOCK,
    VIRTIO_ID_CONSOLE,
    VIRTIO_ID_NET,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG,
    VIRTIO_PCI_CFG_CAP_DATA,
    VIRTIO_PCI_COMMON_CFG_SIZE,
    VIRTIO_PCI_ISR_CONFIG,
    VIRTIO_PCI_ISR_QUEUE,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE,
    VIRTIO_PCI_MODERN_REVISION,
    VIRTIO_PCI_MODERN_SUBSYSTEM_ID_MIN,
    VIRTIO_PCI_MSIX_MAX_VECTORS,
    VIRTIO_PCI_VENDOR_ID,
)
from ..defs import VIRTIO_PCI_CAP_BAR as _CAP_BAR
from ..defs import VIRTIO_PCI_CAP_LENGTH as _CAP_LENGTH
from ..defs import VIRTIO_PCI_CAP_OFFSET as _CAP_OFFSET
from ..device import QueueArea, VirtioDevice, VirtioDeviceState
from .layouts import virtio_pci_cap, virtio_pci_cfg_cap, virtio_pci_notify_cap

__all__ = ["VirtioPciFunction", "VirtioPciState", "NOTIFY_OFF_MULTIPLIER", "PCI_CLASS_OF"]

NOTIFY_OFF_MULTIPLIER = 4
"""Bytes between queue notify addresses: a power of two and a multiple of 4, so it suits
both plain and VIRTIO_F_NOTIFICATION_DATA notifications (§4.1.4.4.1)."""

PCI_CLASS_OF = {
    VIRTIO_ID_NET: 0x020000,  # Ethernet controller
    VIRTIO_ID_BLOCK: 0x010000,  # SCSI storage controller, as virtio-blk has always been
    VIRTIO_ID_CONSOLE: 0x078000,  # other communication controller
}
"""Class code by device ID; others are 0x00FF00 ("unclassified")."""

_PAGE = 0x1000

_tp_unhandled = tracepoint("virtio_pci.unhandled")
_tp_vector = tracepoint("virtio_pci.vector_refused")


D = TypeVar("D")


@dataclass(frozen=True)
class VirtioPciArgs:
    """The transport's constructor arguments (the device's are in its own section)."""

    msix_vectors: int
    bar: int
    class_code: int
    subsystem_vendor_id: int
    subsystem_id: int


@dataclass(frozen=True)
class VirtioPciState(Generic[D]):
    """Snapshot of a virtio PCI function: PCI state, device state and the transport's own
    (rule 6); ``D`` is the device's section type."""

    version: int
    args: VirtioPciArgs
    pci: PciFunctionState
    device: VirtioDeviceState[D]
    config_vector: int
    queue_vectors: tuple[int, ...]
    isr: int


_STATE_VERSION = 2  # 2: args


class _Region:
    """One structure in the BAR: a window of ``length`` bytes at ``offset``."""

    __slots__ = ("offset", "length", "read", "write")

    def __init__(
        self,
        offset: int,
        length: int,
        read: Callable[[int, int], int],
        write: Callable[[int, int, int], None],
    ) -> None:
        self.offset = offset
        self.length = length
        self.read = read
        self.write = write


class _VirtioBar:
    """The BAR's ``BusDevice``: dispatches to the structure containing the access."""

    def __init__(self, function: VirtioPciFunction) -> None:
        self._function = function
        self.regions: list[_Region] = []

    def _find(self, offset: int, size: int) -> _Region | None:
        for region in self.regions:
            if region.offset <= offset and offset + size <= region.offset + region.length:
                return region
        return None

    def read(self, offset: int, size: int) -> int:
        region = self._find(offset, size)
        if region is None:
            return self._function._unhandled("read", offset, size)
        return region.read(offset - region.offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        region = self._find(offset, size)
        if region is None:
            self._function._unhandled("write", offset, size)
            return
        region.write(offset - region.offset, size, value)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class VirtioPciFunction(ServedThroughDevice, PciFunction):
    """A modern virtio PCI function around ``device``.

    Args:
        device: the virtio device (attached to this transport here).
        msix_vectors: MSI-X table size; ``None`` means one per queue plus one for
            configuration changes (at least 2, §4.1.5.1.2.1), 0 means no MSI-X (rule 5).
        bar: the index of the 64-bit memory BAR (0..4).
        class_code: PCI class code (default from ``PCI_CLASS_OF``).
        subsystem_vendor_id, subsystem_id: subsystem IDs (§4.1.2.1: id >= 0x40).
        name: for traces.

    Raises:
        UsageError: a bad vector count or BAR index, or a device already attached.
    """

    def __init__(
        self,
        device: VirtioDevice,
        *,
        msix_vectors: int | None = None,
        bar: int = 0,
        class_code: int | None = None,
        subsystem_vendor_id: int = VIRTIO_PCI_VENDOR_ID,
        subsystem_id: int = VIRTIO_PCI_MODERN_SUBSYSTEM_ID_MIN,
        name: str = "",
    ) -> None:
        nq = device.num_queues
        if msix_vectors is None:
            msix_vectors = min(max(2, nq + 1), VIRTIO_PCI_MSIX_MAX_VECTORS)
        if not isinstance(msix_vectors, int) or not 0 <= msix_vectors <= VIRTIO_PCI_MSIX_MAX_VECTORS:
            raise UsageError(f"msix_vectors must be 0..{VIRTIO_PCI_MSIX_MAX_VECTORS}, got {msix_vectors!r}")
        if not 0 <= bar <= 4:
            raise UsageError(f"the 64-bit BAR must start at 0..4, got {bar}")
        if class_code is None:
            class_code = PCI_CLASS_OF.get(device.device_id, 0x00FF00)
        self._args = VirtioPciArgs(msix_vectors, bar, class_code, subsystem_vendor_id, subsystem_id)
        super().__init__(
            VIRTIO_PCI_VENDOR_ID,
            VIRTIO_PCI_MODERN_DEVICE_ID_BASE + device.device_id,
            class_code,
            revision=VIRTIO_PCI_MODERN_REVISION,
            subsystem_vendor_id=subsystem_vendor_id,
            subsystem_id=subsystem_id,
            name=name or f"virtio-pci:{device.name}",
        )
        self.device = device
        self.bar_index = bar
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * nq
        self.isr = 0
        self.common = self._common_registers()

        # BAR layout (module docstring): each structure at a 4 KiB boundary.
        self._bar = _VirtioBar(self)
        common_at, isr_at, device_at = 0, _PAGE, 2 * _PAGE
        notify_at = device_at + _round_up(max(len(device.config), 1), _PAGE)
        notify_len = max(NOTIFY_OFF_MULTIPLIER, nq * NOTIFY_OFF_MULTIPLIER)
        msix_at = notify_at + _round_up(notify_len, _PAGE)
        msix_len = msix_vectors * 16 + ((msix_vectors + 63) // 64) * 8 if msix_vectors else 0
        end = msix_at + _round_up(msix_len, _PAGE)
        bar_size = 1 << max(end - 1, 0x3FFF).bit_length()
        self._bar.regions = [
            _Region(common_at, VIRTIO_PCI_COMMON_CFG_SIZE, self.common.read, self.common.write),
            _Region(isr_at, 1, self._isr_read, self._ignore_write),
            _Region(notify_at, notify_len, self._notify_read, self._notify_write),
        ]
        if device.config:
            self._bar.regions.append(_Region(device_at, len(device.config), device.read_config, device.write_config))
        self.add_bar(bar, bar_size, self._bar, BarKind.MEM64)

        self._add_cap(VIRTIO_PCI_CAP_COMMON_CFG, common_at, VIRTIO_PCI_COMMON_CFG_SIZE)
        self._add_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, notify_at, notify_len, notify_off_multiplier=NOTIFY_OFF_MULTIPLIER)
        self._add_cap(VIRTIO_PCI_CAP_ISR_CFG, isr_at, 1)
        if device.config:
            self._add_cap(VIRTIO_PCI_CAP_DEVICE_CFG, device_at, len(device.config))
        self.cfg_cap = self._add_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0)
        for field, width in ((_CAP_BAR, 1), (_CAP_OFFSET, 4), (_CAP_LENGTH, 4), (VIRTIO_PCI_CFG_CAP_DATA, 4)):
            self.config.set_writable(self.cfg_cap + field, width, (1 << (8 * width)) - 1)
        if msix_vectors:
            self.add_msix(msix_vectors, bar, table_offset=msix_at)
        self.realize()
        device.attach(self)

    # -- capabilities ------------------------------------------------------------------------

    def _add_cap(self, cfg_type: int, offset: int, length: int, *, notify_off_multiplier: int | None = None) -> int:
        header = dict(cap_vndr=PCI_CAP_ID_VNDR, cap_next=0, cfg_type=cfg_type, bar=self.bar_index, id=0, offset=offset, length=length)
        if notify_off_multiplier is not None:
            header["cap_len"] = virtio_pci_notify_cap.sizeof()
            raw = virtio_pci_notify_cap.build(dict(cap=header, notify_off_multiplier=notify_off_multiplier))
        elif cfg_type == VIRTIO_PCI_CAP_PCI_CFG:
            header["cap_len"] = virtio_pci_cfg_cap.sizeof()
            raw = virtio_pci_cfg_cap.build(dict(cap=header, pci_cfg_data=bytes(4)))
        else:
            header["cap_len"] = virtio_pci_cap.sizeof()
            raw = virtio_pci_cap.build(header)
        at = self.caps.add(PCI_CAP_ID_VNDR, len(raw))
        # The list builder owns cap_vndr and cap_next; the rest is the virtio structure.
        self.config.data[at + 2 : at + len(raw)] = raw[2:]
        return at

    # -- common configuration (§4.1.4.3) -----------------------------------------------------

    def _common_registers(self) -> RegisterFile:
        d = self.device

        def sel() -> int:
            return d.queue_select

        def ro(name: str, offset: int, size: int, value: Callable[[], int]) -> Reg:
            return Reg(name, offset, size, Access.RO, mask=(1 << (8 * size)) - 1, on_read=lambda _: value())

        def rw(name: str, offset: int, size: int, value: Callable[[], int], store: Callable[[int], None]) -> Reg:
            def on_write(old: int, new: int) -> int:
                store(new)
                return 0

            return Reg(name, offset, size, Access.RW, mask=(1 << (8 * size)) - 1, on_read=lambda _: value(), on_write=on_write)

        def address(name: str, offset: int, area: int, half: int) -> Reg:
            return rw(
                name, offset, 4,
                lambda: (d.queue_address(sel(), area) >> (32 * half)) & 0xFFFF_FFFF,
                lambda v: d.write_queue_address(sel(), area, half, v),
            )

        def set_dfselect(v: int) -> None:
            d.device_feature_select = v

        def set_gfselect(v: int) -> None:
            d.driver_feature_select = v

        def set_qselect(v: int) -> None:
            d.queue_select = v

        rows = [
            rw("device_feature_select", 0, 4, lambda: d.device_feature_select, set_dfselect),
            ro("device_feature", 4, 4, d.read_device_features),
            rw("driver_feature_select", 8, 4, lambda: d.driver_feature_select, set_gfselect),
            rw("driver_feature", 12, 4, d.read_driver_features, d.write_driver_features),
            rw("config_msix_vector", 16, 2, lambda: self.config_vector, self._set_config_vector),
            ro("num_queues", 18, 2, lambda: d.num_queues),
            rw("device_status", 20, 1, lambda: d.status, d.write_status),
            ro("config_generation", 21, 1, lambda: d.config_generation),
            rw("queue_select", 22, 2, sel, set_qselect),
            rw("queue_size", 24, 2, lambda: d.queue_size(sel()), lambda v: d.set_queue_size(sel(), v)),
            rw("queue_msix_vector", 26, 2, self._queue_vector, self._set_queue_vector),
            rw("queue_enable", 28, 2, lambda: int(d.queue_ready(sel())), self._queue_enable),
            ro("queue_notify_off", 30, 2, lambda: sel() if sel() < d.num_queues else 0),
            address("queue_desc_lo", 32, QueueArea.DESC, 0),
            address("queue_desc_hi", 36, QueueArea.DESC, 1),
            address("queue_driver_lo", 40, QueueArea.DRIVER, 0),
            address("queue_driver_hi", 44, QueueArea.DRIVER, 1),
            address("queue_device_lo", 48, QueueArea.DEVICE, 0),
            address("queue_device_hi", 52, QueueArea.DEVICE, 1),
            # Used only with VIRTIO_F_NOTIF_CONFIG_DATA; the queue index is the trivial choice
            # §4.1.4.3 describes, and notifications are routed by address anyway.
            ro("queue_notify_data", 56, 2, lambda: sel() if sel() < d.num_queues else 0),
            # Queue reset completes within the write, so it always reads back 0 (§4.1.4.3.1).
            rw("queue_reset", 58, 2, lambda: 0, self._queue_reset),
        ]
        return RegisterFile(rows, device="virtio_pci.common")

    def _valid_vector(self, vector: int) -> int:
        if self.msix is not None and 0 <= vector < self.msix.vectors:
            return vector
        if vector != VIRTIO_MSI_NO_VECTOR and _tp_vector.on:
            _tp_vector.emit(function=self.name, vector=vector, table=self.msix.vectors if self.msix else 0)
        return VIRTIO_MSI_NO_VECTOR

    def _set_config_vector(self, vector: int) -> None:
        self.config_vector = self._valid_vector(vector)

    def _queue_vector(self) -> int:
        index = self.device.queue_select
        return self.queue_vectors[index] if index < len(self.queue_vectors) else VIRTIO_MSI_NO_VECTOR

    def _set_queue_vector(self, vector: int) -> None:
        index = self.device.queue_select
        if index < len(self.queue_vectors):
            self.queue_vectors[index] = self._valid_vector(vector)

    def _queue_enable(self, value: int) -> None:
        # §4.1.4.3.2: the driver MUST NOT write 0 to queue_enable; only 1 means anything.
        if value == 1:
            self.device.set_queue_ready(self.device.queue_select, True)
        else:
            self._unhandled(f"queue_enable={value:#x}", 28, 2)

    def _queue_reset(self, value: int) -> None:
        if value == 1:
            self.device.reset_queue(self.device.queue_select)

    # -- ISR and notifications ---------------------------------------------------------------

    def _isr_read(self, offset: int, size: int) -> int:
        if offset:
            return 0
        # §4.1.4.5: reading ISR status resets it to 0 and de-asserts the interrupt.
        value, self.isr = self.isr, 0
        self._update_intx()
        return value

    def _ignore_write(self, offset: int, size: int, value: int) -> None:
        self._unhandled("write", offset, size)

    def _notify_read(self, offset: int, size: int) -> int:
        return 0

    def _notify_write(self, offset: int, size: int, value: int) -> None:
        # The notify address selects the queue (§4.1.4.4: cap.offset + queue_notify_off *
        # notify_off_multiplier); the written value is the queue index or notification data.
        self.device.notify_queue(offset // NOTIFY_OFF_MULTIPLIER)

    def _update_intx(self) -> None:
        # §4.1.4.5.1: without MSI-X, PCI Status.INTERRUPT (and so INTx) is the OR of the ISR bits.
        self.set_intx(bool(self.isr) and not self.msix_enabled)

    # -- Transport protocol (called by the device) -------------------------------------------

    def signal_used(self, index: int) -> None:
        """Used buffer notification for queue ``index`` (§4.1.5.3)."""
        if self.msix_enabled:
            vector = self.queue_vectors[index] if 0 <= index < len(self.queue_vectors) else VIRTIO_MSI_NO_VECTOR
            if vector != VIRTIO_MSI_NO_VECTOR:
                self.signal(vector)
            return
        self.isr |= VIRTIO_PCI_ISR_QUEUE
        self._update_intx()

    def signal_config(self) -> None:
        """Configuration change notification (§4.1.5.4)."""
        self.isr |= VIRTIO_PCI_ISR_CONFIG
        if self.msix_enabled:
            if self.config_vector != VIRTIO_MSI_NO_VECTOR:
                self.signal(self.config_vector)
            return
        self._update_intx()

    def device_reset(self) -> None:
        """The device reset: unmap every vector and clear the ISR (§4.1.5.1.2.1)."""
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.queue_vectors)
        self.isr = 0
        self._update_intx()

    # -- PCI configuration access capability (§4.1.4.9) ---------------------------------------

    def _cfg_window(self) -> tuple[int, int] | None:
        """(BAR offset, length) the access capability points at, if usable."""
        c = self.config
        bar = c.get(self.cfg_cap + _CAP_BAR, 1)
        offset = c.get(self.cfg_cap + _CAP_OFFSET, 4)
        length = c.get(self.cfg_cap + _CAP_LENGTH, 4)
        # §4.1.4.9.2: the driver MUST use length 1, 2 or 4 and an offset aligned to it.
        if bar != self.bar_index or length not in (1, 2, 4) or offset % length:
            self._unhandled("pci_cfg", offset, length)
            return None
        return offset, length

    def _touches_cfg_data(self, offset: int, size: int) -> bool:
        data = self.cfg_cap + VIRTIO_PCI_CFG_CAP_DATA
        return offset < data + 4 and data < offset + size

    def config_read(self, offset: int, size: int) -> int:
        """A config read; a read of ``pci_cfg_data`` first performs the BAR read (§4.1.4.9.1)."""
        if self._touches_cfg_data(offset, size):
            window = self._cfg_window()
            data = self.cfg_cap + VIRTIO_PCI_CFG_CAP_DATA
            value = self.bar_read(self.bar_index, *window) if window is not None else 0
            self.config.set(data, 4, value)
        return super().config_read(offset, size)

    def after_config_write(self, offset: int, size: int) -> None:
        """Perform a ``pci_cfg_data`` write (§4.1.4.9.1); follow MSI-X enable for INTx."""
        if self._touches_cfg_data(offset, size):
            window = self._cfg_window()
            if window is not None:
                value = self.config.get(self.cfg_cap + VIRTIO_PCI_CFG_CAP_DATA, window[1])
                self.bar_write(self.bar_index, window[0], window[1], value)
        self._update_intx()

    # -- diagnostics, reset, snapshot ------------------------------------------------------------

    def _unhandled(self, op: str, offset: int, size: int) -> int:
        if _tp_unhandled.on:
            _tp_unhandled.emit(function=self.name, op=op, offset=offset, size=size)
        return 0

    @property
    def bar_size(self) -> int:
        """Size of the virtio BAR."""
        bar = self.bars[self.bar_index]
        assert bar is not None
        return bar.size

    def reset(self) -> None:
        """Power-on state of the function and the device (a PCI reset)."""
        self.reset_function()
        self.device.reset()

    # -- snapshot (rule 6) ----------------------------------------------------------------

    @property
    def snapshot_kind(self) -> str:
        """The device's kind with ``-pci`` (``""`` when the device has none)."""
        kind = self.device.snapshot_kind
        return f"{kind}-pci" if kind else ""

    @property
    def state_type(self) -> Any:
        """``VirtioPciState[D]`` for the device's section type ``D``."""
        return VirtioPciState[self.device.device_state_type or type(None)]  # type: ignore[misc]

    def constructor_args(self) -> VirtioPciArgs:
        """The transport's constructor arguments (``devmodels._state`` rule 3)."""
        return self._args

    @classmethod
    def from_state(cls, state: VirtioPciState[Any], device: VirtioDevice, *, name: str = "") -> VirtioPciFunction:
        """A function built from ``state.args`` around ``device`` (which the restorer built
        from the state's device args, e.g. ``VirtioBlkDevice.from_args``), with ``state``
        restored into both (``devmodels._state`` rule 5).

        Raises:
            SnapshotError: the state is refused.
        """
        check_type("args", getattr(state, "args", None), VirtioPciArgs)
        a = state.args
        try:
            function = cls(device, msix_vectors=a.msix_vectors, bar=a.bar, class_code=a.class_code,
                           subsystem_vendor_id=a.subsystem_vendor_id, subsystem_id=a.subsystem_id, name=name)
        except UsageError as exc:
            raise SnapshotError("args", str(exc)) from None
        function.restore(state)
        return function

    def state(self) -> VirtioPciState[Any]:
        """Snapshot (CONVENTIONS: snapshots) at the quiesce point (``VirtioDevice`` rule 11).

        Raises:
            UsageError: the device has work in flight; ``quiesce()`` first.
        """
        device = self.device.state()
        return VirtioPciState(
            version=_STATE_VERSION,
            args=self._args,
            pci=self.pci_state(),
            device=device,
            config_vector=self.config_vector,
            queue_vectors=tuple(self.queue_vectors),
            isr=self.isr,
        )

    def restore(self, state: VirtioPciState[Any]) -> None:
        """Validate ``state`` completely, then apply it.

        Raises:
            SnapshotError: any field is inconsistent (args first); nothing was applied.
        """
        check_type("state", state, VirtioPciState)
        check_version("version", state.version, _STATE_VERSION)
        check_args("args", state.args, self._args)
        check_type("device", state.device, VirtioDeviceState)
        # The device's own args come before anything derived from them (config bytes).
        self.device.check_device_state(state.device.device)
        self.check_pci_state(state.pci)
        check_type("queue_vectors", state.queue_vectors, tuple)
        if len(state.queue_vectors) != len(self.queue_vectors):
            raise SnapshotError("queue_vectors", f"expected {len(self.queue_vectors)} entries")
        for name, vector in [("config_vector", state.config_vector)] + [
            (f"queue_vectors[{i}]", v) for i, v in enumerate(state.queue_vectors)
        ]:
            check_int(name, vector, 0, 0xFFFF)
            if vector != VIRTIO_MSI_NO_VECTOR and self._valid_vector(vector) != vector:
                raise SnapshotError(name, f"vector {vector} is outside the MSI-X table")
        check_int("isr", state.isr, 0, VIRTIO_PCI_ISR_QUEUE | VIRTIO_PCI_ISR_CONFIG)
        # The device validates its whole section before applying any of it, so a refusal
        # there leaves both the device and this function unchanged.
        self.device.restore(state.device)
        self.load_pci_state(state.pci)
        self.config_vector = state.config_vector
        self.queue_vectors = list(state.queue_vectors)
        self.isr = state.isr
        self._update_intx()
