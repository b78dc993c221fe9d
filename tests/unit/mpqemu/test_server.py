"""The mpqemu server driven by a fake QEMU proxy over a socketpair, in-process.

The message sequences are what QEMU 7.2's x-pci-proxy-dev sends (hw/remote/proxy.c):
SET_IRQFD and the BAR probe at realize, DEVICE_RESET at machine reset, SYNC_SYSMEM after
every memory-topology change, then config and BAR accesses as the guest runs.
"""

from __future__ import annotations

import mmap
import os
import socket
import threading

import pytest

from devmodels import GuestMemory
from devmodels.pci import defs as p
from devmodels.runtime import EventLoop
from mpqemu import serve
from mpqemu import defs as d
from mpqemu.testing import FakeProxy, Harness, ProbedBar
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r

BAR0 = 0xFEBF_0000
BAR2 = 0xFEBF_1000
IO_BASE = 0xC000
MIB = 1 << 20


def _count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.fixture
def h():
    harness = Harness(factory=PciTestDevice)
    yield harness
    harness.close()


def _program(h: Harness, command: int = p.PCI_COMMAND_MEMORY | p.PCI_COMMAND_IO | p.PCI_COMMAND_MASTER) -> None:
    h.proxy.config_write(p.PCI_BASE_ADDRESS_0, BAR0, 4)
    h.proxy.config_write(p.PCI_BASE_ADDRESS_0 + 4, IO_BASE, 4)
    h.proxy.config_write(p.PCI_BASE_ADDRESS_0 + 8, BAR2, 4)
    h.proxy.config_write(p.PCI_COMMAND, command, 2)


def test_realize_probe_sees_the_bars_as_proxy_c_sizes_them(h: Harness) -> None:
    proxy = h.proxy
    irqfd, resample = proxy.set_irqfd()
    assert proxy.config_read(p.PCI_VENDOR_ID, 2) == r.TESTDEV_VENDOR_ID
    assert proxy.config_read(p.PCI_DEVICE_ID, 2) == r.TESTDEV_DEVICE_ID
    assert proxy.config_read(p.PCI_CLASS_DEVICE, 2) == r.TESTDEV_CLASS >> 8
    assert proxy.probe_bars() == [
        ProbedBar(0, r.BAR0_SIZE, False),
        ProbedBar(1, r.BAR1_SIZE, True),
        ProbedBar(2, r.BAR2_SIZE, False),
    ]
    # The probe restored every BAR.
    assert proxy.config_read(p.PCI_BASE_ADDRESS_0, 4) == 0
    reply = proxy.device_reset()
    assert (reply.cmd, reply.size, reply.value) == (d.MPQEMU_CMD_RET, 0, None)
    assert h.server.endpoint.irq is not None
    os.close(irqfd)
    os.close(resample)


def test_config_write_replies_zero_and_reads_are_exact(h: Harness) -> None:
    assert h.proxy.config_write(p.PCI_INTERRUPT_LINE, 0x0B, 1) == 0
    assert h.proxy.config_read(p.PCI_INTERRUPT_LINE, 1) == 0x0B
    assert h.proxy.config_read_raw(p.PCI_VENDOR_ID, 4) == r.TESTDEV_DEVICE_ID << 16 | r.TESTDEV_VENDOR_ID
    # The config write's value is truncated to its length.
    h.proxy.config_write(p.PCI_CACHE_LINE_SIZE, 0xABCD_EF10, 1)
    assert h.proxy.config_read(p.PCI_CACHE_LINE_SIZE, 2) & 0xFF == 0x10


def test_bar0_registers_through_the_proxy(h: Harness) -> None:
    _program(h)
    assert h.proxy.bar_read(BAR0 + r.ID, 4) == r.TESTDEV_MAGIC
    assert h.proxy.bar_write(BAR0 + r.SCRATCH, 0xA5A5_5A5A, 4) == 0
    assert h.proxy.bar_read(BAR0 + r.SCRATCH, 4) == 0xA5A5_5A5A
    # Unaligned inside the BAR: split by the bus into byte reads of the partial register.
    assert h.proxy.bar_read(BAR0 + r.SCRATCH + 1, 2) == 0xA55A
    assert h.server.stats.bar_reads == 3 and h.server.stats.bar_errors == 0


