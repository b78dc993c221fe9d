"""Posted writes (``AhciController(posted_writes=True)``, hba.py rule 6).

A write that issues commands only stores the register; the command engine runs at the next
``poll()``, and every other entry point runs the posted work first. So a guest (and the
host) observes exactly what it would without posting; only the moment commands start moves.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels import GuestMemory, MemoryRegion, RecordingLevelSink, UsageError
from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom, TaskFile
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.ahci.testing import AhciDriver
from devmodels.backends import BlockOp
from devmodels.pci.defs import PCI_COMMAND, PCI_COMMAND_MEMORY
from tests.unit.devmodels.ahci.doubles import DMA_BASE, RAM_SIZE, ScriptedDisk, _iso_pattern


class PostedRig:
    """``doubles.Rig`` with posted writes; ``vmm_polls`` makes every write poll afterwards,
    as the mpqemu glue does once the proxy has its reply."""

    def __init__(self, *, posted: bool = True, vmm_polls: bool = False, disk: ScriptedDisk | None = None) -> None:
        self.memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM_SIZE)])
        self.disk = disk if disk is not None else ScriptedDisk(4 << 20, data=bytes(range(256)) * 64)
        self.cd = ScriptedDisk(2 << 20, readonly=True, data=_iso_pattern(2 << 20))
        self.hba = AhciController(self.memory, ports=2, posted_writes=posted)
        self.hba.attach(0, AtaDisk(self.disk))
        self.hba.attach(1, AtapiCdrom(self.cd))
        self.vmm_polls = vmm_polls
        self.driver = AhciDriver.for_controller(self.hba, self.memory, DMA_BASE, RAM_SIZE - DMA_BASE)
        self.driver._write = self._write  # the driver's register writes go through the "VMM"
        self.driver.reset_hba()
        self.driver.start_port(0)
        self.driver.start_port(1)

    def _write(self, offset: int, size: int, value: int) -> None:
        self.hba.write(offset, size, value)
        if self.vmm_polls and self.hba.posted:
            self.hba.poll()


def _read_command(rig: PostedRig, slot: int = 0, lba: int = 3) -> int:
    buf = rig.driver.alloc(512)
    tf = TaskFile(command=d.ATA_CMD_READ_EXT, lba=lba, count=1, device=d.ATA_LBA)
    rig.driver.prepare(0, slot, tf, [(buf, 512)])
    return buf


def test_posted_pxci_write_starts_nothing_until_poll() -> None:
    rig = PostedRig()
    buf = _read_command(rig)
    rig.hba.write(r.PORT_BASE + r.PxCI, 4, 1)
    assert rig.hba.posted and rig.disk.log == []
    assert rig.hba.ports[0].regs["PxCI"] == 1  # stored, not yet fetched
    rig.hba.poll()
    assert not rig.hba.posted and rig.disk.log == [(BlockOp.READ, 3 * 512, 512)]
    assert rig.hba.ports[0].regs["PxCI"] == 0
    assert rig.memory.read(buf, 512) == rig.disk.data[3 * 512 : 4 * 512]


def test_a_register_read_runs_posted_work_first() -> None:
    rig = PostedRig()
    _read_command(rig)
    rig.hba.write(r.PORT_BASE + r.PxCI, 4, 1)
    assert rig.hba.read(r.PORT_BASE + r.PxCI, 4) == 0  # what a synchronous write leaves
    assert rig.hba.read(r.IS, 4) == 1 and not rig.hba.posted


def test_a_later_write_runs_posted_work_before_itself() -> None:
    rig = PostedRig()
    _read_command(rig)
    rig.hba.write(r.PORT_BASE + r.PxCI, 4, 1)
    rig.hba.write(r.PORT_BASE + r.PxCMD, 4, rig.hba.ports[0].regs["PxCMD"] & ~r.PxCMD_ST)  # stop the engine
    assert rig.disk.log == [(BlockOp.READ, 3 * 512, 512)]  # the command ran before ST fell
    assert not rig.hba.ports[0].regs["PxIS"] & r.PxIS_FATAL


def test_config_write_runs_posted_work_first() -> None:
    rig = PostedRig()
    _read_command(rig)
    rig.hba.write(r.PORT_BASE + r.PxCI, 4, 1)
    rig.hba.config_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY)  # bus mastering off after the write
    assert rig.disk.log and not rig.hba.ports[0].regs["PxIS"] & r.PxIS_HBFS


def test_snapshot_refuses_posted_work_and_reset_runs_it_first() -> None:
    rig = PostedRig(disk=ScriptedDisk(1 << 20, auto=False))
    _read_command(rig)
    rig.hba.write(r.PORT_BASE + r.PxCI, 4, 1)
    assert not rig.hba.busy  # nothing fetched yet
    with pytest.raises(UsageError, match=r"posted command work pending; call quiesce\(\) first"):
        rig.hba.state()  # the snapshot contract: state() does not run the posted work itself
    assert rig.hba.posted and not rig.hba.busy
    rig.hba.poll()  # the posted command starts and stays in flight
    with pytest.raises(UsageError, match=r"backend requests in flight; call quiesce\(\) first"):
        rig.hba.state()
    rig.disk.release()
    rig.hba.poll()
    rig.hba.state()
    rig.hba.write(r.PORT_BASE + r.PxCI, 4, 1)  # the slot again (same table)
    rig.hba.reset()
    assert len(rig.disk.pending) == 1  # started before the reset cancelled it
    rig.disk.release()
    rig.hba.poll()
    assert not rig.hba.busy


def test_interrupt_rises_when_the_vmm_polls() -> None:
    rig = PostedRig(vmm_polls=True)
    sink = RecordingLevelSink()
    rig.hba.intx = sink
    _read_command(rig)
    rig.driver.issue(0, 1)
    assert sink.level and not rig.hba.posted


def test_synchronous_mode_never_posts() -> None:
    rig = PostedRig(posted=False)
    _read_command(rig)
    rig.hba.write(r.PORT_BASE + r.PxCI, 4, 1)
    assert not rig.hba.posted and rig.hba.ports[0].regs["PxCI"] == 0


_PORT_REGS = (r.PxIS, r.PxCMD, r.PxTFD, r.PxSACT, r.PxCI, r.PxSERR, r.PxSSTS)

# one step: (kind, slot, lba, sectors, poll after the write?)
_STEP = st.tuples(
    st.sampled_from(["ncq-read", "ncq-write", "read", "write", "flush", "bad", "stop-start", "clear"]),
    st.integers(0, 31),
    st.integers(0, 8190),
    st.integers(1, 8),
    st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_STEP, min_size=1, max_size=25))
def test_posted_and_synchronous_controllers_are_indistinguishable(steps: list[tuple[str, int, int, int, bool]]) -> None:
    """Differential: the same driver steps on a synchronous and a posted controller (whose
    "VMM" polls only sometimes) read back the same registers and leave the same RAM."""
    rigs = [PostedRig(posted=False), PostedRig(posted=True)]
    for kind, slot, lba, sectors, poll in steps:
        for rig in rigs:
            drv = rig.driver
            buf = DMA_BASE + 0x40_0000 + slot * 0x1000
            if kind in ("ncq-read", "ncq-write"):
                drv.fpdma(0, slot, lba, sectors, buf, write=kind == "ncq-write")
                drv.issue(0, 1 << slot, queued=True)
            elif kind in ("read", "write", "flush", "bad"):
                command = {"read": d.ATA_CMD_READ_EXT, "write": d.ATA_CMD_WRITE_EXT, "flush": d.ATA_CMD_FLUSH_EXT,
                           "bad": 0x47}[kind]
                prdt = [(buf, sectors * 512)] if kind in ("read", "write") else []
                tf = TaskFile(command=command, lba=lba, count=sectors, device=d.ATA_LBA)
                drv.prepare(0, slot, tf, prdt, write=kind == "write")
                drv.issue(0, 1 << slot)
            elif kind == "stop-start":
                drv.stop_engine(0)
                drv.start_engine(0)
            else:
                drv.set_preg(0, r.PxIS, 0xFFFF_FFFF)
                drv.set_reg(r.IS, 0b11)
            if poll and rig.hba.posted:
                rig.hba.poll()
        sync, posted = (
            [rig.hba.read(r.PORT_BASE + reg, 4) for reg in _PORT_REGS] + [rig.hba.read(r.IS, 4)] for rig in rigs
        )
        assert sync == posted, (kind, slot)
    assert rigs[0].memory.read(0, RAM_SIZE) == rigs[1].memory.read(0, RAM_SIZE)
    assert rigs[0].disk.data == rigs[1].disk.data
