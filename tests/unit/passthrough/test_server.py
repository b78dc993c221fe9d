"""VfioUserServer: random well-framed messages never break it; access splitting."""

from __future__ import annotations

import errno

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r
from passthrough.defs import VFIO_USER_F_ERROR, VFIO_USER_F_TYPE_REPLY, VFIO_USER_REGION_READ
from passthrough.layouts import (
    vfio_irq_set,
    vfio_region_info,
    vfio_user_dma_map,
    vfio_user_dma_unmap,
    vfio_user_region_access,
)
from passthrough.user import DmaMemory, VfioUserServer, access_pieces
from passthrough.user.testing import RawPeer, ServerThread


def test_access_pieces_are_natural() -> None:
    assert access_pieces(3, 13, 8) == [(3, 1), (4, 4), (8, 8)]
    assert access_pieces(0, 16, 4) == [(0, 4), (4, 4), (8, 4), (12, 4)]
    assert access_pieces(6, 0, 8) == []
    for offset in range(16):
        for count in range(20):
            pieces = access_pieces(offset, count, 8)
            assert sum(size for _, size in pieces) == count
            assert all(pos % size == 0 for pos, size in pieces)


def _structured() -> st.SearchStrategy[tuple[int, bytes]]:
    u32, u64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
    small = st.integers(0, 0x3000)
    return st.one_of(
        st.tuples(st.integers(1, 20), st.binary(max_size=48)),
        st.builds(lambda i, o, c: (VFIO_USER_REGION_READ, vfio_user_region_access.pack(o, i, c)), st.integers(0, 10), small, st.integers(0, 16)),
        st.builds(
            lambda i, o, d: (10, vfio_user_region_access.pack(o, i, len(d)) + d), st.integers(0, 8), small, st.binary(max_size=16)
        ),
        st.builds(lambda a, f, i, s, c, d: (8, vfio_irq_set.pack(a, f, i, s, c) + d), u32, st.integers(0, 63), st.integers(0, 6), u32, u32, st.binary(max_size=4)),
        st.builds(lambda a, f, addr, size: (2, vfio_user_dma_map.pack(a, f, 0, addr, size)), u32, st.integers(0, 7), u64, u64),
        st.builds(lambda a, f, addr, size: (3, vfio_user_dma_unmap.pack(a, f, addr, size)), u32, st.integers(0, 3), u64, u64),
        st.builds(lambda a, i: (5, vfio_region_info.pack(a, 0, i, 0, 0, 0)), u32, u32),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_structured(), st.sampled_from([0, 0, 0, 2, 7, 15])), min_size=1, max_size=12))
def test_random_messages_get_one_reply_each_and_the_server_survives(messages) -> None:  # type: ignore[no-untyped-def]
    memory = DmaMemory()
    device = PciTestDevice(memory)
    server = VfioUserServer(device, memory)
    thread = ServerThread(server)
    peer = RawPeer(thread.start())
    assert not peer.negotiate().is_error
    for (command, payload), kind in messages:
        msg_id = peer.send(command, payload, flags=kind)
        while True:
            answer = peer.recv()
            assert answer is not None, "the server closed the connection"
            if answer.is_reply:
                break
            # A device DMA to a message-only window: refuse it, as a client may.
            peer.send(answer.command, msg_id=answer.msg_id, flags=VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR, error_no=errno.EFAULT)
        assert answer.msg_id == msg_id and answer.command == command
        if answer.is_error:
            assert answer.payload == b"" and answer.error_no != 0
    check = peer.request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(r.ID, 0, 4))
    assert check.payload[16:] == r.TESTDEV_MAGIC.to_bytes(4, "little")
    peer.close()
    assert thread.join()
    assert thread.error is None
    assert memory.regions == ()
