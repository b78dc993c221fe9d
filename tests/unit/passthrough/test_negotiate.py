"""VFIO_USER_VERSION payloads."""

from __future__ import annotations

import pytest

from passthrough.layouts import vfio_user_version
from passthrough.user.negotiate import VersionCapabilities, VersionError, decode_version, encode_version, negotiate, spurious_names


def test_round_trip() -> None:
    caps = VersionCapabilities(max_msg_fds=8, max_data_xfer_size=4096, max_dma_maps=3, pgsizes=0x1000 | 0x20_0000)
    assert decode_version(encode_version(0, 1, caps)) == (0, 1, caps)


def test_defaults_when_absent() -> None:
    for data in (b"", b"\0", b"{}\0", b'{"capabilities":{}}'):
        caps = decode_version(vfio_user_version.pack(0, 0) + data)[2]
        assert caps == VersionCapabilities() and caps.names == frozenset()


def test_unknown_names_are_ignored() -> None:
    caps = decode_version(vfio_user_version.pack(0, 1) + b'{"capabilities":{"future":[1,2],"max_msg_fds":3},"x":1}\0')[2]
    assert caps.max_msg_fds == 3


@pytest.mark.parametrize(
    "data",
    [
        b"\x01",  # too short for major/minor
        vfio_user_version.pack(0, 1) + b"{",
        vfio_user_version.pack(0, 1) + b'"string"',
        vfio_user_version.pack(0, 1) + b'{"capabilities":3}',
        vfio_user_version.pack(0, 1) + b'{"capabilities":{"twin_socket":true}}',
        vfio_user_version.pack(0, 1) + b'{"capabilities":{"twin_socket":{"supported":1}}}',
        vfio_user_version.pack(0, 1) + b'{"capabilities":{"write_multiple":"yes"}}',
        vfio_user_version.pack(0, 1) + b'{"capabilities":{"max_dma_maps":1.5}}',
        vfio_user_version.pack(0, 1) + b"{}\0garbage",
        vfio_user_version.pack(0, 1) + b"{" * 50_000,
        vfio_user_version.pack(0, 1) + b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(VersionError):
        decode_version(data)


# -- negotiate: the server's reply (negotiate rules 4-5) ------------------------------------------

# What QEMU 11.1's vfio-user-pci client proposes (recorded in transcripts/qemu-11.1-client.json).
QEMU_PROPOSAL = (
    b'{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, '
    b'"migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}\0'
)
OURS = VersionCapabilities(max_msg_fds=64, max_data_xfer_size=1 << 20, max_dma_maps=1024, pgsizes=~0xFFF & (2**64 - 1), write_multiple=True)


def test_reply_to_qemu_takes_the_minimum_of_each_number_and_only_proposed_names() -> None:
    proposal = decode_version(vfio_user_version.pack(0, 0) + QEMU_PROPOSAL)[2]
    assert proposal.names == {"pgsizes", "max_msg_fds", "max_dma_maps", "max_data_xfer_size", "migration", "write_multiple"}
    reply = negotiate(OURS, proposal)
    # QEMU refuses a max_msg_fds above its proposal ("malformed max_msg_fds") and warns about
    # names it did not propose ("spurious capabilities").
    assert reply.max_msg_fds == 16 and reply.max_data_xfer_size == 1 << 20 and reply.max_dma_maps == 1024
    assert reply.pgsizes == 4096 and reply.write_multiple is True
    wire = decode_version(encode_version(0, 0, reply))[2]
    assert wire.names is not None and wire.names <= proposal.names
    assert wire.names == {"pgsizes", "max_msg_fds", "max_dma_maps", "max_data_xfer_size", "write_multiple"}
    assert b"twin_socket" not in encode_version(0, 0, reply) and b"migration" not in encode_version(0, 0, reply)
    assert spurious_names(proposal, wire) == frozenset()


def test_reply_to_libvfio_user_client_has_only_its_two_names() -> None:
    # libvfio-user's samples/client proposes two numbers and crashes on any other name.
    proposal = decode_version(vfio_user_version.pack(0, 1) + b'{"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}}\0')[2]
    reply = negotiate(OURS, proposal)
    assert decode_version(encode_version(0, 1, reply))[2].names == {"max_msg_fds", "max_data_xfer_size"}
    assert (reply.max_msg_fds, reply.max_data_xfer_size) == (32, 1024)
    # Names not proposed are negotiated from their defaults all the same (what the client assumes).
    assert reply.max_dma_maps == 1024 and reply.pgsizes == 4096 and reply.write_multiple is False


def test_no_version_data_gets_an_empty_capability_object_and_the_defaults() -> None:
    proposal = decode_version(vfio_user_version.pack(0, 0))[2]
    reply = negotiate(OURS, proposal)
    assert encode_version(0, 0, reply).endswith(b'{"capabilities":{}}\0')
    assert (reply.max_msg_fds, reply.max_data_xfer_size, reply.pgsizes) == (1, 1 << 20, 4096)


def test_twin_socket_is_declined_and_write_multiple_needs_both() -> None:
    proposal = decode_version(
        vfio_user_version.pack(0, 1) + b'{"capabilities":{"twin_socket":{"supported":true},"write_multiple":true}}\0'
    )[2]
    reply = negotiate(VersionCapabilities(), proposal)
    assert b'"twin_socket":{"supported":false}' in encode_version(0, 1, reply)
    assert reply.write_multiple is False  # VersionCapabilities() does not support it


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b'{"capabilities":{"pgsizes":2048}}', "no common DMA page size"),
        (b'{"capabilities":{"max_data_xfer_size":0}}', "max_data_xfer_size 0"),
    ],
)
def test_nothing_to_agree_on_is_an_error(text: bytes, why: str) -> None:
    proposal = decode_version(vfio_user_version.pack(0, 1) + text)[2]
    with pytest.raises(VersionError, match=why):
        negotiate(OURS, proposal)


def test_spurious_names_of_a_reply() -> None:
    proposal = VersionCapabilities()
    reply = decode_version(vfio_user_version.pack(0, 1) + b'{"capabilities":{"max_msg_fds":8,"migration":{"pgsize":4096}}}\0')[2]
    assert spurious_names(proposal, reply) == {"migration"}
