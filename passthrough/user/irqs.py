"""Server side of vfio-user interrupts: a devmodels ``PciFunction``'s INTx/MSI/MSI-X out to
the client's eventfds, following kernel vfio-pci semantics (``linux/vfio.h`` SET_IRQS).

Design (why the function's own MSI machinery is kept and fed tagged messages):

A devmodels function signals through its own MSI/MSI-X capability: ``signal(v)`` checks
Enable, the per-vector and function masks, the pending bits and Bus Master Enable, and
only then calls ``msi_sink.deliver_msi(address, data)``; unmasking later flushes pending
vectors the same way. Devices also look at ``msix_enabled`` to choose between MSI-X and
INTx. So the server keeps that machinery and programs it itself, as the kernel's vfio-pci
programs the real capability: when the client wires MSI-X vector *v* to an eventfd
(``SET_IRQS``), the server sets MSI-X Enable in the function's config and writes table
entry *v* = (``MSI_TAG_ADDRESS``, data *v*, unmasked). Every message that reaches the
sink therefore names its vector exactly in ``data``, and ``VectorEventfds`` writes
eventfd *v*. MSI is programmed the same way (address tag, data 0, so vector *v* sends
data *v*). The client keeps the guest-visible MSI/MSI-X state (capabilities, table,
masks) on its side, as every VFIO client does; the server ignores client config writes
to those capabilities (``VfioUserServer`` rule 5), as the kernel virtualizes them.

Rules:

1. INTx is level-triggered and ``AUTOMASKED``: when the line rises while unmasked, the
   eventfd is written once and INTx masks itself; ``UNMASK`` re-arms it and, if the line
   is still asserted, fires again at once. It is also ``MASKABLE``.
2. One of INTx, MSI, MSI-X is active at a time; wiring eventfds to another index while one
   is active fails with ``EINVAL``, as in vfio-pci. ``DATA_NONE|ACTION_TRIGGER`` with
   ``count == 0`` disables an index.
3. Eventfds are written non-blocking; a full or broken fd drops the interrupt with a
   trace event and never stalls the server.
4. ERR and REQ are vfio-pci's out-of-band notifications, one eventfd each, count 1
   (``GET_IRQ_INFO``: ERR is ``EVENTFD|NORESIZE``, REQ ``EVENTFD``, as the kernel's
   ``vfio_pci_ioctl_get_irq_info`` reports them; the kernel offers ERR only on PCI
   Express functions, for AER, but the notification is the server's and any function can
   fail, so every function has one). They are independent of the INTx/MSI/MSI-X choice
   of rule 2 and not maskable. The server signals ERR when the device has failed
   unrecoverably (``signal_err``; QEMU stops the VM on it) and REQ when it wants the
   device back (``signal_req``; QEMU requests a hot-unplug).
5. ``DATA_EVENTFD`` on MSI or MSI-X enables the index even where every descriptor is -1
   (QEMU sends that when the guest enables MSI-X with all vectors masked), as vfio-pci
   enables the capability. An MSI-X vector without an eventfd is masked in the function's
   table, so a message for it stays pending in the PBA; wiring an eventfd unmasks it and
   delivers what was pending. Only ``DATA_NONE`` with count 0 disables an index (rule 2).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Sequence

from devmodels import trace
from devmodels.pci import defs as pcidefs, PciFunction

from ..backend import IrqInfo
from ..defs import (
    VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_REQ_IRQ_INDEX,
)
from ..errors import VfioUserReject
from .framing import close_fds

__all__ = ["MSI_TAG_ADDRESS", "signal_eventfd", "IntxEventfd", "VectorEventfds", "ServerInterrupts"]

MSI_TAG_ADDRESS = 0xFEE0_0000
_MSIX_ENTRY = struct.Struct("<IIII")
_EVENTFD_ONE = (1).to_bytes(8, "little")

_tp_drop = trace.tracepoint("vfio_user.irq_dropped")


def signal_eventfd(fd: int) -> bool:
    """Add 1 to an eventfd without blocking (rule 3); ``False`` if it could not."""
    try:
        os.write(fd, _EVENTFD_ONE)
    except OSError as exc:
        if _tp_drop.on:
            _tp_drop.emit(fd=fd, error=str(exc))
        return False
    return True


def _adopt(fd: int) -> int:
    """Make a received eventfd non-blocking (rule 3) and return it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return fd