def test_io_bar_uses_the_io_space(h: Harness) -> None:
    _program(h)
    assert h.proxy.bar_read(IO_BASE, 4, memory=False) == r.TESTDEV_MAGIC
    h.proxy.bar_write(IO_BASE + 4, 0x1234_5678, 4, memory=False)
    assert h.proxy.bar_read(BAR0 + r.SCRATCH, 4) == 0x1234_5678
    assert h.proxy.bar_read(IO_BASE, 4, memory=True) == d.MPQEMU_RET_ERROR  # not in memory space


def test_bar_moves_and_decode_follow_config_writes(h: Harness) -> None:
    _program(h)
    h.proxy.config_write(p.PCI_BASE_ADDRESS_0, 0xE000_0000, 4)
    assert h.proxy.bar_read(BAR0, 4) == d.MPQEMU_RET_ERROR
    assert h.proxy.bar_read(0xE000_0000, 4) == r.TESTDEV_MAGIC
    h.proxy.config_write(p.PCI_COMMAND, p.PCI_COMMAND_IO, 2)  # memory decode off
    assert h.proxy.bar_read(0xE000_0000, 4) == d.MPQEMU_RET_ERROR
    assert h.proxy.bar_read(IO_BASE, 4, memory=False) == r.TESTDEV_MAGIC


def test_dma_lands_in_the_memfd_qemu_shares(h: Harness) -> None:
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, MIB)
    qemu_view = mmap.mmap(fd, MIB)
    try:
        h.proxy.sync_sysmem([(0, MIB, 0, fd)])
        _program(h)
        qemu_view[0x1000:0x1040] = bytes(range(64))
        h.proxy.bar_write(BAR0 + r.DMA_SRC, 0x1000, 8)
        h.proxy.bar_write(BAR0 + r.DMA_DST, 0x8000, 8)
        h.proxy.bar_write(BAR0 + r.DMA_LEN, 64, 4)
        h.proxy.bar_write(BAR0 + r.DMA_CMD, r.DMA_CMD_START, 4)
        assert h.proxy.bar_read(BAR0 + r.DMA_STATUS, 4) == r.DMA_STATUS_DONE
        assert qemu_view[0x8000:0x8040] == bytes(range(64))
        # Outside the RAM QEMU sent: the device's DMA error, not a crash.
        h.proxy.bar_write(BAR0 + r.DMA_DST, MIB, 8)
        h.proxy.bar_write(BAR0 + r.DMA_CMD, r.DMA_CMD_START, 4)
        assert h.proxy.bar_read(BAR0 + r.DMA_STATUS, 4) == r.DMA_STATUS_ERROR
    finally:
        qemu_view.close()
        os.close(fd)


def test_intx_via_irqfd_and_resample(h: Harness) -> None:
    irqfd, resample = h.proxy.set_irqfd()
    try:
        _program(h)
        h.proxy.bar_write(BAR0 + r.IRQ_RAISE, r.IRQ_DMA_DONE, 4)
        assert _count(irqfd) == 1
        assert h.proxy.config_read(p.PCI_STATUS, 2) & p.PCI_STATUS_INTERRUPT
        os.eventfd_write(resample, 1)  # the guest EOIs while the line is still high
        h.pump()
        assert _count(irqfd) == 1
        h.proxy.bar_write(BAR0 + r.IRQ_ACK, r.IRQ_DMA_DONE, 4)
        os.eventfd_write(resample, 1)
        h.pump()
        assert _count(irqfd) == 0
        # Command.INTX_DISABLE masks the pin (PCI 3.0 §6.2.2).
        h.proxy.config_write(p.PCI_COMMAND, p.PCI_COMMAND_MEMORY | p.PCI_COMMAND_INTX_DISABLE, 2)
        h.proxy.bar_write(BAR0 + r.IRQ_RAISE, r.IRQ_DMA_DONE, 4)
        assert _count(irqfd) == 0
        h.proxy.config_write(p.PCI_COMMAND, p.PCI_COMMAND_MEMORY, 2)
        assert _count(irqfd) == 1
    finally:
        os.close(irqfd)
        os.close(resample)


def test_new_irqfd_while_the_line_is_high_starts_asserted(h: Harness) -> None:
    first = h.proxy.set_irqfd()
    _program(h)
    h.proxy.bar_write(BAR0 + r.IRQ_RAISE, 1, 4)
    second = h.proxy.set_irqfd()
    try:
        assert _count(second[0]) == 1
        os.eventfd_write(first[1], 1)  # the replaced resample fd is no longer watched
        h.pump()
        assert _count(first[0]) == 1 and _count(second[0]) == 0
    finally:
        for fd in (*first, *second):
            os.close(fd)


