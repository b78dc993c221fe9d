"""MessageFramer: splitting the byte stream, and which message gets which descriptors."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpqemu import defs as d
from mpqemu.framing import FramingError, MessageFramer
from mpqemu.layouts import encode_message, pack_header


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_one_message_per_feed() -> None:
    framer = MessageFramer()
    out = framer.feed(encode_message(d.MPQEMU_CMD_PCI_CFGREAD, bytes(12)))
    assert [(m.cmd, m.payload, m.fds) for m in out] == [(d.MPQEMU_CMD_PCI_CFGREAD, bytes(12), [])]
    assert not framer.partial


def test_header_split_across_feeds_and_zero_size_message() -> None:
    framer = MessageFramer()
    raw = encode_message(d.MPQEMU_CMD_DEVICE_RESET)
    assert framer.feed(raw[:5]) == []
    assert framer.partial
    out = framer.feed(raw[5:])
    assert [(m.cmd, m.payload) for m in out] == [(d.MPQEMU_CMD_DEVICE_RESET, b"")]


def test_fds_go_to_the_message_holding_the_last_byte() -> None:
    framer = MessageFramer()
    first = encode_message(d.MPQEMU_CMD_PCI_CFGREAD, bytes(12))
    second = encode_message(d.MPQEMU_CMD_SET_IRQFD)
    a, b = _eventfd(), _eventfd()
    try:
        out = framer.feed(first + second, [a, b])
        assert [m.fds for m in out] == [[], [a, b]]
    finally:
        os.close(a)
        os.close(b)


def test_fds_of_an_incomplete_message_wait_for_it() -> None:
    framer = MessageFramer()
    first = encode_message(d.MPQEMU_CMD_PCI_CFGREAD, bytes(12))
    sync = encode_message(d.MPQEMU_CMD_SYNC_SYSMEM, bytes(192))
    fd = _eventfd()
    try:
        out = framer.feed(first + sync[:20], [fd])
        assert [m.fds for m in out] == [[]]
        out = framer.feed(sync[20:])
        assert [(m.cmd, m.fds) for m in out] == [(d.MPQEMU_CMD_SYNC_SYSMEM, [fd])]
    finally:
        os.close(fd)


def test_truncated_flag_follows_the_descriptors() -> None:
    framer = MessageFramer()
    out = framer.feed(encode_message(d.MPQEMU_CMD_SYNC_SYSMEM, bytes(192)), [], truncated=True)
    assert out[0].truncated
    out = framer.feed(encode_message(d.MPQEMU_CMD_PCI_CFGREAD, bytes(12)))
    assert not out[0].truncated


def test_oversized_size_field_is_a_framing_error_and_close_closes_fds() -> None:
    framer = MessageFramer()
    fd = _eventfd()
    with pytest.raises(FramingError, match="announces"):
        framer.feed(pack_header(d.MPQEMU_CMD_BAR_READ, d.MPQEMU_MSG_DATA_SIZE + 1), [fd])
    assert _is_open(fd)
    framer.close()
    assert not _is_open(fd)


def test_size_field_at_the_limit_is_accepted() -> None:
    framer = MessageFramer()
    out = framer.feed(encode_message(77, bytes(d.MPQEMU_MSG_DATA_SIZE)))
    assert [(m.cmd, len(m.payload)) for m in out] == [(77, d.MPQEMU_MSG_DATA_SIZE)]


_messages = st.lists(
    st.tuples(st.integers(-(2**31), 2**31 - 1), st.binary(max_size=d.MPQEMU_MSG_DATA_SIZE)), min_size=1, max_size=6
)


@settings(max_examples=200, deadline=None)
@given(_messages, st.data())
def test_any_chunking_yields_the_same_messages(messages: list[tuple[int, bytes]], data: st.DataObject) -> None:
    stream = b"".join(encode_message(cmd, payload) for cmd, payload in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = MessageFramer()
    out = []
    last = 0
    for cut in [*cuts, len(stream)]:
        out += framer.feed(stream[last:cut])
        last = cut
    assert [(m.cmd, m.payload) for m in out] == messages
    assert not framer.partial


def test_rule_4_a_message_trickled_with_descriptors_holds_at_most_the_limit() -> None:
    """A peer sending a message a byte at a time, three descriptors with each byte, must not
    fill our descriptor table: the excess is closed as it arrives and the message is
    marked truncated (the server refuses it)."""
    framer = MessageFramer()
    message = encode_message(d.MPQEMU_CMD_PCI_CFGREAD, bytes(12))
    sent: list[int] = []
    out = []
    for byte in message:
        fds = [_eventfd() for _ in range(3)]
        sent += fds
        out += framer.feed(bytes([byte]), fds)
        assert sum(_is_open(fd) for fd in sent) <= d.REMOTE_MAX_FDS
    [done] = out
    assert done.truncated and len(done.fds) == d.REMOTE_MAX_FDS
    assert [fd for fd in sent if _is_open(fd)] == done.fds
    for fd in done.fds:
        os.close(fd)
    framer.close()
