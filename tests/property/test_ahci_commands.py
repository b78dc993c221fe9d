"""Hypothesis: random command headers, CFISes and PRDTs never raise, stay inside the memory
the guest described, do bounded work, and leave a port that a libahci-style recovery
brings back (AHCI 1.3.1 §6.1.2: every error has an architected end state)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels import Access, GuestMemory, MemoryRegion
from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom, TaskFile, build_h2d
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.ahci.layouts import CMD_HEADER, PRD_ENTRY
from devmodels.ahci.testing import AhciDriver
from tests.unit.devmodels.ahci.doubles import ScriptedDisk

RAM = 4 << 20
CLB, FB = 0x1000, 0x2000
TABLES = 0x10000  # 32 tables x 8 KiB (up to 504 PRD entries each)
TABLE_STRIDE = 0x2000
BUFFERS = 0x100000  # 1 MiB of data buffers
BUFFERS_END = 0x200000
DRIVER = 0x200000  # the recovery driver's own structures

OPCODES = [
    d.ATA_CMD_READ_EXT, d.ATA_CMD_WRITE_EXT, d.ATA_CMD_READ, d.ATA_CMD_WRITE, d.ATA_CMD_FPDMA_READ,
    d.ATA_CMD_FPDMA_WRITE, d.ATA_CMD_ID_ATA, d.ATA_CMD_ID_ATAPI, d.ATA_CMD_DSM, d.ATA_CMD_READ_LOG_EXT,
    d.ATA_CMD_PIO_READ_EXT, d.ATA_CMD_PIO_WRITE_EXT, d.ATA_CMD_READ_MULTI, d.ATA_CMD_FLUSH_EXT,
    d.ATA_CMD_SET_FEATURES, d.ATA_CMD_PACKET, d.ATA_CMD_SMART, d.ATA_CMD_EDD, d.ATA_CMD_CHK_POWER,
    d.ATA_CMD_WRITE_FUA_EXT, d.ATA_CMD_SET_MULTI, d.ATA_CMD_VERIFY_EXT, 0x00, 0x47, 0xFF,
]


class RecordingMemory(GuestMemory):
    """Guest memory that records the ranges the device writes and the metadata it reads."""

    def __init__(self) -> None:
        super().__init__([MemoryRegion.from_bytearray(0, RAM)])
        self.writes: list[tuple[int, int]] = []
        self.meta_read = 0

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.writes.append((gpa, len(data)))
        super().write(gpa, data)

    def store_u32(self, gpa: int, value: int) -> None:
        self.writes.append((gpa, 4))
        super().store_u32(gpa, value)

    def read_into(self, gpa: int, buf: bytearray | memoryview) -> None:
        if not BUFFERS <= gpa < BUFFERS_END:
            self.meta_read += len(buf)
        super().read_into(gpa, buf)

    def check_range(self, gpa: int, length: int, access: Access = Access.READ) -> bool:
        return super().check_range(gpa, length, access)


def gpa_strategy() -> st.SearchStrategy[int]:
    buffer = st.integers(BUFFERS, BUFFERS_END - 2)  # a buffer (may run past the zone: that is allowed)
    return st.one_of(
        buffer,
        buffer,
        buffer,
        st.integers(RAM - 4096, RAM + 4096),  # around the end of RAM
        st.integers(0, (1 << 64) - 1),  # anywhere
    )


prd = st.tuples(gpa_strategy(), st.one_of(st.integers(0, 8191), st.integers(0, (1 << 22) - 1)), st.booleans())

valid_cfis = (
    st.builds(
        lambda op, feat, lba, count, dev, ctl, c: build_h2d(TaskFile(op, feat, lba, count, dev, ctl, 0, c)),
        st.sampled_from(OPCODES),
        st.one_of(st.integers(0, 0xFFFF), st.sampled_from([1, 2, 3, 0xDA, 0x02, 0x82])),
        st.one_of(st.integers(0, 64), st.integers(0, 64), st.integers(0, (1 << 48) - 1)),
        st.one_of(st.sampled_from([1, 2, 4, 8]), st.integers(0, 16), st.integers(0, 0xFFFF)),
        st.sampled_from([0, d.ATA_LBA, d.ATA_LBA | d.ATA_FUA, 0xFF]),
        st.sampled_from([0, d.ATA_SRST]),
        st.booleans(),
    )
)
cfis = st.one_of(valid_cfis, valid_cfis, valid_cfis, st.binary(min_size=20, max_size=64))

slot_strategy = st.fixed_dictionaries(
    {
        "cfl": st.sampled_from([5] * 8 + [0, 1, 4, 16, 17, 31]),
        "fix_tag": st.booleans(),
        "flags": st.integers(0, 0xFFFF) .map(lambda f: f & 0b0111_1110_0000),
        "cfis": cfis,
        "valid_cfis": valid_cfis,
        "acmd": st.one_of(st.binary(min_size=16, max_size=16),
                          st.sampled_from([bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 4] + [0] * 7),
                                           bytes([0x12, 0, 0, 0, 36] + [0] * 11),
                                           bytes([0x43, 2, 0, 0, 0, 0, 0, 0, 64] + [0] * 7)])),
        "prdt": st.lists(prd, max_size=12),
        "prdtl": st.one_of(st.none(), st.integers(0, 0xFFFF)),
        "table_offset": st.sampled_from([0, 0x40, 0x7F]),
    }
)


def build_slot(memory: RecordingMemory, slot: int, spec: dict, hostile: bool) -> int:
    table = TABLES + slot * TABLE_STRIDE
    memory.fill(table, TABLE_STRIDE)
    fis = bytearray((spec["cfis"] if hostile else spec["valid_cfis"])[:64].ljust(64, b"\0"))
    if spec["fix_tag"] and fis[2] in (d.ATA_CMD_FPDMA_READ, d.ATA_CMD_FPDMA_WRITE):
        fis[12] = slot << 3  # NCQ tag = slot, as AHCI requires
    GuestMemory.write(memory, table, bytes(fis) + spec["acmd"])
    for i, (gpa, dbc, interrupt) in enumerate(spec["prdt"]):
        entry = PRD_ENTRY.pack(gpa & 0xFFFF_FFFF, gpa >> 32, 0, dbc | (1 << 31 if interrupt else 0))
        GuestMemory.write(memory, table + 0x80 + 16 * i, entry)
    prdtl = len(spec["prdt"]) if spec["prdtl"] is None else spec["prdtl"]
    dw0 = (spec["cfl"] if hostile else 5) | spec["flags"] | prdtl << 16
    ctba = table + spec["table_offset"]
    GuestMemory.write(memory, CLB + slot * 32, CMD_HEADER.pack(dw0, 0, ctba & 0xFFFF_FFFF, ctba >> 32))
    return prdtl


def described_buffers(memory: GuestMemory, slot: int) -> list[tuple[int, int]]:
    """Every (gpa, length) the slot's PRDT describes, as the HBA decodes it (DBA bit 0 and
    DBC bit 0 are reserved), read from guest memory after all slots were built."""
    dw0, _, ctba, ctbau = CMD_HEADER.unpack(memory.read(CLB + slot * 32, 32))
    table = (ctbau << 32 | ctba) & ~0x7F
    count = min(dw0 >> 16, max(0, (RAM - table - 0x80) // 16))
    raw = memory.read(table + 0x80, count * 16)
    return [((hi << 32 | lo) & ~1, (dw3 & 0x3F_FFFF | 1) + 1) for lo, hi, _, dw3 in PRD_ENTRY.iter_unpack(raw)]


def allowed(gpa: int, length: int, buffers: list[tuple[int, int]]) -> bool:
    """A device write must hit the command list, the FIS area, or a PRD buffer the guest gave."""
    end = gpa + length
    if CLB <= gpa and end <= CLB + r.CMD_LIST_SIZE or FB <= gpa and end <= FB + r.RX_FIS_SIZE:
        return True
    return any(base <= gpa and end <= base + size for base, size in buffers)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    slots=st.lists(st.tuples(st.integers(0, 31), slot_strategy), min_size=1, max_size=6),
    queued=st.booleans(),
    atapi_port=st.booleans(),
    auto=st.booleans(),
    hostile=st.booleans(),
)
def test_random_command_tables_end_in_architected_states(
    slots, queued: bool, atapi_port: bool, auto: bool, hostile: bool
) -> None:
    memory = RecordingMemory()
    disk = ScriptedDisk(1 << 20, auto=auto)
    cd = ScriptedDisk(1 << 20, readonly=True, auto=auto)
    hba = AhciController(memory, ports=1)
    hba.attach(0, AtapiCdrom(cd) if atapi_port else AtaDisk(disk))
    driver = AhciDriver.for_controller(hba, memory, DRIVER, RAM - DRIVER)
    driver.reset_hba()
    driver.clb[0], driver.fb[0], driver.tables[0] = CLB, FB, DRIVER
    for offset, value in ((r.PxCLB, CLB), (r.PxFB, FB)):
        driver.set_preg(0, offset, value)
    driver.set_preg(0, r.PxCMD, r.PxCMD_SUD | r.PxCMD_FRE)
    driver.set_preg(0, r.PxCMD, r.PxCMD_SUD | r.PxCMD_FRE | r.PxCMD_ST)
    driver.set_preg(0, r.PxIE, 0xFFFF_FFFF)
    bits = 0
    prdtls = []
    buffers: list[tuple[int, int]] = []
    for slot, spec in slots:
        prdtls.append(build_slot(memory, slot, spec, hostile))
        bits |= 1 << slot
    for slot in {slot for slot, _ in slots}:
        buffers += described_buffers(memory, slot)
    memory.writes.clear()
    memory.meta_read = 0
    if queued:
        driver.set_preg(0, r.PxSACT, bits)
    driver.set_preg(0, r.PxCI, bits)
    for _ in range(4):
        disk.release()
        cd.release()
        hba.poll()
    # bounded work: headers, table heads and at most PRDTL entries (in 256-entry chunks) each,
    # plus a DSM payload, per slot
    chunked = sum(16 * min(p, 256 * (1 + p // 256)) for p in prdtls)
    assert memory.meta_read <= len(slots) * (32 + 0x80 + 8 * 512) + chunked
    for gpa, length in memory.writes:
        assert allowed(gpa, length, buffers), (hex(gpa), length)
    port = hba.ports[0]
    pxis = driver.preg(0, r.PxIS)
    if not pxis & r.PxIS_FATAL and not port.busy:
        # nothing failed and nothing is in flight: every issued slot has completed
        assert driver.preg(0, r.PxCI) == 0
    # recovery as libahci does it: stop the engine (drain), COMRESET, restart
    for _ in range(3):
        disk.release()
        cd.release()
        hba.poll()
    disk.auto = cd.auto = True
    driver.stop_engine(0)
    driver.hardreset(0)
    driver.set_preg(0, r.PxSERR, 0xFFFF_FFFF)
    driver.start_engine(0)
    result, data = driver.identify(0, packet=atapi_port)
    assert result.ok and sum(data) & 0xFF == 0


@settings(max_examples=60, deadline=None)
@given(ranges=st.lists(st.tuples(st.integers(0, (1 << 48) - 1), st.integers(0, 0xFFFF)), max_size=64),
       blocks=st.integers(0, 10))
def test_random_trim_payloads(ranges, blocks: int) -> None:
    memory = RecordingMemory()
    disk = ScriptedDisk(1 << 20)
    hba = AhciController(memory, ports=1)
    hba.attach(0, AtaDisk(disk))
    driver = AhciDriver.for_controller(hba, memory, DRIVER, RAM - DRIVER)
    driver.reset_hba()
    driver.start_port(0)
    buf = driver.alloc(512 * max(blocks, 1))
    payload = b"".join(struct.pack("<Q", lba | n << 48) for lba, n in ranges)
    memory.write(buf, payload.ljust(512, b"\0"))
    tf = TaskFile(command=d.ATA_CMD_DSM, features=d.ATA_DSM_TRIM, count=blocks, device=d.ATA_LBA)
    result = driver.command(0, tf, [(buf, 512 * max(blocks, 1))], write=True)
    valid = 0 < blocks <= 8 and all(lba + n <= (1 << 20) // 512 for lba, n in ranges if n)
    assert result.ok == valid
    for _op, offset, length in disk.log:
        assert offset + length <= disk.capacity
