"""kvm._irqs: INTx by KVM_IRQ_LINE, MSI by irqfd routes with KVM_SIGNAL_MSI as the fallback (rules 2-3).

A recording stand-in for ``Vm`` shows which KVM call each interrupt takes; the integration
tests run the same paths on the host's KVM.
"""

from __future__ import annotations

import errno
import os

import pytest

import kvm._irqs as irqs
from devmodels import MsiMessage
from kvm import KvmError, KvmInterrupts


class RecordingVm:
    def __init__(self, refuse_routes: bool = False) -> None:
        self.refuse_routes = refuse_routes
        self.lines: list[tuple[int, bool]] = []
        self.signalled: list[tuple[int, int]] = []
        self.routes: list[list[tuple[int, int, int]]] = []
        self.irqfds: dict[int, int] = {}  # gsi -> fd

    def irq_line(self, gsi: int, level: bool) -> None:
        self.lines.append((gsi, level))

    def signal_msi(self, address: int, data: int) -> bool:
        self.signalled.append((address, data))
        return True

    def set_msi_routes(self, routes: list[tuple[int, int, int]]) -> None:
        if self.refuse_routes:
            raise KvmError("KVM_SET_GSI_ROUTING", errno.EINVAL)
        self.routes.append(list(routes))

    def irqfd(self, fd: int, gsi: int, *, resample_fd: int | None = None, deassign: bool = False) -> None:
        if deassign:
            del self.irqfds[gsi]
        else:
            self.irqfds[gsi] = fd


def test_rule_2_intx_levels_go_to_irq_line() -> None:
    vm = RecordingVm()
    KvmInterrupts(vm).level(17, True)  # type: ignore[arg-type]
    assert vm.lines == [(17, True)]


def test_rule_3_each_distinct_message_gets_one_route_and_one_irqfd() -> None:
    vm = RecordingVm()
    interrupts = KvmInterrupts(vm, "irqfd")  # type: ignore[arg-type]
    first, second = MsiMessage(0xFEE0_0000, 0x40), MsiMessage(0xFEE0_0000, 0x41)
    for message in (first, first, second, first):
        interrupts.msi(message)
    assert interrupts.msi_irqfd == 4 and vm.signalled == []
    assert vm.routes[-1] == [(24, 0xFEE0_0000, 0x40), (24 + 1, 0xFEE0_0000, 0x41)]
    assert sorted(vm.irqfds) == [24, 25]
    assert os.eventfd_read(vm.irqfds[24]) == 3  # three messages on the first route
    interrupts.close()
    assert vm.irqfds == {}


def test_rule_3_beyond_the_route_limit_messages_are_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(irqs, "MAX_ROUTES", 1)
    vm = RecordingVm()
    interrupts = KvmInterrupts(vm, "irqfd")  # type: ignore[arg-type]
    interrupts.msi(MsiMessage(0xFEE0_0000, 0x40))
    interrupts.msi(MsiMessage(0xFEE0_0000, 0x41))
    assert interrupts.msi_irqfd == 1 and vm.signalled == [(0xFEE0_0000, 0x41)]
    interrupts.close()


def test_rule_3_a_refused_route_makes_every_later_message_signalled() -> None:
    vm = RecordingVm(refuse_routes=True)
    interrupts = KvmInterrupts(vm, "irqfd")  # type: ignore[arg-type]
    interrupts.msi(MsiMessage(0xFEE0_0000, 0x40))
    interrupts.msi(MsiMessage(0xFEE0_0000, 0x41))
    assert interrupts.mode == "signal" and interrupts.msi_irqfd == 0
    assert vm.signalled == [(0xFEE0_0000, 0x40), (0xFEE0_0000, 0x41)]
    assert vm.irqfds == {}


def test_signal_mode_never_makes_routes() -> None:
    vm = RecordingVm()
    interrupts = KvmInterrupts(vm, "signal")  # type: ignore[arg-type]
    interrupts.msi(MsiMessage(0xFEE0_0000, 0x40))
    assert vm.routes == [] and vm.signalled == [(0xFEE0_0000, 0x40)] and interrupts.msi_signalled == 1
