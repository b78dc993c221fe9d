"""The e1000 served over QEMU 7.2's multi-process protocol (mpqemu), driven by the in-package
Linux-like driver through ``FakeProxy``: every config cycle, register access and port I/O
travels the wire exactly as ``x-pci-proxy-dev`` sends it, guest RAM is a memfd shared the
way QEMU shares it, and INTx leaves through the irqfd.

The full guest boot (``test_e1000_guest.py``, ``@pytest.mark.guest``) needs the mpqemu CLI
to serve an e1000 with a network backend and a clock; see the lead's integration notes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devmodels import GuestMemory, MemoryRegion
from devmodels.backends.net import LoopbackBackend, Responder, arp_frame, icmp_echo_frame
from devmodels.e1000 import E1000
from devmodels.e1000 import regs as r
from devmodels.e1000.testing import E1000Driver
from devmodels.pci import FunctionInfo, Window, enumerate_bus0
from mpqemu.testing import Harness

RAM = 16 << 20
SLOT_DEVFN = 0x18  # the proxy's slot as the guest sees it
GUEST_IP = bytes([10, 0, 2, 15])
HOST_IP = bytes([10, 0, 2, 2])


class _Space:
    def __init__(self, harness: Harness, memory: bool) -> None:
        self._proxy = harness.proxy
        self._memory = memory

    def read(self, address: int, size: int) -> int:
        return self._proxy.bar_read(address, size, self._memory)

    def write(self, address: int, size: int, value: int) -> None:
        self._proxy.bar_write(address, value, size, self._memory)


class ProxyMachine:
    """The guest's side of a QEMU whose only PCI device is the proxied e1000."""

    def __init__(self, harness: Harness, memory: GuestMemory) -> None:
        self.harness = harness
        self.memory = memory
        self.mmio = _Space(harness, True)
        self.pio = _Space(harness, False)
        self.irq = self

    @property
    def levels(self) -> dict[int, bool]:
        """INTx as the guest would see it: the function's Status.INTERRUPT through the wire."""
        return {11: bool(self.harness.proxy.config_read(0x06, 2) & 0x08)}

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        if bus or devfn != SLOT_DEVFN:
            return (1 << (8 * size)) - 1
        return self.harness.proxy.config_read(offset, size)

    def config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        if not bus and devfn == SLOT_DEVFN:
            self.harness.proxy.config_write(offset, value, size)

    def enumerate(self) -> list[FunctionInfo]:
        return enumerate_bus0(self, io=Window(0xC000, 0x4000), mem32=Window(0xC000_0000, 0x1000_0000),
                              irq_of_pin={(SLOT_DEVFN >> 3, 1): 11})


@pytest.fixture
def served() -> Iterator[tuple[ProxyMachine, E1000, LoopbackBackend, int]]:
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, RAM)
    host, wire = LoopbackBackend.pair(capacity=1024)
    device_memory = GuestMemory()
    device = E1000(device_memory, wire)
    harness = Harness(function=device, memory=device_memory)
    guest_ram = GuestMemory([MemoryRegion.from_fd(0, RAM, fd)])
    harness.proxy.sync_sysmem([(0, RAM, 0, fd)])
    irqfd, resample = harness.proxy.set_irqfd()
    try:
        yield ProxyMachine(harness, guest_ram), device, host, irqfd
    finally:
        harness.close()
        guest_ram.close()
        for n in (fd, irqfd, resample):
            os.close(n)
        host.close()
        wire.close()


def _irqfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_linux_probe_open_ping_over_mpqemu(served: tuple[ProxyMachine, E1000, LoopbackBackend, int]) -> None:
    machine, device, host, irqfd = served
    drv = E1000Driver(machine, device)  # type: ignore[arg-type]
    drv.probe()  # reset through the I/O BAR, EEPROM bit-banged over the wire, PHY via MDIC
    assert drv.mac == device.eeprom.mac
    drv.open()
    assert _irqfd_count(irqfd) >= 1  # the forced LSC raised INTx through the irqfd
    drv.poll()
    assert drv.link
    responder = Responder(host, "10.0.2.2")
    drv.xmit(arp_frame(1, drv.mac, GUEST_IP, bytes(6), HOST_IP))
    responder.poll()
    device.receive_pending()
    (reply,) = [f.data for f in drv.poll()]
    host_mac = reply[22:28]
    for seq in range(5):
        drv.xmit(icmp_echo_frame(host_mac, drv.mac, GUEST_IP, HOST_IP, 7, seq, b"x" * 56))
    responder.poll()
    device.receive_pending()
    replies = drv.poll()
    assert len(replies) == 5 and all(f.data[34] == 0 for f in replies)
    assert responder.stats().icmp_replies == 5
    assert drv.er32(r.STATS_32["GPTC"]) == 6


def test_device_reset_over_mpqemu(served: tuple[ProxyMachine, E1000, LoopbackBackend, int]) -> None:
    machine, device, _, _ = served
    drv = E1000Driver(machine, device)  # type: ignore[arg-type]
    drv.probe()
    drv.open()
    machine.harness.proxy.device_reset()
    assert device.registers["RCTL"] == 0
    assert machine.config_read(0, SLOT_DEVFN, 0x04, 2) == 0
