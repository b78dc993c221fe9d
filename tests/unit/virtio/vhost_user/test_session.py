"""A vhost-user session end to end: a fake front-end over a socketpair, the back-end thread
serving virtio-blk, ring I/O through the driver simulator, and hostile messages."""

from __future__ import annotations

import os
import socket
import time

import pytest

from virtio.blk.defs import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from virtio.blk.layouts import virtio_blk_config
from virtio.defs import VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1
from virtio.vhost_user.defs import (
    VHOST_USER_ADD_MEM_REG,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_GET_MAX_MEM_SLOTS,
    VHOST_USER_GET_STATUS,
    VHOST_USER_GET_VRING_BASE,
    VHOST_USER_MAX_MEM_SLOTS,
    VHOST_USER_PROTOCOL_F_CONFIG,
    VHOST_USER_PROTOCOL_F_REPLY_ACK,
    VHOST_USER_REM_MEM_REG,
    VHOST_USER_RESET_DEVICE,
    VHOST_USER_SET_FEATURES,
    VHOST_USER_SET_LOG_FD,
    VHOST_USER_SET_MEM_TABLE,
    VHOST_USER_SET_OWNER,
    VHOST_USER_SET_PROTOCOL_FEATURES,
    VHOST_USER_SET_VRING_ADDR,
    VHOST_USER_SET_VRING_BASE,
    VHOST_USER_SET_VRING_CALL,
    VHOST_USER_SET_VRING_ENABLE,
    VHOST_USER_SET_VRING_KICK,
    VHOST_USER_SET_VRING_NUM,
    VHOST_USER_VRING_NOFD_MASK,
)
from virtio.vhost_user.messages import (
    Region,
    encode_config,
    encode_mem_reg,
    encode_memory,
    encode_u64,
    encode_vring_addr,
    encode_vring_state,
)
from virtio.vhost_user.session import PROTOCOL_FEATURES
from virtio.vhost_user.testing import FakeFrontEnd, FrontEndError

from .conftest import blk_features, blk_io, open_fds, ring_driver, wait_until

DATA = bytes(range(256)) * 16


def setup(served, packed):
    fe = served.frontend
    features = blk_features(fe, packed)
    fe.handshake(features)
    driver = ring_driver(served, packed, features)
    fe.setup_ring(0, driver)
    return fe, driver, features


def test_negotiation_answers(served):
    fe = served.frontend
    features = fe.get_features()
    assert features >> VHOST_USER_F_PROTOCOL_FEATURES & 1
    assert features >> VIRTIO_F_VERSION_1 & 1
    assert not features >> VIRTIO_F_RING_RESET & 1  # vhost-user has no message for it
    assert fe.get_protocol_features() == PROTOCOL_FEATURES
    fe.send(VHOST_USER_SET_PROTOCOL_FEATURES, encode_u64(PROTOCOL_FEATURES))
    assert fe.get_queue_num() == 2
    assert fe.call(VHOST_USER_GET_MAX_MEM_SLOTS).payload == encode_u64(VHOST_USER_MAX_MEM_SLOTS)
    config = virtio_blk_config.parse(fe.get_config(0, virtio_blk_config.sizeof()))
    assert config.capacity == 2048 and config.num_queues == 2
    assert fe.get_config(0, 100)[virtio_blk_config.sizeof():] == bytes(100 - virtio_blk_config.sizeof())


def test_block_io_through_the_rings(served, packed):
    fe, driver, _ = setup(served, packed)
    used = blk_io(served, driver, 0, [(VIRTIO_BLK_T_OUT, 8, DATA, 0)])
    assert [u.written for u in used] == [1]
    assert served.disk.read_at(8 * 512, len(DATA)) == DATA
    (read,) = blk_io(served, driver, 0, [(VIRTIO_BLK_T_IN, 8, b"", len(DATA))])
    content = read.read(served.ram.memory)
    assert content[: len(DATA)] == DATA and content[-1] == VIRTIO_BLK_S_OK
    # A batch larger than one notification's worth.
    batch = [(VIRTIO_BLK_T_OUT, i, DATA[:512], 0) for i in range(20)]
    assert len(blk_io(served, driver, 0, batch)) == 20


