"""Stateful model test of the AHCI controller and its ATA disk, as libahci drives them.

The driver is the in-package simulator (``devmodels.ahci.testing.AhciDriver``) on ABAR and
guest RAM; the disk is a 128 KiB memory backend. A ``RuleBasedStateMachine`` interleaves
DMA reads and writes (some past the end of the disk), NCQ batches, TRIM, FLUSH, IDENTIFY,
error recovery, port and HBA resets, hostile port-register writes and snapshots at quiesce
points. The model is the disk's content: every successful read returns what the model
holds, a failing command raises TFES and leaves the disk alone, TRIMmed sectors read as
zeros, and IDENTIFY reports the capacity.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devmodels import GuestMemory, MemoryRegion, from_dict, to_dict
from devmodels.ahci import AhciController, AhciState, AtaDisk
from devmodels.ahci import regs as r
from devmodels.ahci.testing import AhciDriver
from devmodels.backends import MemoryDiskBackend

SECTORS = 256
DISK = SECTORS * 512
RAM = 1 << 20
BUF = 0x80000  # data buffers (the driver's structures live below)


class AhciModel(RuleBasedStateMachine):
    """One controller, one disk, one driver; the model is the disk's sectors."""

    @initialize()
    def plug(self) -> None:
        self.memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
        self.backend = MemoryDiskBackend(DISK)
        self.hba = AhciController(self.memory, ports=1)
        self.hba.attach(0, AtaDisk(self.backend))
        self.driver = AhciDriver.for_controller(self.hba, self.memory, 0x10000, 0x60000)
        self.disk = bytearray(DISK)
        self.started = False

    def teardown(self) -> None:
        if hasattr(self, "hba"):
            self.hba.poll()
            self.backend.close()

    def _pattern(self, seed: int, count: int) -> bytes:
        return bytes((seed + 31 * i) & 0xFF for i in range(512 * count))

    # -- rules -------------------------------------------------------------------------------

    @precondition(lambda self: not self.started)
    @rule(hba_reset=st.booleans())
    def start(self, hba_reset: bool) -> None:
        if hba_reset:
            self.driver.reset_hba()
        self.driver.start_port(0)
        result, ident = self.driver.identify(0)
        assert result.ok
        words = [int.from_bytes(ident[i : i + 2], "little") for i in range(0, 512, 2)]
        assert words[100] | words[101] << 16 == SECTORS
        self.started = True

    @precondition(lambda self: self.started)
    @rule(lba=st.integers(0, SECTORS + 4), count=st.integers(1, 8), seed=st.integers(0, 255))
    def write(self, lba: int, count: int, seed: int) -> None:
        data = self._pattern(seed, count)
        self.memory.write(BUF, data)
        result = self.driver.rw_dma(0, lba, count, BUF, write=True)
        if lba + count <= SECTORS:
            assert result.ok
            self.disk[512 * lba : 512 * (lba + count)] = data
        else:
            assert result.pxis & r.PxIS_TFES and not result.ok
            self.driver.recover(0)

    @precondition(lambda self: self.started)
    @rule(lba=st.integers(0, SECTORS + 4), count=st.integers(1, 8))
    def read(self, lba: int, count: int) -> None:
        result = self.driver.rw_dma(0, lba, count, BUF, write=False)
        if lba + count <= SECTORS:
            assert result.ok
            assert self.memory.read(BUF, 512 * count) == self.disk[512 * lba : 512 * (lba + count)]
        else:
            assert not result.ok
            self.driver.recover(0)

    @precondition(lambda self: self.started)
    @rule(requests=st.lists(st.tuples(st.integers(0, SECTORS - 4), st.booleans(), st.integers(0, 255)), min_size=1, max_size=6,
                            unique_by=lambda t: t[0] // 4))
    def ncq(self, requests: list[tuple[int, bool, int]]) -> None:
        lbas = [lba - lba % 4 for lba, _, _ in requests]
        for tag, (lba, (_, write, seed)) in enumerate(zip(lbas, requests, strict=True)):
            if write:
                self.memory.write(BUF + 0x1000 * tag, self._pattern(seed, 4))
            self.driver.fpdma(0, tag, lba, 4, BUF + 0x1000 * tag, write=write)
        slots = (1 << len(requests)) - 1
        self.driver.issue(0, slots, queued=True)
        for tag in range(len(requests)):
            assert self.driver.wait_slot(0, tag, queued=True).ok
        for tag, (lba, (_, write, seed)) in enumerate(zip(lbas, requests, strict=True)):
            if write:
                self.disk[512 * lba : 512 * (lba + 4)] = self._pattern(seed, 4)
            else:
                assert self.memory.read(BUF + 0x1000 * tag, 2048) == self.disk[512 * lba : 512 * (lba + 4)]

    @precondition(lambda self: self.started)
    @rule(ranges=st.lists(st.tuples(st.integers(0, SECTORS - 1), st.integers(1, 16)), min_size=1, max_size=4))
    def trim(self, ranges: list[tuple[int, int]]) -> None:
        ranges = [(lba, min(n, SECTORS - lba)) for lba, n in ranges]
        assert self.driver.trim(0, ranges).ok
        for lba, n in ranges:
            self.disk[512 * lba : 512 * (lba + n)] = bytes(512 * n)

    @precondition(lambda self: self.started)
    @rule()
    def flush(self) -> None:
        assert self.driver.flush(0).ok

    @precondition(lambda self: self.started)
    @rule()
    def comreset(self) -> None:
        self.driver.hardreset(0)

    @rule()
    def hba_reset(self) -> None:
        self.driver.reset_hba()
        self.started = False

    @rule(offset=st.sampled_from([r.PxCMD, r.PxIS, r.PxIE, r.PxSCTL, r.PxSERR, r.PxCI, r.PxSACT, r.PxCLB, r.PxFB]),
          value=st.integers(0, 0xFFFF_FFFF))
    def scribble(self, offset: int, value: int) -> None:
        self.driver.set_preg(0, offset, value)
        self.hba.poll()
        self.started = False  # the driver starts the port over
        if offset in (r.PxCI, r.PxSACT):
            # Issuing slots re-runs whatever commands their headers still describe (a stale
            # write is a write): the medium is the model from here on.
            self.disk[:] = self.backend._disk[:DISK]  # noqa: SLF001 - the host's view of the medium

    @rule()
    def snapshot(self) -> None:
        self.hba.poll()
        if self.hba.busy or self.hba.resetting:
            return
        before = self.hba.state()
        rebuilt = from_dict(AhciState, to_dict(before))
        assert to_dict(rebuilt) == to_dict(before)
        self.hba.restore(rebuilt)
        assert to_dict(self.hba.state()) == to_dict(before)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def disk_matches_the_model(self) -> None:
        if hasattr(self, "hba"):
            self.hba.poll()
            assert self.backend._disk[:DISK] == self.disk  # noqa: SLF001 - the host's view of the medium


AhciModel.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestAhci = AhciModel.TestCase