def test_msi_shown_on_request_is_dropped_and_counted() -> None:
    h = Harness(factory=PciTestDevice, hide_capabilities=())
    try:
        dev = h.function
        assert isinstance(dev, PciTestDevice) and dev.msi is not None
        _program(h)
        h.proxy.config_write(dev.msi.offset + 2, 1, 2)  # MSI enable
        h.proxy.bar_write(BAR0 + r.IRQ_RAISE, 1, 4)
        assert h.server.stats.msi_dropped == 1
    finally:
        h.close()


def test_device_reset_returns_to_power_on_state(h: Harness) -> None:
    _program(h)
    h.proxy.bar_write(BAR0 + r.SCRATCH, 0xFFFF_FFFF, 4)
    h.proxy.device_reset()
    assert h.proxy.config_read(p.PCI_BASE_ADDRESS_0, 4) == 0
    assert h.proxy.bar_read(BAR0, 4) == d.MPQEMU_RET_ERROR
    _program(h)
    assert h.proxy.bar_read(BAR0 + r.SCRATCH, 4) == 0


def test_disconnect_releases_every_descriptor() -> None:
    before = set(os.listdir("/proc/self/fd"))
    h = Harness(factory=PciTestDevice)
    fd = os.memfd_create("ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, MIB)
    h.proxy.sync_sysmem([(0, MIB, 0, fd)])
    irqfd, resample = h.proxy.set_irqfd()
    for own in (fd, irqfd, resample):
        os.close(own)
    h.proxy.sock.close()
    h.pump()
    assert h.server.closed
    assert h.memory.regions == ()
    assert set(os.listdir("/proc/self/fd")) == before


def test_serve_runs_until_the_peer_disconnects() -> None:
    ours, theirs = socket.socketpair()
    memory = GuestMemory()
    result = []
    thread = threading.Thread(target=lambda: result.append(serve(PciTestDevice(memory), ours, memory)))
    thread.start()
    proxy = FakeProxy(theirs)
    assert proxy.config_read(p.PCI_VENDOR_ID, 2) == r.TESTDEV_VENDOR_ID
    theirs.close()
    thread.join(10)
    assert not thread.is_alive()
    assert result[0].config_reads == 1
    assert ours.fileno() == -1


def test_server_stop_from_another_thread() -> None:
    h = Harness(factory=PciTestDevice)
    thread = threading.Thread(target=h.server.run)
    thread.start()
    h.server.stop()
    thread.join(10)
    assert not thread.is_alive() and not h.server.closed
    h.server.close()
    h.proxy.sock.close()


def test_event_loop_timers_and_readers() -> None:
    loop = EventLoop()
    seen: list[str] = []
    now = loop.now_ns()
    loop.call_at(now + 2_000_000, lambda: seen.append("late"))
    loop.call_at(now, lambda: seen.append("early"))
    loop.call_at(now, lambda: seen.append("cancelled")).cancel()
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    loop.add_reader(efd, lambda: seen.append(f"read {os.eventfd_read(efd)}"))
    os.eventfd_write(efd, 3)
    loop.run(until=lambda: "late" in seen)
    assert seen == ["read 3", "early", "late"]
    loop.remove_reader(efd)
    loop.remove_reader(efd)  # no-op
    os.close(efd)
    loop.close()


class _Faulty:
    """A BAR handler with a bug: a guest error escapes its read."""

    def read(self, offset: int, size: int) -> int:
        from devmodels import GuestError

        raise GuestError("escaped")

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def test_guest_error_escaping_a_device_becomes_an_error_reply() -> None:
    from devmodels.pci import PciFunction

    fn = PciFunction(0x1234, 0x0002, 0xFF0000)
    fn.add_bar(0, 0x100, _Faulty())
    h = Harness(fn)
    try:
        h.proxy.config_write(p.PCI_BASE_ADDRESS_0, BAR0, 4)
        h.proxy.config_write(p.PCI_COMMAND, p.PCI_COMMAND_MEMORY, 2)
        assert h.proxy.bar_read(BAR0, 4) == d.MPQEMU_RET_ERROR
        assert h.proxy.bar_write(BAR0, 1, 4) == 0
        assert h.proxy.config_read(p.PCI_DEVICE_ID, 2) == 0x0002
    finally:
        h.close()
