"""Hypothesis properties of the e1000 rings: any ring contents and register values leave the
device standing (no exception escapes), its work bounded by one lap of the ring, and its
DMA writes confined to the places the SDM allows (transmit: descriptor status bytes;
receive: the write-back half of descriptors it owns and the buffers they point at)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels import Access, GuestMemory, MemoryRegion, NullLevelSink
from devmodels.e1000 import E1000, RxResult
from devmodels.e1000 import regs as r

RAM = 64 << 10  # small RAM: many guest addresses fall outside it
RING = 0x1000


class Recorder:
    """An identity IOMMU that records every access the device attempts."""

    def __init__(self) -> None:
        self.log: list[tuple[int, int, Access]] = []

    def __call__(self, iova: int, length: int, access: Access) -> int:
        self.log.append((iova, length, access))
        return iova


class Sink:
    """A NetBackend that keeps sent frames and feeds given ones."""

    offloads = None
    dropped = 0

    def __init__(self, inbox: list[bytes] | None = None) -> None:
        self.sent: list[bytes] = []
        self.inbox = list(inbox or [])

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        self.sent.append(bytes(frame))
        return True

    def receive(self, limit: int = 64) -> list[bytes]:
        out, self.inbox = self.inbox[:limit], self.inbox[limit:]
        return out

    def set_vnet_hdr(self, enabled: bool) -> None: ...
    def fileno(self) -> None: ...
    def set_notify(self, notify: object) -> None: ...
    def close(self) -> None: ...


def make(backend: Sink) -> tuple[E1000, GuestMemory, Recorder]:
    recorder = Recorder()
    memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM)], translate=recorder)
    dev = E1000(memory, backend, mitigation=True)  # type: ignore[arg-type]
    dev.intx = NullLevelSink()
    dev.config_write(0x04, 2, 0x0006)  # memory decode + bus master
    return dev, memory, recorder


addresses = st.one_of(
    st.integers(0x2000, RAM - 1),
    st.integers(0x2000, RAM - 1),
    st.integers(RAM - 64, RAM + 64),
    st.integers(0, (1 << 64) - 1),
)
tx_descriptor = st.builds(
    lambda addr, length, cso, cmd, sta, css, special, dext, dtyp, popts: struct.pack(
        "<QIBBH",
        addr,
        (cmd | (r.TXD_CMD_DEXT if dext else 0)) << 24 | dtyp << 20 | (length & 0xF_FFFF) if dext
        else (cmd & ~r.TXD_CMD_DEXT) << 24 | css << 16 | (length & 0xFFFF),
        sta,
        popts,
        special,
    ) if dext else struct.pack("<QHBBBBH", addr, length & 0xFFFF, cso, cmd & ~r.TXD_CMD_DEXT, sta, css, special),
    addresses,
    st.one_of(st.integers(0, 2000), st.integers(0, 2000), st.integers(0, 0xF_FFFF)),
    st.integers(0, 255),
    st.one_of(st.integers(0, 255), st.sampled_from([r.TXD_CMD_EOP, r.TXD_CMD_EOP | r.TXD_CMD_RS, 0])),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.sampled_from([0, 1, 1, 1, 2, 15]),
    st.integers(0, 255),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    descs=st.lists(tx_descriptor, min_size=1, max_size=32),
    ring_len=st.sampled_from([0, 8, 16, 32, 32, 32, 4096]),
    positions=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    base=st.one_of(st.just(RING), st.just(RING), st.just(RING), addresses),
    vme=st.booleans(),
)
def test_tx_ring_any_contents(descs: list[bytes], ring_len: int, positions: tuple[int, int], base: int, vme: bool) -> None:
    head, tail = positions
    if ring_len and positions[0] % 4:  # mostly inside the ring
        head, tail = head % ring_len, tail % ring_len
    backend = Sink()
    dev, memory, rec = make(backend)
    for i, raw in enumerate(descs):
        memory.write(RING + 16 * i, raw)
    regs = dev.registers
    regs["TDBAL"] = base & 0xFFFF_FFF0
    regs["TDBAH"] = base >> 32
    regs["TDLEN"] = ring_len * 16
    regs["TDH"] = head
    regs["CTRL"] = regs["CTRL"] | (r.CTRL_VME if vme else 0)
    dev.bar_write(0, r.TCTL, 4, r.TCTL_EN | r.TCTL_PSP)
    rec.log.clear()
    dev.bar_write(0, r.TDT, 4, tail)
    dev.bar_write(0, r.TDT, 4, tail)  # a second kick finds nothing new or finishes a packet
    ring_base = base & 0xFFFF_FFF0 | (base >> 32) << 32
    descriptor_reads = [a for a in rec.log if a[1] == 16 and a[2] == Access.READ]
    assert len(descriptor_reads) <= 2 * max(ring_len, 1)  # at most one lap per kick
    for gpa, length, access in rec.log:
        if access & Access.WRITE:  # only DD write-back into status bytes of the ring
            assert length == 1 and (gpa - ring_base) % 16 == 12 and 0 <= gpa - ring_base < 16 * ring_len
    size = ring_len
    if size and head < size and tail < size:
        assert dev.registers["TDH"] < size
    for frame in backend.sent:
        assert 14 <= len(frame) <= r.MAX_TX_PACKET + 4


rx_descriptor = st.builds(lambda addr, status: struct.pack("<QHHBBH", addr, 0, 0, status, 0, 0), addresses, st.integers(0, 255))
frames = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=2000),
        st.builds(lambda body: b"\x52\x54\x00\x12\x34\x56" + b"\x02" * 6 + body, st.binary(max_size=3000)),
        st.builds(lambda body: b"\xff" * 12 + b"\x81\x00" + body, st.binary(max_size=200)),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    descs=st.lists(rx_descriptor, min_size=1, max_size=32),
    ring_len=st.sampled_from([0, 8, 16, 32, 32]),
    positions=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    rctl=st.one_of(st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFF_FFFF).map(lambda v: v | r.RCTL_EN | r.RCTL_UPE)),
    ctrl_vme=st.booleans(),
    rxcsum=st.integers(0, 0x3FF),
    frames=frames,
)
def test_rx_ring_any_contents(descs: list[bytes], ring_len: int, positions: tuple[int, int], rctl: int,
                              ctrl_vme: bool, rxcsum: int, frames: list[bytes]) -> None:
    head, tail = positions
    if ring_len and positions[0] % 4:
        head, tail = head % ring_len, tail % ring_len
    backend = Sink(frames)
    dev, memory, rec = make(backend)
    for i, raw in enumerate(descs):
        memory.write(RING + 16 * i, raw)
    owned = {(head + k) % ring_len for k in range((tail - head) % ring_len)} if ring_len and head < ring_len and tail < ring_len else set()
    buffers = {}
    for k in owned:
        if k < len(descs):
            buffers[k] = struct.unpack_from("<Q", descs[k])[0]
        else:
            buffers[k] = 0
    dev.bar_write(0, r.RDBAL, 4, RING)
    dev.bar_write(0, r.RDLEN, 4, ring_len * 16)
    dev.bar_write(0, r.RDH, 4, head)
    dev.bar_write(0, r.RXCSUM, 4, rxcsum)
    dev.bar_write(0, r.CTRL, 4, r.CTRL_SLU | (r.CTRL_VME if ctrl_vme else 0))
    dev.bar_write(0, r.RDT, 4, tail)  # before RCTL.EN, so the device only ever owns [head, tail)
    rec.log.clear()
    dev.bar_write(0, r.RCTL, 4, rctl & ~r.RCTL_LBM_MASK)
    dev.bar_write(0, r.RDT, 4, tail)
    dev.receive_pending(budget=16)
    for frame in frames:
        assert isinstance(dev.receive_frame(frame), RxResult)
    dev.tick(1 << 40)
    bsize = 16384
    for gpa, length, access in rec.log:
        if not access & Access.WRITE:
            continue
        offset = gpa - RING
        if 0 <= offset < 16 * ring_len and length == 8 and offset % 16 == 8:
            assert offset // 16 in owned  # write-back only into descriptors the driver gave us
        else:
            assert any(addr <= gpa and gpa + length <= addr + bsize for addr in buffers.values()), (gpa, length)
    if ring_len and head < ring_len and tail < ring_len:
        assert dev.registers["RDH"] < ring_len


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, r.BAR0_SIZE + 64), st.sampled_from([1, 2, 4, 8]),
                          st.integers(0, (1 << 64) - 1)), max_size=60))
def test_any_register_access_sequence(ops: list[tuple[bool, int, int, int]]) -> None:
    backend = Sink([b"\x52\x54\x00\x12\x34\x56" + bytes(60)] * 4)
    dev, _, _ = make(backend)
    for is_io, offset, size, value in ops:
        if is_io:
            bar, offset = 1, offset % r.BAR1_SIZE
        else:
            bar = 0
        offset -= offset % size
        if offset + size > (r.BAR1_SIZE if bar else r.BAR0_SIZE):
            continue
        if value & 1:
            dev.bar_read(bar, offset, size)
        else:
            dev.bar_write(bar, offset, size, value & ((1 << (8 * size)) - 1))
        dev.receive_pending(budget=2)
        dev.tick(value >> 24)
