"""vfio-user message framing over a socketpair."""

from __future__ import annotations

import array
import os
import socket

import pytest

from passthrough.errors import VfioUserDisconnectedError
from passthrough.layouts import vfio_user_header
from passthrough.user.framing import MessageSocket, VfioUserFramingError


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    b.settimeout(5)
    left = MessageSocket(a, max_payload=1 << 16, max_fds=4)
    right = MessageSocket(b, max_payload=1 << 16, max_fds=4)
    yield left, right
    left.close()
    right.close()


def test_round_trip_with_fds(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    fd = os.eventfd(0)
    left.send(7, 9, b"payload", flags=0x10, fds=[fd])
    message = right.recv()
    assert message is not None
    assert (message.msg_id, message.command, message.flags, message.payload) == (7, 9, 0x10, b"payload")
    assert message.no_reply and not message.is_reply
    assert len(message.fds) == 1 and message.fds[0] != fd
    os.eventfd_write(message.fds[0], 3)
    assert os.eventfd_read(fd) == 3
    message.close_fds()
    os.close(fd)


def test_large_payload(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    data = os.urandom(60_000)
    left.send(1, 10, data)
    message = right.recv()
    assert message is not None and message.payload == data


def test_clean_eof_is_none_and_eof_inside_a_message_raises(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    left.sock.sendall(vfio_user_header.pack(1, 1, 40, 0, 0) + b"short")
    left.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(VfioUserDisconnectedError):
        right.recv()


def test_clean_eof(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    left.sock.shutdown(socket.SHUT_WR)
    assert right.recv() is None


@pytest.mark.parametrize(("size", "match"), [(8, "below"), ((1 << 16) + 17, "exceeds")])
def test_unusable_sizes_lose_framing(pair, size: int, match: str) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    left.sock.sendall(vfio_user_header.pack(3, 4, size, 0, 0))
    with pytest.raises(VfioUserFramingError, match=match) as info:
        right.recv()
    assert info.value.header is not None and info.value.header.msg_id == 3


def test_excess_fds_are_closed_and_flagged(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    fds = [os.eventfd(0) for _ in range(6)]
    before = len(os.listdir("/proc/self/fd"))
    left.send(1, 8, b"x", fds=fds)
    message = right.recv()
    assert message is not None and message.fds_truncated and len(message.fds) == 4
    message.close_fds()
    assert len(os.listdir("/proc/self/fd")) == before
    for fd in fds:
        os.close(fd)


def test_header_split_across_sends(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    raw = vfio_user_header.pack(5, 6, 20, 1, 0) + b"abcd"
    left.sock.sendall(raw[:3])
    left.sock.sendall(raw[3:])
    message = right.recv()
    assert message is not None and message.is_reply and message.payload == b"abcd"


def test_send_to_a_closed_peer(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    right.close()
    with pytest.raises(VfioUserDisconnectedError):
        for _ in range(100):
            left.send(1, 1, b"x" * 4096)


def test_rule_2_a_message_trickled_with_descriptors_holds_at_most_max_fds(pair) -> None:  # type: ignore[no-untyped-def]
    """A peer sending a message a byte at a time, two descriptors with each byte, must not
    fill our descriptor table: beyond ``max_fds`` they are closed as they arrive and the
    message is marked ``fds_truncated``."""
    left, right = pair
    data = vfio_user_header.pack(1, 9, 16 + 8, 0, 0) + b"payload!"
    mine = [os.eventfd(0) for _ in range(2)]
    for byte in data:  # each sendmsg is its own write: the receiver reads them one by one
        left.sock.sendmsg([bytes([byte])], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", mine).tobytes())])
    before = len(os.listdir("/proc/self/fd"))
    message = right.recv()
    assert message is not None and message.payload == b"payload!"
    assert message.fds_truncated and len(message.fds) == 4  # max_fds of the fixture
    assert len(os.listdir("/proc/self/fd")) - before == 4  # everything else was closed
    message.close_fds()
    for fd in mine:
        os.close(fd)
