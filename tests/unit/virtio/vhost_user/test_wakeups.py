"""Late suppression stores of a driver cannot hang a vhost-user ring (backend rule 5).

A guest that drops its memory barriers (QEMU 7.2's TCG with one vCPU) lets the driver's
store of ``used_event`` pass its load of the used index, and its load of ``avail_event``
pass its store of the available index. The fake front-end's driver scripts both: the
device decides on a stale value (no call; no kick), the driver's store lands afterwards,
and the server must still send the call / process the buffers, within its stated bound
(one second when the loop is otherwise idle).
"""

from __future__ import annotations

from virtio.blk.defs import VIRTIO_BLK_T_OUT
from virtio.blk.layouts import VIRTIO_BLK_REQ_HDR

from .conftest import blk_features, ring_driver

BOUND = 1.0  # backend rule 5: an idle loop rechecks at least this often
DATA = bytes(range(256)) * 2


def setup(served, packed):
    fe = served.frontend
    features = blk_features(fe, packed)
    fe.handshake(features)
    driver = ring_driver(served, packed, features)
    fe.setup_ring(0, driver)
    return fe, driver


def write_request(driver, sector):
    driver.add([VIRTIO_BLK_REQ_HDR.pack(VIRTIO_BLK_T_OUT, 0, sector), DATA], [1])


def test_a_call_asked_for_by_a_late_used_event_store_is_sent(served, packed):
    fe, driver = setup(served, packed)
    # What the device will read: a value asking for a notification one entry later than
    # this request's (the request takes 3 descriptors on a packed ring).
    if packed:
        driver.set_interrupts(True, at=(driver.next_used + 3, driver.used_wrap))
    else:
        driver.set_interrupts(True, used_event=(driver.last_used + 1) & 0xFFFF)
    write_request(driver, 0)
    assert driver.kick()
    fe.kick(0)
    assert not fe.wait_call(0, timeout=0.3)  # completed, no call: the driver did not ask (yet)
    assert served.disk.read_at(0, len(DATA)) == DATA
    driver.set_interrupts(True)  # the store the driver made before it looked at the used index
    assert fe.wait_call(0, timeout=BOUND + 1.5)
    assert [u.written for u in driver.reap()] == [1]


def test_buffers_made_available_without_a_kick_are_processed(served, packed):
    fe, driver = setup(served, packed)
    write_request(driver, 8)
    driver.kick()  # the driver decided on a stale avail_event: no kick reaches the back-end
    assert fe.wait_call(0, timeout=BOUND + 1.5)
    assert [u.written for u in driver.reap()] == [1]
    assert served.disk.read_at(8 * 512, len(DATA)) == DATA