def test_second_queue_and_get_vring_base_restart(served, packed):
    fe, driver0, features = setup(served, packed)
    driver1 = ring_driver(served, packed, features, base=0x400000)
    fe.setup_ring(1, driver1)
    blk_io(served, driver1, 1, [(VIRTIO_BLK_T_OUT, 0, DATA, 0)])
    blk_io(served, driver1, 1, [(VIRTIO_BLK_T_OUT, 8, DATA, 0)])
    base = fe.get_vring_base(1)
    if packed:
        assert base == (2 * 3) | 0x8000 | ((2 * 3) | 0x8000) << 16  # two lists of 3 descriptors
    else:
        assert base == 2
    # Stopped: a kick is ignored until the ring is started again with that base.
    driver1.add([bytes(16)], [1])
    driver1.kick()
    os.eventfd_write(fe.kick_fds[1], 1)
    assert not fe.wait_call(1, timeout=0.2)
    fe.setup_ring(1, driver1, base=base)
    assert fe.wait_call(1)
    assert len(driver1.reap()) == 1


def test_reconnect_after_the_front_end_goes_away(served, packed):
    fe, driver, features = setup(served, packed)
    blk_io(served, driver, 0, [(VIRTIO_BLK_T_OUT, 0, DATA, 0)])
    before = served.server.sessions
    fe = served.reconnect()
    features = blk_features(fe, packed)
    fe.handshake(features)
    driver = ring_driver(served, packed, features, base=0x800000)
    fe.setup_ring(0, driver)
    (read,) = blk_io(served, driver, 0, [(VIRTIO_BLK_T_IN, 0, b"", len(DATA))])
    assert read.read(served.ram.memory)[: len(DATA)] == DATA
    assert served.server.sessions == before + 1


def test_reset_device_and_feature_change(served, packed):
    fe, driver, features = setup(served, packed)
    blk_io(served, driver, 0, [(VIRTIO_BLK_T_OUT, 0, DATA, 0)])
    assert fe.ack(VHOST_USER_RESET_DEVICE) == 0
    fe.handshake(features & ~(1 << VIRTIO_F_RING_PACKED))
    driver = ring_driver(served, False, features, base=0x800000)
    fe.setup_ring(0, driver)
    assert len(blk_io(served, driver, 0, [(VIRTIO_BLK_T_IN, 0, b"", 512)])) == 1


def test_ring_started_before_features_waits_for_them(served):
    fe = served.frontend
    fe.send(VHOST_USER_SET_OWNER)
    fe.send(VHOST_USER_SET_PROTOCOL_FEATURES, encode_u64(PROTOCOL_FEATURES))
    assert fe.set_mem_table() == 0
    features = blk_features(fe, False)
    driver = ring_driver(served, False, features)
    driver.add([bytes(16)], [1])
    driver.kick()
    fe.setup_ring(0, driver)  # kick descriptor set before SET_FEATURES: nothing runs yet
    assert not fe.wait_call(0, timeout=0.2)
    assert fe.ack(VHOST_USER_SET_FEATURES, encode_u64(features)) == 0
    assert fe.wait_call(0)  # starting the ring found the request queued earlier


def test_add_and_remove_memory_regions(served):
    fe = served.frontend
    fe.send(VHOST_USER_SET_PROTOCOL_FEATURES, encode_u64(PROTOCOL_FEATURES))
    (region,) = served.ram.regions()
    (fd,) = served.ram.fds()
    assert fe.ack(VHOST_USER_ADD_MEM_REG, encode_mem_reg(region), [fd]) == 0
    assert fe.ack(VHOST_USER_ADD_MEM_REG, encode_mem_reg(region), [fd]) == 1  # overlaps itself
    assert fe.ack(VHOST_USER_REM_MEM_REG, encode_mem_reg(region)) == 0
    assert fe.ack(VHOST_USER_REM_MEM_REG, encode_mem_reg(region)) == 1  # gone already
    assert fe.ack(VHOST_USER_ADD_MEM_REG, encode_mem_reg(region), []) == 1  # no descriptor


# -- hostile messages ----------------------------------------------------------------------


def handshaken(served):
    fe = served.frontend
    fe.send(VHOST_USER_SET_PROTOCOL_FEATURES, encode_u64(PROTOCOL_FEATURES))
    return fe


