"""``PciFaults``: a device that stops answering and interrupts that never arrive, between a
function (the PCI test device) and the sinks a server would install."""

from __future__ import annotations

import pytest

from devmodels import GuestMemory, MemoryRegion, RecordingLevelSink, RecordingMsiSink
from devmodels.faults import FaultEngine, LostInterrupt, NoResponse, PciFaults
from devmodels.pci import defs
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class Rig:
    def __init__(self) -> None:
        self.clock = Clock()
        self.engine = FaultEngine(clock=self.clock)
        self.memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
        self.dev = PciTestDevice(self.memory)
        self.intx = RecordingLevelSink()
        self.msi = RecordingMsiSink()
        self.dev.intx = self.intx
        self.dev.msi_sink = self.msi
        self.dev.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY | defs.PCI_COMMAND_MASTER)
        self.faults = PciFaults(self.dev, self.engine)
        self.faults.install()

    def msix(self) -> None:
        dev = self.dev
        assert dev.msix is not None
        for vector, data in ((0, 0x31), (1, 0x32)):
            dev.bar_write(2, 16 * vector, 4, 0xFEE0_0000)
            dev.bar_write(2, 16 * vector + 8, 4, data)
            dev.bar_write(2, 16 * vector + 12, 4, 0)
        dev.config_write(dev.msix.offset + 2, 2, defs.PCI_MSIX_FLAGS_ENABLE)

    def tick(self, ms: int) -> None:
        self.clock.now += ms * MS
        self.engine.tick()


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_no_response_reads_all_ones_drops_writes_and_comes_back(rig: Rig) -> None:
    dev = rig.dev
    rig.engine.add(NoResponse(after_ms=5, for_ms=100))
    assert dev.bar_read(0, r.ID, 4) == r.TESTDEV_MAGIC
    rig.tick(5)
    assert rig.faults.paused
    assert dev.bar_read(0, r.ID, 4) == 0xFFFF_FFFF and dev.bar_read(0, r.ID, 2) == 0xFFFF
    assert dev.config_read(0, 4) == 0xFFFF_FFFF
    dev.bar_write(0, r.SCRATCH, 4, 0x1234)
    dev.bar_write(0, r.IRQ_RAISE, 4, 1)
    assert not rig.intx.level
    rig.tick(100)
    assert not rig.faults.paused
    assert dev.bar_read(0, r.SCRATCH, 4) == 0 and dev.bar_read(0, r.ID, 4) == r.TESTDEV_MAGIC
    assert rig.faults.stats.writes == 2 and rig.faults.stats.reads == 3


def test_no_response_holds_intx_down_and_drives_it_again(rig: Rig) -> None:
    dev = rig.dev
    dev.bar_write(0, r.IRQ_RAISE, 4, 1)
    assert rig.intx.level
    fid = rig.engine.add(NoResponse(config=False))
    assert not rig.intx.level
    assert dev.config_read(0, 2) == r.TESTDEV_VENDOR_ID  # config=false: config space answers
    rig.engine.remove(fid)
    assert rig.intx.level


def test_lost_msix_vector(rig: Rig) -> None:
    dev = rig.dev
    rig.msix()
    rig.engine.add(LostInterrupt(vector=0, count=1))
    dev.bar_write(0, r.IRQ_RAISE, 4, 1)  # vector 0: lost
    dev.bar_write(0, r.IRQ_ACK, 4, 1)
    dev.bar_write(0, r.IRQ_RAISE, 4, 1)  # count=1: delivered
    assert [data for _, data in rig.msi.messages] == [0x31]
    assert rig.faults.stats.msi_lost == 1
    assert rig.faults.vector_of(0xFEE0_0000, 0x32) == 1


def test_lost_intx_assertion_is_held_until_the_window_closes(rig: Rig) -> None:
    dev = rig.dev
    rig.engine.add(LostInterrupt(for_ms=50))
    dev.bar_write(0, r.IRQ_RAISE, 4, 1)
    assert not rig.intx.level and rig.faults.stats.intx_lost == 1
    rig.tick(50)
    assert rig.intx.level
    dev.bar_write(0, r.IRQ_ACK, 4, 1)
    assert not rig.intx.level


def test_uninstall_restores_the_function(rig: Rig) -> None:
    dev = rig.dev
    rig.engine.add(NoResponse())
    rig.faults.uninstall()
    assert dev.bar_read(0, r.ID, 4) == r.TESTDEV_MAGIC
    assert dev.intx is rig.intx and dev.msi_sink is rig.msi
    assert "bar_read" not in vars(dev)