class IntxEventfd:
    """The function's INTx pin as a ``LevelSink`` writing an eventfd (rule 1)."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.level = False
        self.masked = False
        self.fired = 0

    def set_level(self, asserted: bool) -> None:
        """Follow the function's INTx level."""
        self.level = bool(asserted)
        if self.level:
            self._fire()

    def _fire(self) -> None:
        if self.fd is not None and not self.masked:
            self.masked = True
            self.fired += 1
            signal_eventfd(self.fd)

    def mask(self) -> None:
        """``ACTION_MASK``."""
        self.masked = True

    def unmask(self) -> None:
        """``ACTION_UNMASK``: re-arm; fire now if the line is still asserted."""
        self.masked = False
        if self.level:
            self._fire()

    def set_fd(self, fd: int | None) -> None:
        """Wire (or, with ``None``, unwire) the trigger eventfd; the old one is closed."""
        if self.fd is not None and self.fd != fd:
            close_fds([self.fd])
        self.fd = fd
        self.masked = False
        if fd is not None and self.level:
            self._fire()


class VectorEventfds:
    """The function's ``msi_sink``: a tagged message's data is the vector to signal."""

    def __init__(self) -> None:
        self.fds: list[int | None] = []
        self.delivered = 0

    def deliver_msi(self, address: int, data: int) -> None:
        """Write the eventfd of vector ``data`` (messages not tagged by us are dropped)."""
        if address != MSI_TAG_ADDRESS or not 0 <= data < len(self.fds) or self.fds[data] is None:
            if _tp_drop.on:
                _tp_drop.emit(address=address, data=data, reason="no eventfd for this message")
            return
        fd = self.fds[data]
        assert fd is not None
        self.delivered += 1
        signal_eventfd(fd)

    def close(self) -> None:
        """Close every vector eventfd."""
        close_fds(fd for fd in self.fds if fd is not None)
        self.fds = []


