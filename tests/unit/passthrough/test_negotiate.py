"""VFIO_USER_VERSION payloads."""

from __future__ import annotations

import pytest

from passthrough.layouts import vfio_user_version
from passthrough.user.negotiate import VersionCapabilities, VersionError, decode_version, encode_version


def test_round_trip() -> None:
    caps = VersionCapabilities(max_msg_fds=8, max_data_xfer_size=4096, max_dma_maps=3, pgsizes=0x1000 | 0x20_0000)
    assert decode_version(encode_version(0, 1, caps)) == (0, 1, caps)


def test_defaults_when_absent() -> None:
    for data in (b"", b"\0", b"{}\0", b'{"capabilities":{}}'):
        assert decode_version(vfio_user_version.pack(0, 0) + data)[2] == VersionCapabilities()


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
