"""Interrupts from our devices into KVM's irqchip: INTx by ``KVM_IRQ_LINE``, MSI by
``KVM_SIGNAL_MSI`` or by irqfds on MSI routes.

Rules:

1. The machine's ``InterruptController`` stays the devices' sink (``devmodels.Machine``
   wires every PCI function to it); this module listens to it (``on_level``, ``on_msi``),
   so a level change or a message reaches KVM the moment a device signals it, on the
   thread that dispatched the access.
2. INTx: a GSI's level goes to ``KVM_IRQ_LINE`` (level-triggered I/O APIC pins; the line is
   already the wire-OR of its sources in ``IrqLine``).
3. MSI, ``signal`` mode: one ``KVM_SIGNAL_MSI`` per message. ``irqfd`` mode: each distinct
   (address, data) gets a GSI route (``KVM_SET_GSI_ROUTING``) and an eventfd bound to it
   (``KVM_IRQFD``), and a message is one eventfd write. The guest chooses the messages, so
   routes are bounded (``MAX_ROUTES``); a message beyond them, or any message after KVM
   refused a route, goes by ``KVM_SIGNAL_MSI``: the fallback is always there.
"""

from __future__ import annotations

import os
from typing import Literal

from devmodels import MsiMessage
from devmodels.trace import tracepoint

from ._ioctl import KvmError
from ._vm import IOAPIC_PINS, Vm

__all__ = ["MsiMode", "KvmInterrupts", "MAX_ROUTES"]

MsiMode = Literal["signal", "irqfd"]
MAX_ROUTES = 256

_tp_fallback = tracepoint("kvm.msi_fallback")


class KvmInterrupts:
    """Forwards a machine's interrupts to ``vm`` (rules 1-3).

    Attributes:
        msi_signalled: messages sent by ``KVM_SIGNAL_MSI``.
        msi_irqfd: messages sent through an irqfd.
        msi_blocked: messages KVM reported as not delivered (the guest's APIC refused them).
    """

    def __init__(self, vm: Vm, mode: MsiMode = "irqfd") -> None:
        self.vm = vm
        self.mode: MsiMode = mode
        self._routes: dict[tuple[int, int], int] = {}  # (address, data) -> eventfd
        self._gsis: list[tuple[int, int, int]] = []
        self.msi_signalled = 0
        self.msi_irqfd = 0
        self.msi_blocked = 0

    def level(self, gsi: int, asserted: bool) -> None:
        """An INTx line changed (rule 2)."""
        self.vm.irq_line(gsi, asserted)

    def msi(self, message: MsiMessage) -> None:
        """Deliver one message (rule 3)."""
        if self.mode == "irqfd":
            fd = self._routes.get(message)
            if fd is None:
                fd = self._add_route(message)
            if fd is not None:
                os.eventfd_write(fd, 1)
                self.msi_irqfd += 1
                return
        self.msi_signalled += 1
        if not self.vm.signal_msi(message.address, message.data):
            self.msi_blocked += 1

    def _add_route(self, message: MsiMessage) -> int | None:
        if len(self._routes) >= MAX_ROUTES:
            if _tp_fallback.on:
                _tp_fallback.emit(address=message.address, data=message.data, reason="route limit")
            return None
        gsi = IOAPIC_PINS + len(self._gsis)
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self.vm.set_msi_routes([*self._gsis, (gsi, message.address, message.data)])
            self.vm.irqfd(fd, gsi)
        except KvmError as exc:
            os.close(fd)
            self.mode = "signal"  # KVM refused: every later message takes the fallback (rule 3)
            if _tp_fallback.on:
                _tp_fallback.emit(address=message.address, data=message.data, reason=str(exc))
            return None
        self._gsis.append((gsi, message.address, message.data))
        self._routes[(message.address, message.data)] = fd
        return fd

    def close(self) -> None:
        """Unbind and close the irqfds."""
        for (gsi, _, _), fd in zip(self._gsis, self._routes.values(), strict=True):
            try:
                self.vm.irqfd(fd, gsi, deassign=True)
            except KvmError:
                pass  # the VM is going away anyway
            os.close(fd)
        self._routes.clear()
        self._gsis.clear()