class ServerInterrupts:
    """Implements ``GET_IRQ_INFO``/``SET_IRQS`` for one function (rules 1–3).

    Installs itself as the function's ``intx`` and ``msi_sink``.
    """

    def __init__(self, function: PciFunction) -> None:
        self.function = function
        self.intx = IntxEventfd()
        self.vectors = VectorEventfds()
        self.active: int | None = None  # VFIO_PCI_{INTX,MSI,MSIX}_IRQ_INDEX or None
        self.notify: dict[int, int | None] = {VFIO_PCI_ERR_IRQ_INDEX: None, VFIO_PCI_REQ_IRQ_INDEX: None}  # rule 4
        function.intx = self.intx
        function.msi_sink = self.vectors

    # -- GET_IRQ_INFO ---------------------------------------------------------------------

    def count(self, index: int) -> int:
        """How many interrupts index ``index`` has."""
        fn = self.function
        if index == VFIO_PCI_INTX_IRQ_INDEX:
            return 1 if fn.config.get(pcidefs.PCI_INTERRUPT_PIN, 1) else 0
        if index == VFIO_PCI_MSI_IRQ_INDEX:
            return fn.msi.vectors if fn.msi is not None else 0
        if index == VFIO_PCI_MSIX_IRQ_INDEX:
            return fn.msix.vectors if fn.msix is not None else 0
        return 1 if index in self.notify else 0

    def info(self, index: int) -> IrqInfo:
        """``struct vfio_irq_info`` for ``index``.

        Raises:
            VfioUserReject: no such index.
        """
        if not 0 <= index < VFIO_PCI_NUM_IRQS:
            raise VfioUserReject(errno.EINVAL, f"IRQ index {index} does not exist")
        flags = VFIO_IRQ_INFO_EVENTFD
        if index == VFIO_PCI_INTX_IRQ_INDEX:
            flags |= VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED
        elif index in (VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_ERR_IRQ_INDEX):
            flags |= VFIO_IRQ_INFO_NORESIZE
        return IrqInfo(index, flags, self.count(index))

    # -- SET_IRQS -------------------------------------------------------------------------

    def set_irqs(self, index: int, flags: int, start: int, count: int, data: bytes, fds: Sequence[int]) -> list[int]:
        """Apply one ``SET_IRQS``; return the fds now owned here (the caller closes the rest).

        Raises:
            VfioUserReject: the request is invalid for this function.
        """
        if not 0 <= index < VFIO_PCI_NUM_IRQS:
            raise VfioUserReject(errno.EINVAL, f"IRQ index {index} does not exist")
        data_kind = flags & VFIO_IRQ_SET_DATA_TYPE_MASK
        action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK
        if flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise VfioUserReject(errno.EINVAL, f"unknown SET_IRQS flags {flags:#x}")
        if data_kind not in (VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD):
            raise VfioUserReject(errno.EINVAL, "SET_IRQS needs exactly one DATA flag")
        if action not in (VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_ACTION_TRIGGER):
            raise VfioUserReject(errno.EINVAL, "SET_IRQS needs exactly one ACTION flag")
        available = self.count(index)
        # linux/vfio.h: count 0 with DATA_NONE|ACTION_TRIGGER disables the whole index.
        if count == 0:
            if data_kind != VFIO_IRQ_SET_DATA_NONE or action != VFIO_IRQ_SET_ACTION_TRIGGER or start != 0 or fds:
                raise VfioUserReject(errno.EINVAL, "count 0 is only valid to disable an index (DATA_NONE|TRIGGER)")
            self._disable(index)
            return []
        # start and count are u32 from the wire; Python ints do not wrap, so the sum is exact.
        if start + count > available:
            raise VfioUserReject(errno.EINVAL, f"IRQ index {index}: [{start}, +{count}) exceeds {available} interrupts")
        if data_kind == VFIO_IRQ_SET_DATA_BOOL and len(data) != count:
            raise VfioUserReject(errno.EINVAL, f"DATA_BOOL needs {count} bytes, got {len(data)}")
        if data_kind != VFIO_IRQ_SET_DATA_EVENTFD and fds:
            raise VfioUserReject(errno.EINVAL, "file descriptors sent without DATA_EVENTFD")
        if data_kind == VFIO_IRQ_SET_DATA_EVENTFD and fds and len(fds) != count:
            raise VfioUserReject(errno.EINVAL, f"DATA_EVENTFD needs {count} descriptors, got {len(fds)}")
        selected = [i for i in range(count) if data_kind != VFIO_IRQ_SET_DATA_BOOL or data[i]]
        if index in self.notify:
            return self._notification(index, action, data_kind, bool(selected), fds)
        if action != VFIO_IRQ_SET_ACTION_TRIGGER:
            return self._mask_action(index, action, data_kind, bool(selected))
        if data_kind == VFIO_IRQ_SET_DATA_EVENTFD:
            return self._wire(index, start, count, fds)
        self._loopback(index, [start + i for i in selected])
        return []

    def _notification(self, index: int, action: int, data_kind: int, selected: bool, fds: Sequence[int]) -> list[int]:
        """SET_IRQS on ERR or REQ (rule 4): wire, unwire or loop back one eventfd."""
        if action != VFIO_IRQ_SET_ACTION_TRIGGER:
            raise VfioUserReject(errno.EINVAL, f"IRQ index {index} is not maskable")
        if data_kind != VFIO_IRQ_SET_DATA_EVENTFD:
            if selected:
                self._signal(index)
            return []
        try:
            kept = [_adopt(fd) for fd in fds if fd >= 0]
        except OSError as exc:
            raise VfioUserReject(errno.EBADF, f"unusable eventfd: {exc}") from None
        old = self.notify[index]
        if old is not None and old not in kept:
            close_fds([old])
        self.notify[index] = kept[0] if kept else None
        return kept

    def _signal(self, index: int) -> bool:
        fd = self.notify[index]
        return fd is not None and signal_eventfd(fd)

    def signal_err(self) -> bool:
        """Tell the client the device failed unrecoverably (rule 4); whether an fd was written."""
        return self._signal(VFIO_PCI_ERR_IRQ_INDEX)

    def signal_req(self) -> bool:
        """Ask the client to release the device (rule 4); whether an fd was written."""
        return self._signal(VFIO_PCI_REQ_IRQ_INDEX)

    def _mask_action(self, index: int, action: int, data_kind: int, selected: bool) -> list[int]:
        if index != VFIO_PCI_INTX_IRQ_INDEX:
            raise VfioUserReject(errno.EINVAL, f"IRQ index {index} is not maskable")
        if data_kind == VFIO_IRQ_SET_DATA_EVENTFD:
            raise VfioUserReject(errno.EINVAL, "mask/unmask eventfds (irqfd resample) are not supported")
        if not selected:
            return []
        if action == VFIO_IRQ_SET_ACTION_MASK:
            self.intx.mask()
        else:
            self.intx.unmask()
        return []

    def _loopback(self, index: int, vectors: list[int]) -> None:
        """``DATA_NONE``/``DATA_BOOL`` with ``TRIGGER``: signal the wired eventfds."""
        if index == VFIO_PCI_INTX_IRQ_INDEX:
            if self.intx.fd is not None and vectors:
                signal_eventfd(self.intx.fd)
            return
        if self.active == index:
            for v in vectors:
                fd = self.vectors.fds[v] if v < len(self.vectors.fds) else None
                if fd is not None:
                    signal_eventfd(fd)

    def _wire(self, index: int, start: int, count: int, fds: Sequence[int]) -> list[int]:
        if self.active is not None and self.active != index:
            raise VfioUserReject(errno.EINVAL, f"IRQ index {self.active} is active; disable it first")
        try:
            kept = [_adopt(fd) for fd in fds if fd >= 0]
        except OSError as exc:
            raise VfioUserReject(errno.EBADF, f"unusable eventfd: {exc}") from None
        if index == VFIO_PCI_INTX_IRQ_INDEX:
            self.intx.set_fd(fds[0] if fds and fds[0] >= 0 else None)
            self.active = index if self.intx.fd is not None else None
            return kept
        slots = self.vectors.fds
        fresh = self.active != index
        if fresh:
            self.vectors.close()
            slots = self.vectors.fds = [None] * self.count(index)
        for i in range(count):
            old = slots[start + i]
            new = fds[i] if fds and fds[i] >= 0 else None
            if old is not None and old != new:
                close_fds([old])
            slots[start + i] = new
        # Rule 5: the index is enabled even with no eventfd yet (vfio-pci enables the
        # capability; a vector without a trigger is masked, so its messages wait as pending).
        self.active = index
        if fresh:
            self._program(index, enable=True)
        else:
            self._mask_unwired(index, range(start, start + count))
        return kept

    def _mask_unwired(self, index: int, vectors: range) -> None:
        """MSI-X vectors without an eventfd masked, the others unmasked (rule 5), through the
        function's own table so that unmasking delivers what is pending."""
        msix = self.function.msix
        if index != VFIO_PCI_MSIX_IRQ_INDEX or msix is None:
            return
        for v in vectors:
            wired = self.vectors.fds[v] is not None
            offset = msix.table_offset + v * pcidefs.PCI_MSIX_ENTRY_SIZE + pcidefs.PCI_MSIX_ENTRY_VECTOR_CTRL
            self.function.bar_write(msix.bar, offset, 4, 0 if wired else pcidefs.PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def _disable(self, index: int) -> None:
        if index in self.notify:
            old = self.notify[index]
            if old is not None:
                close_fds([old])
            self.notify[index] = None
            return
        if index == VFIO_PCI_INTX_IRQ_INDEX:
            self.intx.set_fd(None)
        elif self.active == index:
            self.vectors.close()
            self._program(index, enable=False)
        if self.active == index:
            self.active = None

    def reapply(self) -> None:
        """Program the function again after its reset cleared MSI/MSI-X state."""
        if self.active in (VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX):
            self._program(self.active, enable=True)

    def close(self) -> None:
        """Unwire everything (client disconnect); the function keeps its other state."""
        for index in (VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX):
            self._disable(index)
        self.vectors.close()
        for index in self.notify:
            self._disable(index)

    # -- programming the function's own capability (see the module docstring) ------------

    def _program(self, index: int, enable: bool) -> None:
        fn = self.function
        config = fn.config
        if index == VFIO_PCI_MSIX_IRQ_INDEX and fn.msix is not None:
            msix = fn.msix
            control = config.get(msix.offset + pcidefs.PCI_MSIX_FLAGS, 2)
            control &= ~(pcidefs.PCI_MSIX_FLAGS_ENABLE | pcidefs.PCI_MSIX_FLAGS_MASKALL)
            control |= pcidefs.PCI_MSIX_FLAGS_ENABLE if enable else 0
            config.set(msix.offset + pcidefs.PCI_MSIX_FLAGS, 2, control)
            for v in range(msix.vectors):
                if enable:
                    has_fd = v < len(self.vectors.fds) and self.vectors.fds[v] is not None
                    control = 0 if has_fd else pcidefs.PCI_MSIX_ENTRY_CTRL_MASKBIT  # rule 5
                    _MSIX_ENTRY.pack_into(msix.table, v * pcidefs.PCI_MSIX_ENTRY_SIZE, MSI_TAG_ADDRESS, 0, v, control)
                else:
                    _MSIX_ENTRY.pack_into(
                        msix.table, v * pcidefs.PCI_MSIX_ENTRY_SIZE, 0, 0, 0, pcidefs.PCI_MSIX_ENTRY_CTRL_MASKBIT
                    )
            msix.pba[:] = bytes(len(msix.pba))
        elif index == VFIO_PCI_MSI_IRQ_INDEX and fn.msi is not None:
            msi = fn.msi
            base = msi.offset
            wired = max(1, len(self.vectors.fds))
            mme = (wired - 1).bit_length()  # log2 of the next power of two
            control = config.get(base + pcidefs.PCI_MSI_FLAGS, 2)
            control &= ~(pcidefs.PCI_MSI_FLAGS_ENABLE | pcidefs.PCI_MSI_FLAGS_QSIZE)
            if enable:
                control |= pcidefs.PCI_MSI_FLAGS_ENABLE | (mme << 4)
            config.set(base + pcidefs.PCI_MSI_FLAGS, 2, control)
            # PCI 3.0 §6.8.1: address (+4, +8 if 64-bit), data, then mask and pending.
            config.set(base + pcidefs.PCI_MSI_ADDRESS_LO, 4, MSI_TAG_ADDRESS if enable else 0)
            data_offset = base + (12 if msi.is_64bit else 8)
            if msi.is_64bit:
                config.set(base + 8, 4, 0)
            config.set(data_offset, 2, 0)
            if msi.per_vector_mask:
                config.set(data_offset + 4, 4, 0)
                config.set(data_offset + 8, 4, 0)
