"""vhost-user framing and payload decoding (virtio.vhost_user.messages)."""

from __future__ import annotations

import os

import pytest

from virtio.vhost_user.defs import (
    VHOST_USER_GET_FEATURES,
    VHOST_USER_MAX_FDS,
    VHOST_USER_MAX_PAYLOAD,
    VHOST_USER_SET_MEM_TABLE,
    VHOST_USER_SET_VRING_KICK,
    request_name,
)
from virtio.vhost_user.layouts import HEADER
from virtio.vhost_user.messages import (
    Message,
    MessageReader,
    ProtocolError,
    Region,
    decode_config,
    decode_mem_reg,
    decode_memory,
    decode_u64,
    decode_vring_addr,
    decode_vring_state,
    encode,
    encode_config,
    encode_mem_reg,
    encode_memory,
    encode_u64,
    encode_vring_addr,
    encode_vring_state,
)


def raw(request: int, payload: bytes = b"", flags: int = 1) -> bytes:
    return HEADER.pack(request, flags, len(payload)) + payload


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_payload_roundtrips():
    assert decode_u64(Message(2, 1, encode_u64(0xDEAD_BEEF_0000_0001))) == 0xDEAD_BEEF_0000_0001
    assert decode_vring_state(Message(8, 1, encode_vring_state(3, 256))) == (3, 256)
    addr = decode_vring_addr(Message(9, 1, encode_vring_addr(1, 0x1000, 0x3000, 0x2000)))
    assert (addr.index, addr.desc, addr.used, addr.avail, addr.flags) == (1, 0x1000, 0x3000, 0x2000, 0)
    regions = [Region(0, 0xA0000, 0x7F00_0000_0000, 0), Region(0x100000, 0x100000, 0x7F00_0010_0000, 0x100000)]
    assert decode_memory(Message(5, 1, encode_memory(regions))) == regions
    assert decode_mem_reg(Message(37, 1, encode_mem_reg(regions[1]))) == regions[1]
    access = decode_config(Message(24, 1, encode_config(4, b"\x01\x02", 1)))
    assert (access.offset, access.size, access.flags, access.data) == (4, 2, 1, b"\x01\x02")


@pytest.mark.parametrize(
    "decoder, payload",
    [
        (decode_u64, b"\0" * 7),
        (decode_u64, b"\0" * 9),
        (decode_vring_state, b"\0" * 4),
        (decode_vring_addr, b"\0" * 39),
        (decode_mem_reg, b"\0" * 41),
        (decode_memory, b"\0" * 4),
        (decode_memory, (9).to_bytes(4, "little") + bytes(4) + bytes(32 * 9)),  # more than 8 regions
        (decode_memory, (2).to_bytes(4, "little") + bytes(4) + bytes(32)),  # fewer than announced
        (decode_config, bytes(11)),
        (decode_config, (0).to_bytes(4, "little") + (300).to_bytes(4, "little") + bytes(4) + bytes(300)),
        (decode_config, (0).to_bytes(4, "little") + (4).to_bytes(4, "little") + bytes(4) + bytes(3)),
    ],
)
def test_decoders_check_sizes_exactly(decoder, payload):
    with pytest.raises(ProtocolError) as info:
        decoder(Message(1, 1, payload))
    assert not info.value.fatal


def test_reader_frames_across_reads_and_in_batches():
    reader = MessageReader()
    data = raw(1) + raw(2, encode_u64(5)) + raw(3)
    assert reader.feed(data[:5]) == []
    assert reader.partial
    messages = reader.feed(data[5:20])
    assert [m.request for m in messages] == [1]
    messages = reader.feed(data[20:])
    assert [(m.request, m.payload) for m in messages] == [(2, encode_u64(5)), (3, b"")]
    assert not reader.partial


def test_reader_gives_descriptors_to_the_message_holding_the_last_byte():
    reader = MessageReader()
    r, w = os.pipe()
    try:
        data = raw(1) + raw(VHOST_USER_SET_VRING_KICK, encode_u64(0))
        messages = reader.feed(data, [r])
        assert messages[0].fds == [] and messages[1].fds == [r]
        # The last byte of a read inside an incomplete message: it keeps the descriptor.
        messages = reader.feed(raw(VHOST_USER_SET_VRING_KICK, encode_u64(0))[:-3], [w])
        assert messages == []
        (message,) = reader.feed(b"\0\0\0")
        assert message.fds == [w]
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "header",
    [
        HEADER.pack(1, 1, VHOST_USER_MAX_PAYLOAD + 1),  # too long
        HEADER.pack(1, 2, 0),  # version 2
        HEADER.pack(1, 1 | 4, 0),  # a "reply" from the front-end
    ],
    ids=["oversize", "version", "reply-flag"],
)
def test_reader_refuses_headers_it_cannot_frame_past(header):
    reader = MessageReader()
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(ProtocolError) as info:
        reader.feed(header, [r])
    assert info.value.fatal
    reader.close()
    assert not is_open(r)


def test_reader_refuses_too_many_descriptors_and_closes_them():
    reader = MessageReader()
    pipes = [os.pipe() for _ in range(VHOST_USER_MAX_FDS + 1)]
    fds = [r for r, _ in pipes]
    for _, w in pipes:
        os.close(w)
    with pytest.raises(ProtocolError):
        reader.feed(raw(VHOST_USER_SET_MEM_TABLE, bytes(8)), fds)
    assert not any(is_open(fd) for fd in fds)


def test_message_helpers():
    message = Message(VHOST_USER_GET_FEATURES, 1 | 8, b"")
    assert message.need_reply and message.name == "GET_FEATURES"
    with pytest.raises(ProtocolError):
        message.take_fd()
    assert request_name(999) == "request 999"
    reply = encode(VHOST_USER_GET_FEATURES, encode_u64(1))
    assert HEADER.unpack_from(reply) == (VHOST_USER_GET_FEATURES, 1 | 4, 8)
