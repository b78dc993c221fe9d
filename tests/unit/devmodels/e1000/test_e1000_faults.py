"""The 82540EM under faults (``devmodels.e1000.faults``): what the driver sees of a pulled
cable, a hung transmitter, a corrupted frame and a receive overrun."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devmodels.backends.net import LoopbackBackend
from devmodels.e1000 import regs as r
from devmodels.e1000.faults import E1000Faults
from devmodels.faults import FaultEngine, FaultyNetBackend, FrameCorrupt, LinkDown, RxOverrun, TxHang

from .conftest import Rig

MS = 1_000_000
PEER = bytes.fromhex("020000000001")
US = bytes.fromhex("525400123456")


def frame(n: int, size: int = 100) -> bytes:
    return US + PEER + b"\x08\x00" + bytes([n & 0xFF]) * (size - 14)


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FaultRig(Rig):
    """``Rig`` whose wire end goes through a ``FaultyNetBackend``, with the e1000 hooks."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.engine = FaultEngine(clock=self.clock)
        self.host, wire = LoopbackBackend.pair(capacity=4096)
        self.wire = FaultyNetBackend(wire, self.engine)  # type: ignore[assignment]
        from devmodels import Machine
        from devmodels.e1000 import E1000
        from devmodels.e1000.testing import E1000Driver

        self.machine = Machine(ram_size=16 << 20, ram_backing="bytearray")
        self.device = E1000(self.machine.memory, self.wire)
        self.machine.add_pci(self.device)
        self.driver = E1000Driver(self.machine, self.device)
        self.hooks = E1000Faults(self.device, self.engine)

    def deliver(self) -> None:
        self.device.receive_pending()


@pytest.fixture
def rig() -> Iterator[FaultRig]:
    r_ = FaultRig()
    r_.up()
    yield r_
    r_.close()


def test_link_down_clears_lu_raises_lsc_and_loses_frames(rig: FaultRig) -> None:
    drv = rig.driver
    rig.engine.add(LinkDown(for_ms=100))
    assert not drv.er32(r.STATUS) & r.STATUS_LU
    icr, _, _ = drv.handle_irq()
    assert icr & r.ICR_LSC and not drv.link
    drv.xmit(frame(1))
    assert rig.sent() == []
    rig.host.send(frame(2))
    rig.deliver()
    rig.clock.now = 100 * MS
    rig.engine.tick()
    icr, _, _ = drv.handle_irq()
    assert icr & r.ICR_LSC and drv.link and drv.er32(r.STATUS) & r.STATUS_LU
    rig.host.send(frame(3))
    rig.deliver()
    got = drv.poll()
    assert [f.data[14] for f in got] == [3]  # what arrived while the cable was out is gone
    assert rig.wire.stats.flushed == 1  # type: ignore[attr-defined]


def test_a_hung_transmitter_writes_nothing_back_until_reset(rig: FaultRig) -> None:
    drv = rig.driver
    fid = rig.engine.add(TxHang())
    drv.xmit(frame(1))
    drv.xmit(frame(2))
    assert rig.sent() == []
    assert drv.clean_tx() == 0  # no DD: the driver's "Detected Tx Unit Hang"
    assert drv.er32(r.TDH) == 0
    drv.reset_hw()  # CTRL.RST, as e1000_reset does after the tx timeout
    active = rig.engine.get(fid)
    assert active is not None and active.ended
    drv.link = False
    rig.up()  # e1000_up: rings programmed again, link seen again
    drv.xmit(frame(3))
    assert rig.sent() == [frame(3)]


def test_the_window_end_sends_what_was_queued(rig: FaultRig) -> None:
    drv = rig.driver
    rig.engine.add(TxHang(until_reset=False, for_ms=50))
    drv.xmit(frame(1))
    assert rig.sent() == []
    rig.clock.now = 50 * MS
    rig.engine.tick()
    assert rig.sent() == [frame(1)]
    assert drv.clean_tx() == 1


def test_a_corrupted_frame_fails_the_fcs_check(rig: FaultRig) -> None:
    drv = rig.driver
    rig.engine.add(FrameCorrupt(direction="rx", count=1))
    rig.host.send(frame(1))
    rig.host.send(frame(2))
    rig.deliver()
    got = drv.poll()
    assert [f.data[14] for f in got] == [2]
    assert drv.er32(r.STATS_32["CRCERRS"]) == 1
    assert rig.hooks.crc_errors == 1


def test_a_corrupted_frame_is_stored_with_sbp(rig: FaultRig) -> None:
    drv = rig.driver
    drv.ew32(r.RCTL, drv.er32(r.RCTL) | r.RCTL_SBP)
    rig.engine.add(FrameCorrupt(direction="rx", count=1))
    rig.host.send(frame(1))
    rig.deliver()
    got = drv.poll()
    assert len(got) == 1 and got[0].data != frame(1)


def test_an_overrun_is_counted_and_interrupts(rig: FaultRig) -> None:
    drv = rig.driver
    free = rig.device.rx.free_descriptors()
    rig.engine.add(RxOverrun(frames=free + 20, size=200))
    assert rig.hooks.overrun.dropped == 20
    icr, got, _ = drv.handle_irq()
    assert icr & r.ICR_RXO
    assert drv.er32(r.STATS_32["MPC"]) == 20 and drv.er32(r.STATS_32["RNBC"]) == 20


def test_remove_takes_the_hooks_off(rig: FaultRig) -> None:
    rig.hooks.remove()
    assert "process" not in vars(rig.device.tx) and "receive" not in vars(rig.device.rx)
    rig.engine.add(TxHang())
    rig.driver.xmit(frame(1))
    assert rig.sent() == [frame(1)]
