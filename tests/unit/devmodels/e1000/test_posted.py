"""``posted_writes=True``: TDT/RDT/TCTL/RCTL writes leave their ring work to ``run_posted()``
(device.py rule 3), and nothing the driver can observe changes order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import Machine, UsageError
from devmodels.backends.net import LoopbackBackend
from devmodels.e1000 import E1000
from devmodels.e1000 import regs as r
from devmodels.e1000.testing import E1000Driver

from .conftest import Rig

PEER = bytes.fromhex("020000000001")


class PostedRig(Rig):
    """``Rig`` with a device built with ``posted_writes=True``."""

    def __init__(self) -> None:
        self.machine = Machine(ram_size=16 << 20, ram_backing="bytearray")
        self.host, self.wire = LoopbackBackend.pair(capacity=4096)
        self.device = E1000(self.machine.memory, self.wire, posted_writes=True)
        self.machine.add_pci(self.device)
        self.driver = E1000Driver(self.machine, self.device)


@pytest.fixture
def posted() -> Iterator[PostedRig]:
    rig = PostedRig()
    rig.up()
    yield rig
    rig.close()


def _frame(n: int, size: int = 100) -> bytes:
    return PEER + bytes.fromhex("525400123456") + b"\x08\x00" + bytes([n & 0xFF]) * (size - 14)


def test_tdt_write_only_notes_the_work(posted: PostedRig) -> None:
    dev = posted.device
    dev.run_posted()
    posted.sent()
    posted.driver.xmit(_frame(1))
    assert dev.posted
    assert posted.sent() == []  # answered before the ring was walked
    assert dev.run_posted() is True
    assert posted.sent() == [_frame(1)]
    assert dev.run_posted() is False and not dev.posted


def test_next_bar_access_runs_pending_work_first(posted: PostedRig) -> None:
    drv = posted.driver
    drv.xmit(_frame(2))
    assert drv.er32(r.TDH) == drv.tx_next  # the read saw the ring already walked
    assert posted.sent()[-1] == _frame(2)


def test_io_window_access_runs_pending_work_first(posted: PostedRig) -> None:
    drv = posted.driver
    drv.xmit(_frame(3))
    posted.machine.pio.write(drv.io + r.IOADDR, 4, r.TDH)
    assert posted.machine.pio.read(drv.io + r.IODATA, 4) == drv.tx_next


def test_rdt_write_pulls_waiting_frames_only_when_run(posted: PostedRig) -> None:
    dev, drv = posted.device, posted.driver
    ring = dev.rx.free_descriptors()
    for n in range(ring + 4):  # more than the ring holds: the rest wait in the backend
        posted.host.send(bytes.fromhex("525400123456") + PEER + b"\x08\x00" + bytes([n]) * 46)
    dev.receive_pending(ring + 4)
    assert len(drv.clean_rx()) == ring  # the driver refills, writing RDT
    assert dev.posted
    assert dev.rx.free_descriptors() == ring  # nothing pulled yet
    dev.run_posted()
    assert dev.rx.free_descriptors() == ring - 4
    assert len(drv.clean_rx()) == 4


def test_state_refuses_pending_work_quiesce_runs_it_and_reset_drops_it(posted: PostedRig) -> None:
    dev, drv = posted.device, posted.driver
    drv.xmit(_frame(4))
    with pytest.raises(UsageError, match=r"quiesce\(\)"):
        dev.state()  # the snapshot contract: state() never does the device's work
    assert dev.posted and _frame(4) not in posted.sent()
    dev.quiesce()
    dev.state()
    assert not dev.posted and posted.sent()[-1] == _frame(4)
    drv.xmit(_frame(5))
    dev.reset()
    assert not dev.posted and dev.run_posted() is False
    assert _frame(5) not in posted.sent()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(60, 3000), st.booleans()), min_size=1, max_size=12))
def test_same_wire_and_counters_as_immediate_mode(packets: list[tuple[int, bool]]) -> None:
    results = []
    for defer in (False, True):
        rig = PostedRig() if defer else Rig()
        try:
            drv = rig.up()
            for n, (size, tso) in enumerate(packets):
                frame = _tcp_frame(n, size)
                if tso and size > 1514:
                    drv.xmit(frame, tso_mss=1000)
                else:
                    drv.xmit(frame[:1514], csum_start=34, csum_offset=16)
                drv.poll()
                drv.clean_tx()
            rig.device.run_posted()
            results.append((rig.sent(), drv.er32(r.STATS_32["GPTC"]), drv.er32(r.TDH)))
        finally:
            rig.close()
    assert results[0] == results[1]


def _tcp_frame(n: int, size: int) -> bytes:
    """An IPv4/TCP frame of ``size`` bytes (pseudo-header sum in the checksum field)."""
    ip_len = size - 14
    ip = bytearray(20)
    ip[0], ip[2:4], ip[8], ip[9] = 0x45, ip_len.to_bytes(2, "big"), 64, 6
    ip[12:16], ip[16:20] = bytes([10, 0, 3, 2]), bytes([10, 0, 3, 1])
    tcp = bytearray(20)
    tcp[0:2], tcp[2:4], tcp[4:8], tcp[12], tcp[13] = b"\x13\x88", b"\x13\x89", n.to_bytes(4, "big"), 0x50, 0x18
    payload = bytes((n + i) & 0xFF for i in range(size - 54))
    return PEER + bytes.fromhex("525400123456") + b"\x08\x00" + bytes(ip) + bytes(tcp) + payload