@pytest.mark.parametrize(
    "request_, payload",
    [
        (VHOST_USER_SET_VRING_NUM, encode_vring_state(7, 64)),  # no such ring
        (VHOST_USER_SET_VRING_NUM, encode_vring_state(0, 0)),  # size 0
        (VHOST_USER_SET_VRING_NUM, encode_vring_state(0, 65)),  # above the maximum
        (VHOST_USER_SET_VRING_BASE, encode_vring_state(0, 0x10000)),  # wider than 16 bits (split)
        (VHOST_USER_SET_VRING_ENABLE, encode_vring_state(0, 2)),
        (VHOST_USER_SET_VRING_NUM, encode_vring_state(0, 64) + b"\0"),  # size
        (VHOST_USER_SET_VRING_ADDR, encode_vring_addr(0, 0x1000, 0x2000, 0x3000, flags=2)),  # undefined flag
        (VHOST_USER_SET_FEATURES, encode_u64(1 << 63)),  # never offered
        (VHOST_USER_SET_LOG_FD, encode_u64(0)),  # no descriptor
        (VHOST_USER_SET_VRING_CALL, encode_u64(0x1_0000)),  # reserved bits
    ],
)
def test_bad_messages_get_an_error_ack_and_the_session_goes_on(served, request_, payload):
    fe = handshaken(served)
    assert fe.ack(request_, payload) == 1
    assert fe.get_queue_num() == 2  # still talking


def test_untranslatable_ring_address_is_refused(served):
    fe = handshaken(served)
    assert fe.set_mem_table() == 0
    assert fe.ack(VHOST_USER_SET_VRING_NUM, encode_vring_state(0, 64)) == 0
    assert fe.ack(VHOST_USER_SET_VRING_ADDR, encode_vring_addr(0, 0x1000, 0x2000, 0x3000)) == 1
    # The used ring hanging over the end of the region:
    uaddr = served.ram.uaddr
    end = served.ram.memory.size
    assert fe.ack(VHOST_USER_SET_VRING_ADDR, encode_vring_addr(0, uaddr(0), uaddr(end - 16), uaddr(0x2000))) == 1


def test_kick_descriptor_must_be_an_eventfd_and_strays_are_closed(served, tmp_path):
    fe = handshaken(served)
    wait_until(lambda: served.server.connected)
    path = tmp_path / "file"
    path.write_bytes(b"x")
    baseline = open_fds()
    with open(path, "rb") as f:
        assert fe.ack(VHOST_USER_SET_VRING_KICK, encode_u64(0), [f.fileno()]) == 1
        r, w = os.pipe()
        assert fe.ack(VHOST_USER_SET_VRING_CALL, encode_u64(0 | VHOST_USER_VRING_NOFD_MASK), [r]) == 1
        assert fe.ack(VHOST_USER_SET_OWNER, b"", [w]) == 1  # a descriptor nobody asked for
        e1, e2 = os.eventfd(0), os.eventfd(0)
        assert fe.ack(VHOST_USER_SET_VRING_CALL, encode_u64(0), [e1, e2]) == 1  # two, not one
        for fd in (r, w, e1, e2):
            os.close(fd)
    wait_until(lambda: open_fds() <= baseline)


def test_bad_memory_tables_are_refused(served):
    fe = handshaken(served)
    regions = served.ram.regions()
    fds = served.ram.fds()
    overlapping = [regions[0], Region(regions[0].gpa + 0x1000, 0x1000, regions[0].uaddr + 0x100000000, 0)]
    assert fe.ack(VHOST_USER_SET_MEM_TABLE, encode_memory(overlapping), fds + fds) == 1
    assert fe.ack(VHOST_USER_SET_MEM_TABLE, encode_memory(regions), []) == 1
    too_big = [Region(regions[0].gpa, regions[0].size * 2, regions[0].uaddr, 0)]
    assert fe.ack(VHOST_USER_SET_MEM_TABLE, encode_memory(too_big), fds) == 1
    assert fe.set_mem_table() == 0


