"""RDT must lie inside the receive ring (8254x SDM §3.2.6, §13.4.29: RDT < RDLEN/16).

A tail at or past the ring's end is a guest error: the device writes no descriptor, drops
and counts the frame (MPC) and traces it, and works again once the driver writes a valid
RDT. ``RDT == ring size`` is the off-by-one case: with RDH past 0 it looks like a ring with
free descriptors, and a bound checked with ``>`` instead of ``>=`` would deliver into it.
"""

from __future__ import annotations

import pytest

from devmodels._trace import RecordingSink
from devmodels.e1000 import RxResult
from devmodels.e1000 import regs as r
from devmodels.e1000.layouts import RX_DESC

from .conftest import Rig

OTHER = b"\x02\x00\x00\x00\x00\x99"


def _frame(rig: Rig) -> bytes:
    return rig.driver.mac + OTHER + b"\x08\x00" + bytes(50)


def _ring_bytes(rig: Rig) -> bytes:
    drv = rig.driver
    return rig.machine.memory.read(drv.rx_ring, 16 * drv.rx_count)


@pytest.fixture
def moved(up: Rig) -> Rig:
    """A ring whose head is past 0: four frames received and cleaned (RDH = 4)."""
    up.driver.clean_rx()
    for _ in range(4):
        assert up.device.receive_frame(_frame(up)) is RxResult.DELIVERED
    assert len(up.driver.clean_rx()) == 4
    assert up.device.registers["RDH"] == 4
    return up


@pytest.mark.parametrize("excess", [0, 1, 0xFFFF - 64], ids=["size", "size+1", "far"])
def test_tail_at_or_past_the_ring_end_delivers_nothing(moved: Rig, excess: int) -> None:
    drv, device = moved.driver, moved.device
    size = drv.rx_count
    drv.ew32(r.RDT, size + excess)
    before = _ring_bytes(moved)
    mpc = device.registers["MPC"]
    with RecordingSink("e1000.rx_drop") as trace:
        assert device.receive_frame(_frame(moved)) is RxResult.NO_BUFFERS
    assert _ring_bytes(moved) == before  # no descriptor written back
    assert device.registers["RDH"] == 4
    assert device.registers["MPC"] == mpc + 1
    assert any(fields.get("reason") == "guest-error" and "outside the ring" in fields.get("detail", "")
               for _, fields in trace.events), trace.events
    assert not device.rx.ready() and device.rx.free_descriptors() == 0


def test_a_valid_tail_after_a_bad_one_receives_again(moved: Rig) -> None:
    drv, device = moved.driver, moved.device
    drv.ew32(r.RDT, drv.rx_count)
    assert device.receive_frame(_frame(moved)) is RxResult.NO_BUFFERS
    drv.ew32(r.RDT, 3)  # the usual "all but one" tail for RDH = 4
    assert device.receive_frame(_frame(moved)) is RxResult.DELIVERED
    status = RX_DESC.unpack_from(moved.machine.memory.read(drv.rx_ring + 16 * 4, 16))[3]
    assert status & r.RXD_STAT_DD and device.registers["RDH"] == 5
