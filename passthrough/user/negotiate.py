"""``VFIO_USER_VERSION``: the version and JSON capabilities both peers exchange first.

Rules (vfio-user.rst "VFIO_USER_VERSION"):

1. The reply's major equals the proposal's; its minor is at most the proposal's.
2. The version data is optional UTF-8 JSON (NUL-terminated) of the form
   ``{"capabilities": {...}}``. Absent capabilities take the spec's defaults
   (``max_msg_fds`` 1, ``max_data_xfer_size`` 1 MiB, ``max_dma_maps`` 65535, ``pgsizes``
   4 KiB). Unknown names are ignored (a newer minor version may add them); known names with
   the wrong JSON type, or numbers outside ``[0, 2**64)``, make the message invalid.
3. Decoding untrusted JSON is bounded: its size is bounded by the framing, and nesting
   that exhausts the parser is an invalid message, not a ``RecursionError``.
4. This implementation never asks for twin-socket mode and never grants it (the spec
   lets a server decline); server-to-client DMA messages share the one socket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..defs import (
    VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE,
    VFIO_USER_DEFAULT_MAX_DMA_MAPS,
    VFIO_USER_DEFAULT_MAX_MSG_FDS,
    VFIO_USER_DEFAULT_PGSIZES,
)
from ..layouts import LayoutError, vfio_user_version

__all__ = ["VersionCapabilities", "VersionError", "encode_version", "decode_version"]

_U64_LIMIT = 1 << 64


class VersionError(ValueError):
    """A ``VFIO_USER_VERSION`` payload is malformed (rules 2–3)."""


@dataclass(frozen=True)
class VersionCapabilities:
    """The ``capabilities`` object of ``VFIO_USER_VERSION``."""

    max_msg_fds: int = VFIO_USER_DEFAULT_MAX_MSG_FDS
    max_data_xfer_size: int = VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE
    max_dma_maps: int = VFIO_USER_DEFAULT_MAX_DMA_MAPS
    pgsizes: int = VFIO_USER_DEFAULT_PGSIZES
    twin_socket: bool = False
    write_multiple: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON object for the wire."""
        return {
            "capabilities": {
                "max_msg_fds": self.max_msg_fds,
                "max_data_xfer_size": self.max_data_xfer_size,
                "max_dma_maps": self.max_dma_maps,
                "pgsizes": self.pgsizes,
                "twin_socket": {"supported": self.twin_socket},
                "write_multiple": self.write_multiple,
            }
        }


def encode_version(major: int, minor: int, caps: VersionCapabilities) -> bytes:
    """The payload of a ``VFIO_USER_VERSION`` message."""
    text = json.dumps(caps.to_json(), separators=(",", ":")).encode() + b"\0"
    return vfio_user_version.pack(major, minor) + text


def _number(caps: dict[str, Any], name: str, default: int) -> int:
    value = caps.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _U64_LIMIT:
        raise VersionError(f"capability {name!r} must be an unsigned integer, got {value!r}")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise VersionError(f"capability {name!r} must be a boolean, got {value!r}")
    return value


def decode_version(payload: bytes) -> tuple[int, int, VersionCapabilities]:
    """Decode a ``VFIO_USER_VERSION`` payload into ``(major, minor, capabilities)``.

    Raises:
        VersionError: the payload breaks rule 2 or 3.
    """
    try:
        version = vfio_user_version.unpack(payload)
    except LayoutError as exc:
        raise VersionError(str(exc)) from None
    data = payload[vfio_user_version.size :]
    nul = data.find(b"\0")
    if nul >= 0:
        if data[nul:].strip(b"\0"):
            raise VersionError("bytes follow the NUL terminator of the version data")
        data = data[:nul]
    if not data.strip():
        return version.major, version.minor, VersionCapabilities()
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VersionError(f"version data is not UTF-8 JSON: {type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise VersionError("version data must be a JSON object")
    caps = document.get("capabilities", {})
    if not isinstance(caps, dict):
        raise VersionError("'capabilities' must be a JSON object")
    twin = caps.get("twin_socket", {})
    if not isinstance(twin, dict):
        raise VersionError("'twin_socket' must be a JSON object")
    return (
        version.major,
        version.minor,
        VersionCapabilities(
            max_msg_fds=_number(caps, "max_msg_fds", VFIO_USER_DEFAULT_MAX_MSG_FDS),
            max_data_xfer_size=_number(caps, "max_data_xfer_size", VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE),
            max_dma_maps=_number(caps, "max_dma_maps", VFIO_USER_DEFAULT_MAX_DMA_MAPS),
            pgsizes=_number(caps, "pgsizes", VFIO_USER_DEFAULT_PGSIZES),
            twin_socket=_flag(twin.get("supported", False), "twin_socket.supported"),
            write_multiple=_flag(caps.get("write_multiple", False), "write_multiple"),
        ),
    )
