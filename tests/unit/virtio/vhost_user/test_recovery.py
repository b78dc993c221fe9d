"""Every ring error is recoverable by the guest's reset over vhost-user (session rule 6).

The reset sequence is what QEMU 7.2's front-end sent when a Linux guest unbound and bound
virtio_blk on a ``vhost-user-blk-pci`` device (recorded with the ``vhost_user.message``
trace, see ``tests/conformance/test_vhost_user_guest.py``): SET_VRING_ENABLE 0,
GET_VRING_BASE, SET_FEATURES with the *same* features (twice, with a SET_VRING_CALL
between), then SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR and SET_VRING_KICK on the
rings the driver initialized again, and SET_VRING_ENABLE 1. No RESET_DEVICE, no
SET_MEM_TABLE.
"""

from __future__ import annotations

import os
import select

import pytest

from virtio.blk.defs import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from virtio.defs import DEVICE_NEEDS_RESET, DRIVER_OK
from virtio.testing import MALFORMED, malform
from virtio.vhost_user.defs import (
    VHOST_USER_SET_FEATURES,
    VHOST_USER_SET_VRING_ENABLE,
    VHOST_USER_SET_VRING_ERR,
)
from virtio.vhost_user.messages import encode_u64, encode_vring_state

from .conftest import blk_features, blk_io, ring_driver, wait_until

DATA = bytes(range(256)) * 2


def error_fd(fe, index):
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    assert fe.ack(VHOST_USER_SET_VRING_ERR, encode_u64(index), [fd]) == 0
    return fd


def signalled(fd, timeout=2.0):
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready) and os.eventfd_read(fd) > 0


def qemu_guest_reset(fe, features, rings):
    """QEMU 7.2's messages for a guest reset; ``rings`` maps index -> the driver's new ring."""
    for index in rings:
        assert fe.ack(VHOST_USER_SET_VRING_ENABLE, encode_vring_state(index, 0)) == 0
        fe.get_vring_base(index)
    for _ in range(2):
        assert fe.ack(VHOST_USER_SET_FEATURES, encode_u64(features)) == 0
    for index, driver in rings.items():
        fe.setup_ring(index, driver)


def cases():
    return [pytest.param(packed, kind, id=f"{'packed' if packed else 'split'}-{kind}")
            for packed in (False, True) for kind in MALFORMED[packed]]


@pytest.mark.parametrize(("packed", "kind"), cases())
def test_a_ring_error_is_left_by_the_guest_reset(served, packed, kind):
    fe = served.frontend
    features = blk_features(fe, packed)
    fe.handshake(features)
    err = error_fd(fe, 0)
    driver = ring_driver(served, packed, features)
    fe.setup_ring(0, driver)
    blk_io(served, driver, 0, [(VIRTIO_BLK_T_OUT, 0, DATA, 0)])
    malform(driver, kind, foreign=0xFEB0_0000)  # an address no memory region covers
    fe.kick(0)
    assert signalled(err), "the vring error eventfd was not written"
    assert served.device.status & DEVICE_NEEDS_RESET
    driver = ring_driver(served, packed, features, base=0x200000)  # initialized again by the guest
    qemu_guest_reset(fe, features, {0: driver})
    wait_until(lambda: served.device.status & (DRIVER_OK | DEVICE_NEEDS_RESET) == DRIVER_OK)
    (used,) = blk_io(served, driver, 0, [(VIRTIO_BLK_T_IN, 0, b"", len(DATA))])
    assert used.read(served.ram.memory)[: len(DATA)] == DATA
    assert not signalled(err, timeout=0.1)  # written once, for the error
    assert served.server.connected and served.server.last_error is None
    os.close(err)


def test_a_ring_stopped_and_started_again_starts_clean_without_set_features(served):
    fe = served.frontend
    features = blk_features(fe, False)
    fe.handshake(features)
    driver = ring_driver(served, False, features)
    fe.setup_ring(0, driver)
    malform(driver, "loop")
    fe.kick(0)
    wait_until(lambda: served.device.status & DEVICE_NEEDS_RESET)
    fe.get_vring_base(0)
    driver = ring_driver(served, False, features, base=0x200000)
    fe.setup_ring(0, driver)
    assert [u.written for u in blk_io(served, driver, 0, [(VIRTIO_BLK_T_OUT, 8, DATA, 0)])] == [1]
    assert served.disk.read_at(8 * 512, len(DATA)) == DATA


def test_a_failed_ring_stays_out_until_it_is_stopped_and_started(served):
    fe = served.frontend
    features = blk_features(fe, False)
    fe.handshake(features)
    ring0 = ring_driver(served, False, features)
    ring1 = ring_driver(served, False, features, base=0x300000)
    fe.setup_ring(0, ring0)
    fe.setup_ring(1, ring1)
    malform(ring0, "avail_jump")
    fe.kick(0)
    wait_until(lambda: served.device.status & DEVICE_NEEDS_RESET)
    # Only ring 1 is restarted: it starts clean on a reset device, ring 0 stays out.
    fe.get_vring_base(1)
    ring1 = ring_driver(served, False, features, base=0x300000)
    fe.setup_ring(1, ring1)
    assert len(blk_io(served, ring1, 1, [(VIRTIO_BLK_T_OUT, 0, DATA, 0)])) == 1
    fe.kick(0)
    assert not fe.wait_call(0, timeout=0.2)
    assert not served.device.queues[0].ready
    fe.get_vring_base(0)
    ring0 = ring_driver(served, False, features)
    fe.setup_ring(0, ring0)
    assert len(blk_io(served, ring0, 0, [(VIRTIO_BLK_T_OUT, 8, DATA, 0)])) == 1