def test_ring_base_ahead_of_used_index_is_refused(served):
    fe = handshaken(served)
    features = blk_features(fe, False)
    fe.handshake(features)
    driver = ring_driver(served, False, features)
    with pytest.raises(FrontEndError):
        # SET_VRING_KICK starts the ring: the base 100 is more than 64 ahead of used idx 0.
        fe.setup_ring(0, driver, base=100)
    assert fe.get_queue_num() == 2


def test_get_config_out_of_range_is_an_empty_reply(served):
    fe = handshaken(served)
    assert fe.get_config(250, 10) == b""


def test_config_without_the_protocol_feature_is_refused(served):
    fe = served.frontend
    fe.send(VHOST_USER_SET_PROTOCOL_FEATURES, encode_u64(1 << VHOST_USER_PROTOCOL_F_REPLY_ACK))
    assert fe.get_config(0, 8) == b""
    assert fe.ack(25, encode_config(32, b"\0")) == 1  # SET_CONFIG
    assert not PROTOCOL_FEATURES & ~(PROTOCOL_FEATURES | 1 << VHOST_USER_PROTOCOL_F_CONFIG)


@pytest.mark.parametrize(
    "forge",
    [
        lambda fe: fe.send(VHOST_USER_SET_OWNER, size=1 << 20),  # oversize header
        lambda fe: fe.send(VHOST_USER_SET_OWNER, flags=2),  # wrong version
        lambda fe: fe.send(99),  # unknown request, no ack asked for
        lambda fe: fe.send(VHOST_USER_GET_STATUS),  # not negotiated; the reply cannot be given
        lambda fe: fe.send(VHOST_USER_SET_PROTOCOL_FEATURES, encode_u64(1 << 40)),  # never offered
        lambda fe: fe.send(VHOST_USER_GET_VRING_BASE, encode_vring_state(9, 0)),  # needs a reply
        lambda fe: fe.send(VHOST_USER_SET_OWNER, fds=[os.eventfd(0) for _ in range(20)]),  # too many fds
    ],
    ids=["oversize", "version", "unknown", "status", "protocol-bits", "get-base-bad-ring", "many-fds"],
)
def test_fatal_messages_disconnect_and_the_back_end_survives(served, forge):
    fe = served.frontend
    fe.get_features()
    forge(fe)
    assert fe.closed(timeout=5)
    wait_until(lambda: not served.server.connected)
    assert served.server.last_error
    fe = served.reconnect()
    assert fe.get_queue_num() == 2


def test_unknown_request_with_reply_ack_gets_an_error_ack(served):
    fe = handshaken(served)
    assert fe.ack(99) == 1
    assert fe.get_queue_num() == 2


def test_second_front_end_is_refused_while_one_is_attached(served):
    served.frontend.get_features()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    served.server.adopt(ours)
    other = FakeFrontEnd(theirs, served.ram, timeout=2.0)
    assert other.closed(timeout=5)
    other.close()
    assert served.frontend.get_queue_num() == 2


def test_front_end_vanishing_mid_io_leaves_a_usable_device(served, packed):
    fe, driver, _ = setup(served, packed)
    for _ in range(10):
        driver.add([bytes(16), DATA[:512]], [1])
    driver.kick()
    fe.kick(0)
    served.frontend.sock.close()  # gone without a goodbye
    wait_until(lambda: not served.server.connected)
    assert served.device.status == 0  # reset for the next front-end
    assert len(served.device.memory.regions) == 0  # unmapped
    fe = served.reconnect()
    assert fe.get_queue_num() == 2


def test_listening_socket_path(tmp_path, ring_impl):
    from devmodels import GuestMemory
    from devmodels.backends import MemoryDiskBackend
    from virtio.blk import VirtioBlkDevice
    from virtio.vhost_user import VhostUserServer
    from virtio.vhost_user.testing import SharedRam

    path = tmp_path / "vu.sock"
    disk = MemoryDiskBackend(1 << 20)
    with VhostUserServer(VirtioBlkDevice(GuestMemory(), disk), path) as server:
        server.start()
        ram = SharedRam.create()
        for _ in range(2):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            fe = FakeFrontEnd(sock, ram, timeout=5.0)
            assert fe.get_queue_num() == 1
            fe.close()
            time.sleep(0.05)
        ram.close()
    assert not path.exists()
    disk.close()
