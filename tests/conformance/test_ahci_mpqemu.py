"""The AHCI controller served over QEMU 7.2's multi-process protocol (mpqemu), driven by the
in-package libahci-like driver through ``FakeProxy``: config cycles and ABAR accesses travel
the wire as ``x-pci-proxy-dev`` sends them, guest RAM is a memfd shared the way QEMU shares
it, and INTx leaves through the irqfd. The block backends are the real ``MemoryDiskBackend``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from devmodels import GuestMemory, MemoryRegion
from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.ahci.testing import AhciDriver
from devmodels.pci import FunctionInfo, Window, enumerate_bus0

pytest.importorskip("mpqemu.testing")
backends = pytest.importorskip("devmodels.backends.block")

from mpqemu.testing import Harness  # noqa: E402

RAM = 16 << 20
SLOT_DEVFN = 0x18
DISK = 8 << 20
ISO = 1 << 20


class _Proxied:
    """The guest's view of a QEMU whose only PCI function is the proxied controller."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

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
def served() -> Iterator[tuple[AhciDriver, Harness, object, int, bytes]]:
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, RAM)
    iso_data = bytes((i * 7) & 0xFF for i in range(ISO))
    disk = backends.MemoryDiskBackend(DISK)
    iso = backends.MemoryDiskBackend(ISO, readonly=True, data=iso_data)
    device_memory = GuestMemory()
    hba = AhciController(device_memory, ports=2)
    hba.attach(0, AtaDisk(disk))
    hba.attach(1, AtapiCdrom(iso))
    harness = Harness(function=hba, memory=device_memory)
    guest_ram = GuestMemory([MemoryRegion.from_fd(0, RAM, fd)])
    harness.proxy.sync_sysmem([(0, RAM, 0, fd)])
    irqfd, resample = harness.proxy.set_irqfd()
    machine = _Proxied(harness)
    try:
        (info,) = [i for i in machine.enumerate() if (i.vendor_id, i.device_id) == (0x8086, 0x2922)]
        (abar,) = [b.address for b in info.bars if b.index == r.AHCI_ABAR_INDEX]
        proxy = harness.proxy
        driver = AhciDriver(
            lambda off, size: proxy.bar_read(abar + off, size),
            lambda off, size, value: proxy.bar_write(abar + off, value, size),
            guest_ram, 8 << 20, 8 << 20, harness.pump,
        )
        yield driver, harness, disk, irqfd, iso_data
    finally:
        harness.close()
        guest_ram.close()
        for n in (fd, irqfd, resample):
            os.close(n)


def _irqfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_linux_bring_up_io_and_cdrom_over_mpqemu(served) -> None:  # type: ignore[no-untyped-def]
    driver, harness, disk, irqfd, iso_data = served
    assert driver.reg(r.VS) == 0x0001_0300 and driver.reg(r.PI) == 0b11
    driver.reset_hba()
    assert driver.start_port(0) == 0x101
    assert driver.start_port(1) == 0xEB14_0101
    result, ident = driver.identify(0)
    assert result.ok and int.from_bytes(ident[200:208], "little") == DISK // 512
    assert _irqfd_count(irqfd) >= 1  # PxIS.PSS with GHC.IE raised INTx through the irqfd
    payload = os.urandom(64 * 1024)
    src, dst = driver.alloc(len(payload)), driver.alloc(len(payload))
    driver.memory.write(src, payload)
    assert driver.rw_dma(0, 2048, len(payload) // 512, src, write=True).ok
    for tag in range(8):  # read it back with 8 queued commands of 8 KiB
        driver.fpdma(0, tag, 2048 + tag * 16, 16, dst + tag * 8192, write=False)
    driver.issue(0, 0xFF, queued=True)
    driver.wait(lambda: driver.preg(0, r.PxSACT) == 0, "queued reads")
    assert hashlib.sha256(driver.memory.read(dst, len(payload))).digest() == hashlib.sha256(payload).digest()
    assert driver.flush(0).ok
    assert disk.read_at(2048 * 512, len(payload)) == payload
    assert driver.trim(0, [(2048, 8)]).ok
    assert disk.read_at(2048 * 512, 4096) == bytes(4096)
    cdb = bytes([d.GPCMD_READ_10, 0, 0, 0, 0, 4, 0, 0, 8]).ljust(12, b"\0")
    result, data = driver.packet(1, cdb, 8 * 2048, dma=True)
    assert result.ok and data == iso_data[4 * 2048 : 12 * 2048]
    stats = harness.server.stats
    assert stats.refused == 0 and stats.bar_errors == 0, stats


def test_device_reset_over_mpqemu(served) -> None:  # type: ignore[no-untyped-def]
    driver, harness, _, _, _ = served
    driver.reset_hba()
    driver.start_port(0)
    harness.proxy.device_reset()
    assert harness.proxy.config_read(0x04, 2) == 0  # decode is off until the guest re-enables it
    hba = harness.function
    assert hba.read(r.PORT_BASE + r.PxCMD, 4) == r.PxCMD_POD  # type: ignore[attr-defined]
    assert hba.read(r.GHC, 4) == r.GHC_AE  # type: ignore[attr-defined]
