"""``VfioPciDevice``: a passed-through PCI function, plugged into a VMM like any devmodels one.

It is a ``PciFunction`` over a ``VfioDeviceBackend`` (kernel VFIO or vfio-user), so a
``PciHost``/``Machine`` maps its BARs, routes its INTx and delivers its MSI/MSI-X exactly
as for an emulated device.

Rules:

1. Config space is virtualized per ``passthrough.config`` (BARs sized from the regions,
   MSI/MSI-X and the capability chain emulated, the rest read from and written to the
   device). The BARs keep the device's type bits (I/O, 64-bit, prefetchable).
2. BAR accesses go to the device's region (``region_read``/``region_write``, or a typed
   load/store on an mmap of the region's mappable areas), except the MSI-X table and PBA,
   which are emulated by the core ``MsixCapability``.
3. Interrupts are translated: the guest's MSI/MSI-X programming stays virtual; when the
   guest enables MSI-X (or MSI with N vectors), the host side is wired to one eventfd per
   vector with ``SET_IRQS``, and INTx is unwired (vfio-pci allows one index at a time).
   When eventfd *v* fires, ``service_interrupts`` calls ``signal(v)``: the core applies the
   guest's masks, pending bits and Bus Master gate and sends the guest's message to
   ``msi_sink``. Disabling returns the host to INTx.
4. INTx is level-triggered and AUTOMASKED on the host: its eventfd asserts the pin; the
   first BAR access after that (the driver's handler reading or acknowledging the device)
   deasserts it and sends UNMASK, and the host fires again if the device still asserts
   (QEMU's "EOI on BAR access" for VFIO INTx without KVM resampling).
5. A backend failure during a guest access never raises into the VMM's bus: reads return
   all-ones (as from a surprise-removed device), writes are dropped, the error is kept in
   ``host_error`` and traced as ``vfio.host_error``. Construction errors do raise.
6. The device owns its backend and eventfds; ``close()`` releases them.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from typing import Literal

from devmodels import GuestMemory, HostError, trace, UsageError
from devmodels.pci import BarKind, defs as pcidefs, MsiCapability, MsixCapability, PciFunction

from .backend import RegionInfo, VfioDeviceBackend
from .config import ConfigPolicy, PlacedCapabilityList, msi_length, walk_capabilities
from .defs import (
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
)

__all__ = ["VfioPciDevice", "IrqMode"]

_tp_host_error = trace.tracepoint("vfio.host_error")
_tp_irq = trace.tracepoint("vfio.irq")
_tp_hidden = trace.tracepoint("vfio.cap_hidden")

IrqMode = Literal["intx", "msi", "msix"]
_INDEX_OF: dict[str, int] = {"intx": VFIO_PCI_INTX_IRQ_INDEX, "msi": VFIO_PCI_MSI_IRQ_INDEX, "msix": VFIO_PCI_MSIX_IRQ_INDEX}
_FORMATS: dict[int, Literal["B", "H", "I", "Q"]] = {1: "B", 2: "H", 4: "I", 8: "Q"}


class _RegionWindow:
    """BAR ``index`` as a ``BusDevice``: mmap'd areas by typed access, the rest by region I/O."""

    def __init__(self, device: VfioPciDevice, index: int, areas: Sequence[tuple[int, mmap.mmap]]) -> None:
        self._device = device
        self._index = index
        self._areas = [(start, start + len(m), memoryview(m), m) for start, m in areas]

    def _area(self, offset: int, size: int) -> tuple[int, memoryview] | None:
        for start, end, view, _ in self._areas:
            if start <= offset and offset + size <= end and size in _FORMATS and offset % size == 0:
                return start, view
        return None

    def read(self, offset: int, size: int) -> int:
        area = self._area(offset, size)
        if area is not None:
            rel = offset - area[0]
            return int(area[1][rel : rel + size].cast(_FORMATS[size])[0])
        return self._device._region_read_int(self._index, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        area = self._area(offset, size)
        if area is not None:
            rel = offset - area[0]
            area[1][rel : rel + size].cast(_FORMATS[size])[0] = value
            return
        self._device._region_write_int(self._index, offset, size, value)

    def close(self) -> None:
        for _, _, view, m in self._areas:
            view.release()
            m.close()
        self._areas = []


class VfioPciDevice(PciFunction):
    """A PCI function backed by a VFIO device (rules 1–6).

    Args:
        backend: the device (``KernelVfioDevice`` or ``VfioUserClient``); owned from now on.
        name: for traces and listings (default ``vfio-VVVV:DDDD``).
        use_mmap: access mappable BAR areas through mmap instead of region I/O.

    Raises:
        UsageError: the backend is not a PCI device or is not a type-0 function.
        HostError: the backend failed while the device was being set up.
    """

    def __init__(self, backend: VfioDeviceBackend, *, name: str = "", use_mmap: bool = True) -> None:
        self._irq_fds: dict[int, tuple[str, int]] = {}
        self._windows: list[_RegionWindow] = []
        try:
            self._setup(backend, name, use_mmap)
        except BaseException:
            self._close_irq_fds()
            for window in self._windows:
                window.close()
            backend.close()
            raise

    def _setup(self, backend: VfioDeviceBackend, name: str, use_mmap: bool) -> None:
        info = backend.device_info()
        if not info.is_pci or info.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX:
            raise UsageError(f"backend is not a vfio-pci device (flags {info.flags:#x}, {info.num_regions} regions)")
        config_info = backend.region_info(VFIO_PCI_CONFIG_REGION_INDEX)
        if config_info.size < pcidefs.PCI_CONFIG_SPACE_SIZE:
            raise UsageError(f"config region is only {config_info.size} bytes")
        size = pcidefs.PCI_EXP_CONFIG_SPACE_SIZE if config_info.size >= pcidefs.PCI_EXP_CONFIG_SPACE_SIZE else pcidefs.PCI_CONFIG_SPACE_SIZE
        image = backend.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, size)
        if image[pcidefs.PCI_HEADER_TYPE] & 0x7F != pcidefs.PCI_HEADER_TYPE_NORMAL:
            raise UsageError(f"only type-0 functions can be passed through (header type {image[pcidefs.PCI_HEADER_TYPE]:#x})")

        def field(offset: int, length: int) -> int:
            return int.from_bytes(image[offset : offset + length], "little")

        vendor, device = field(pcidefs.PCI_VENDOR_ID, 2), field(pcidefs.PCI_DEVICE_ID, 2)
        self._intx_available = info.num_irqs > VFIO_PCI_INTX_IRQ_INDEX and backend.irq_info(VFIO_PCI_INTX_IRQ_INDEX).count > 0
        pin = image[pcidefs.PCI_INTERRUPT_PIN]
        pin = pin if 1 <= pin <= 4 and self._intx_available else 0
        super().__init__(
            vendor,
            device,
            field(pcidefs.PCI_CLASS_PROG, 3),
            revision=image[pcidefs.PCI_REVISION_ID],
            subsystem_vendor_id=field(pcidefs.PCI_SUBSYSTEM_VENDOR_ID, 2),
            subsystem_id=field(pcidefs.PCI_SUBSYSTEM_ID, 2),
            interrupt_pin=pin,
            express=size == pcidefs.PCI_EXP_CONFIG_SPACE_SIZE,
            name=name or f"vfio-{vendor:04x}:{device:04x}",
        )
        self.backend = backend
        self.device_info = info
        self.host_error: HostError | None = None
        self.irq_mode: IrqMode | None = None
        self._intx_pending = False
        self.policy = ConfigPolicy(size)
        self.caps = self._placed = PlacedCapabilityList(self.config)
        self.config.data[:] = image
        self.config.set(pcidefs.PCI_COMMAND, 2, 0)
        self.config.set(pcidefs.PCI_INTERRUPT_PIN, 1, pin)
        self._virtualize_header()
        self._declare_bars(image, use_mmap)
        self._declare_capabilities(image)
        self.region_write_config(pcidefs.PCI_COMMAND, (0).to_bytes(2, "little"))
        self._set_irq_mode(self._wanted_irq_mode())

    # -- construction ---------------------------------------------------------------------

    def _virtualize_header(self) -> None:
        policy, config = self.policy, self.config
        policy.emulate(pcidefs.PCI_BASE_ADDRESS_0, 4 * pcidefs.PCI_NUM_BARS)
        policy.emulate(pcidefs.PCI_ROM_ADDRESS, 4)
        config.set(pcidefs.PCI_ROM_ADDRESS, 4, 0)  # no ROM is exposed
        policy.emulate(pcidefs.PCI_CAPABILITY_LIST, 1)
        policy.emulate(pcidefs.PCI_INTERRUPT_LINE, 1)
        policy.emulate(pcidefs.PCI_HEADER_TYPE, 1, pcidefs.PCI_HEADER_TYPE_MULTI_FUNCTION)
        config.set_bits(pcidefs.PCI_HEADER_TYPE, 1, pcidefs.PCI_HEADER_TYPE_MULTI_FUNCTION, False)
        if not self.config.get(pcidefs.PCI_INTERRUPT_PIN, 1):
            policy.emulate(pcidefs.PCI_INTERRUPT_PIN, 1)
        policy.emulate(pcidefs.PCI_STATUS, 1, pcidefs.PCI_STATUS_CAP_LIST, forward=True)
        config.set(pcidefs.PCI_CAPABILITY_LIST, 1, 0)
        config.set_bits(pcidefs.PCI_STATUS, 2, pcidefs.PCI_STATUS_CAP_LIST, False)
        for offset in range(pcidefs.PCI_BASE_ADDRESS_0, pcidefs.PCI_BASE_ADDRESS_0 + 4 * pcidefs.PCI_NUM_BARS, 4):
            config.set(offset, 4, 0)

    def _declare_bars(self, image: bytes, use_mmap: bool) -> None:
        index = 0
        while index < pcidefs.PCI_NUM_BARS:
            raw = int.from_bytes(image[pcidefs.PCI_BASE_ADDRESS_0 + 4 * index : pcidefs.PCI_BASE_ADDRESS_0 + 4 * index + 4], "little")
            is_io = bool(raw & pcidefs.PCI_BASE_ADDRESS_SPACE_IO)
            is_64 = not is_io and raw & 0b110 == pcidefs.PCI_BASE_ADDRESS_MEM_TYPE_64 and index < pcidefs.PCI_NUM_BARS - 1
            region = self.backend.region_info(index) if index < self.device_info.num_regions else None
            if region is not None and region.size:
                size = max(1 << (region.size - 1).bit_length(), 4 if is_io else 16)
                kind = BarKind.IO if is_io else BarKind.MEM64 if is_64 else BarKind.MEM32
                areas = self._map_areas(region) if use_mmap else []
                window = _RegionWindow(self, index, areas)
                self._windows.append(window)
                self.add_bar(index, size, window, kind, prefetchable=bool(raw & pcidefs.PCI_BASE_ADDRESS_MEM_PREFETCH) and not is_io)
            index += 2 if is_64 else 1

    def _map_areas(self, region: RegionInfo) -> list[tuple[int, mmap.mmap]]:
        areas = []
        for offset, length in region.mmap_areas():
            mapped = self.backend.region_mmap(region.index, offset, length)
            if mapped is not None:
                areas.append((offset, mapped))
        return areas

    def _declare_capabilities(self, image: bytes) -> None:
        config, placed = self.config, self._placed
        for entry in walk_capabilities(image):
            try:
                if entry.cap_id == pcidefs.PCI_CAP_ID_MSI and self.msi is None:
                    control = int.from_bytes(image[entry.offset + 2 : entry.offset + 4], "little")
                    placed.placement[pcidefs.PCI_CAP_ID_MSI] = entry.offset
                    self.msi = MsiCapability(
                        config,
                        placed,
                        min(1 << ((control & pcidefs.PCI_MSI_FLAGS_QMASK) >> 1), 32),
                        is_64bit=bool(control & pcidefs.PCI_MSI_FLAGS_64BIT),
                        per_vector_mask=bool(control & pcidefs.PCI_MSI_FLAGS_MASKBIT),
                    )
                    self.policy.emulate(entry.offset, msi_length(control))
                elif entry.cap_id == pcidefs.PCI_CAP_ID_MSIX and self.msix is None:
                    self._declare_msix(image, entry.offset)
                else:
                    placed.add(entry.cap_id, max(2, entry.span), entry.offset)
            except UsageError as exc:
                placed.placement.clear()
                if _tp_hidden.on:
                    _tp_hidden.emit(function=self.name, cap=entry.cap_id, offset=entry.offset, reason=str(exc))
                continue
            self.policy.emulate(entry.offset, 2)

    def _declare_msix(self, image: bytes, offset: int) -> None:
        def dword(at: int) -> int:
            return int.from_bytes(image[at : at + 4], "little")

        control = int.from_bytes(image[offset + 2 : offset + 4], "little")
        table, pba = dword(offset + pcidefs.PCI_MSIX_TABLE), dword(offset + pcidefs.PCI_MSIX_PBA)
        bir = table & 0b111
        if pba & 0b111 != bir:
            raise UsageError("MSI-X table and PBA in different BARs are not supported")
        bar = self.bars[bir] if bir < pcidefs.PCI_NUM_BARS else None
        if bar is None or bar.is_io:
            raise UsageError(f"MSI-X table BAR{bir} is not a memory BAR")
        vectors = (control & pcidefs.PCI_MSIX_FLAGS_QSIZE) + 1
        table_offset, pba_offset = table & ~0b111, pba & ~0b111
        end = max(table_offset + vectors * pcidefs.PCI_MSIX_ENTRY_SIZE, pba_offset + (vectors + 63) // 64 * 8)
        if end > bar.size:
            raise UsageError(f"MSI-X table/PBA do not fit BAR{bir}")
        self._placed.placement[pcidefs.PCI_CAP_ID_MSIX] = offset
        self.msix = MsixCapability(self.config, self._placed, vectors, bir, table_offset, pba_offset)
        self.policy.emulate(offset, 12)

    # -- config space (rule 1) ------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """A config read: emulated bits from the virtual copy, the rest from the device."""
        virtual = super().config_read(offset, size)
        if offset < 0 or size <= 0 or offset >= self.config.size:
            return virtual
        length = min(offset + size, self.config.size) - offset
        full = (1 << (8 * length)) - 1
        emulated = self.policy.emulated_mask(offset, length)
        if emulated == full:
            return virtual
        try:
            device = int.from_bytes(self.backend.region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset, length), "little")
        except HostError as exc:
            self._host_failed(exc)
            device = full
        return (device & ~emulated & full) | (virtual & emulated)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A config write: the virtual copy first, then forwarded bytes, then interrupts."""
        super().config_write(offset, size, value)
        if offset < 0 or size <= 0 or offset >= self.config.size:
            return
        for start, length in self.policy.forwarded_runs(offset, size):
            part = (value >> (8 * (start - offset))) & ((1 << (8 * length)) - 1)
            self.region_write_config(start, part.to_bytes(length, "little"))
        wanted = self._wanted_irq_mode()
        if wanted != self.irq_mode or (wanted == "msi" and self._msi_vectors_wired() != self._wanted_vectors("msi")):
            self._set_irq_mode(wanted)

    def region_write_config(self, offset: int, data: bytes) -> None:
        """Write the device's real config space (rule 5 applies)."""
        try:
            self.backend.region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset, data)
        except HostError as exc:
            self._host_failed(exc)

    # -- BARs (rule 2) --------------------------------------------------------------------

    def bar_read(self, index: int, offset: int, size: int) -> int:
        """A BAR read (then INTx EOI, rule 4)."""
        value = super().bar_read(index, offset, size)
        if self._intx_pending:
            self._intx_eoi()
        return value

    def bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        """A BAR write (then INTx EOI, rule 4)."""
        super().bar_write(index, offset, size, value)
        if self._intx_pending:
            self._intx_eoi()

    def _region_read_int(self, index: int, offset: int, size: int) -> int:
        try:
            data = self.backend.region_read(index, offset, size)
        except HostError as exc:
            self._host_failed(exc)
            return (1 << (8 * size)) - 1
        return int.from_bytes(data, "little")

    def _region_write_int(self, index: int, offset: int, size: int, value: int) -> None:
        try:
            self.backend.region_write(index, offset, value.to_bytes(size, "little"))
        except HostError as exc:
            self._host_failed(exc)

    def _host_failed(self, exc: HostError) -> None:
        self.host_error = exc
        if _tp_host_error.on:
            _tp_host_error.emit(function=self.name, error=str(exc))

    # -- interrupts (rules 3, 4) ----------------------------------------------------------

    def _wanted_irq_mode(self) -> IrqMode | None:
        if self.msix is not None and self.msix.enabled:
            return "msix"
        if self.msi is not None and self.msi.enabled:
            return "msi"
        if self.config.get(pcidefs.PCI_INTERRUPT_PIN, 1):
            return "intx"
        return None

    def _wanted_vectors(self, mode: IrqMode) -> int:
        if mode == "msix" and self.msix is not None:
            return self.msix.vectors
        if mode == "msi" and self.msi is not None:
            return self.msi.enabled_vectors
        return 1

    def _msi_vectors_wired(self) -> int:
        return sum(1 for kind, _ in self._irq_fds.values() if kind == "msi")

    def _set_irq_mode(self, mode: IrqMode | None) -> None:
        """Unwire the current index and wire ``mode``'s vectors to fresh eventfds."""
        try:
            if self.irq_mode is not None:
                self.backend.set_irqs(_INDEX_OF[self.irq_mode], VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)
        except HostError as exc:
            self._host_failed(exc)
        self._close_irq_fds()
        self.irq_mode = None
        if self._intx_pending:
            self._intx_pending = False
            self.set_intx(False)
        if mode is None:
            return
        count = self._wanted_vectors(mode)
        fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(count)]
        self._irq_fds = {fd: (mode, vector) for vector, fd in enumerate(fds)}
        try:
            self.backend.set_irqs(_INDEX_OF[mode], VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, count, fds=fds)
        except HostError as exc:
            self._close_irq_fds()
            self._host_failed(exc)
            return
        self.irq_mode = mode
        if _tp_irq.on:
            _tp_irq.emit(function=self.name, mode=mode, vectors=count)

    def _close_irq_fds(self) -> None:
        for fd in self._irq_fds:
            os.close(fd)
        self._irq_fds = {}

    def interrupt_fds(self) -> list[int]:
        """The eventfds the VMM should poll; when one is readable call ``service_interrupts``."""
        return list(self._irq_fds)

    def service_interrupts(self) -> int:
        """Consume fired eventfds and deliver them (rules 3, 4); return how many fired."""
        fired = 0
        for fd, (mode, vector) in list(self._irq_fds.items()):
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                continue
            fired += 1
            if mode == "intx":
                self._intx_pending = True
                self.set_intx(True)
            else:
                self.signal(vector)
        return fired

    def _intx_eoi(self) -> None:
        self._intx_pending = False
        self.set_intx(False)
        try:
            self.backend.set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1)
        except HostError as exc:
            self._host_failed(exc)

    # -- DMA, reset, lifetime -------------------------------------------------------------

    def map_memory(self, memory: GuestMemory) -> None:
        """Let the device DMA to every region of ``memory`` at its guest-physical address."""
        for region in memory.regions:
            self.backend.dma_map(region, region.base, readable=True, writable=not region.readonly)

    def unmap_memory(self, memory: GuestMemory) -> None:
        """Withdraw the windows ``map_memory`` created."""
        for region in memory.regions:
            self.backend.dma_unmap(region.base, region.size)

    def reset(self) -> None:
        """Reset the device (if it supports it) and the virtual function; back to INTx."""
        if self.device_info.can_reset:
            try:
                self.backend.reset()
            except HostError as exc:
                self._host_failed(exc)
        self.reset_function()
        self.region_write_config(pcidefs.PCI_COMMAND, (0).to_bytes(2, "little"))
        self._set_irq_mode(self._wanted_irq_mode())

    def close(self) -> None:
        """Unwire interrupts, unmap BARs and release the backend (rule 6)."""
        try:
            if self.irq_mode is not None:
                self.backend.set_irqs(_INDEX_OF[self.irq_mode], VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)
        except HostError:
            pass
        self.irq_mode = None
        self._close_irq_fds()
        for window in self._windows:
            window.close()
        self._windows = []
        self.backend.close()
