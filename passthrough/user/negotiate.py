"""``VFIO_USER_VERSION``: the version and JSON capabilities both peers exchange first.

Rules (vfio-user.rst "VFIO_USER_VERSION"):

1. The reply's major equals the proposal's; its minor is at most the proposal's.
2. The version data is optional UTF-8 JSON (NUL-terminated) of the form
   ``{"capabilities": {...}}``. Absent capabilities take the spec's defaults
   (``max_msg_fds`` 1, ``max_data_xfer_size`` 1 MiB, ``max_dma_maps`` 65535, ``pgsizes``
   4 KiB). Unknown names are ignored (a newer minor version may add them; QEMU's
   ``migration`` object, which the spec does not define, is one) but remembered in
   ``names``; known names with the wrong JSON type, or numbers outside ``[0, 2**64)``, make
   the message invalid.
3. Decoding untrusted JSON is bounded: its size is bounded by the framing, and nesting
   that exhausts the parser is an invalid message, not a ``RecursionError``.
4. The reply's capability list is a subset of the proposal ("The capability list must be a
   subset of those proposed"): ``negotiate`` answers only names the client sent, and only
   those this implementation knows (``REPLY_NAMES``). Each number is the one both sides
   can honour: ``max_msg_fds``, ``max_data_xfer_size`` and ``max_dma_maps`` are the minimum
   of ours and the proposal (QEMU refuses a larger ``max_msg_fds`` as "malformed"),
   ``pgsizes`` is the intersection of the two page-size masks, ``write_multiple`` is true
   only if both support it. A capability the client did not send is negotiated from its
   default all the same, so the effective limits (``Negotiated``) are what the client
   assumes. An empty page-size intersection or a zero ``max_data_xfer_size`` leaves
   nothing to agree on and is refused.
5. This implementation never asks for twin-socket mode and never grants it (the spec
   lets a server decline): a proposal with ``twin_socket`` gets ``{"supported": false}``;
   server-to-client DMA messages share the one socket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..defs import (
    VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE,
    VFIO_USER_DEFAULT_MAX_DMA_MAPS,
    VFIO_USER_DEFAULT_MAX_MSG_FDS,
    VFIO_USER_DEFAULT_PGSIZES,
)
from ..layouts import LayoutError, vfio_user_version

__all__ = [
    "REPLY_NAMES",
    "VersionCapabilities",
    "VersionError",
    "encode_version",
    "decode_version",
    "negotiate",
    "spurious_names",
]

_U64_LIMIT = 1 << 64
_NUMBERS = ("max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes")
REPLY_NAMES = frozenset({*_NUMBERS, "twin_socket", "write_multiple"})
"""The capabilities this implementation understands and may answer (rule 4)."""


class VersionError(ValueError):
    """A ``VFIO_USER_VERSION`` payload is malformed, or nothing can be agreed (rules 2–4)."""


@dataclass(frozen=True)
class VersionCapabilities:
    """The ``capabilities`` object of ``VFIO_USER_VERSION``.

    ``names`` are the capability names on the wire: the ones ``decode_version`` found
    (known or not), or the ones ``encode_version`` writes. ``None`` (the default) writes
    the four numbers, plus ``twin_socket``/``write_multiple`` when they are true. It does
    not take part in equality: two capability sets are equal when their values are.
    """

    max_msg_fds: int = VFIO_USER_DEFAULT_MAX_MSG_FDS
    max_data_xfer_size: int = VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE
    max_dma_maps: int = VFIO_USER_DEFAULT_MAX_DMA_MAPS
    pgsizes: int = VFIO_USER_DEFAULT_PGSIZES
    twin_socket: bool = False
    write_multiple: bool = False
    names: frozenset[str] | None = field(default=None, compare=False)

    def wire_names(self) -> frozenset[str]:
        """The names ``encode_version`` writes."""
        if self.names is not None:
            return self.names
        extra = {"twin_socket"} if self.twin_socket else set()
        if self.write_multiple:
            extra.add("write_multiple")
        return frozenset({*_NUMBERS, *extra})

    def to_json(self) -> dict[str, Any]:
        """The JSON object for the wire (only ``wire_names()`` that this module knows)."""
        names = self.wire_names()
        caps: dict[str, Any] = {name: getattr(self, name) for name in _NUMBERS if name in names}
        if "twin_socket" in names:
            caps["twin_socket"] = {"supported": self.twin_socket}
        if "write_multiple" in names:
            caps["write_multiple"] = self.write_multiple
        return {"capabilities": caps}


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
        return version.major, version.minor, VersionCapabilities(names=frozenset())
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
            names=frozenset(str(name) for name in caps),
        ),
    )


def negotiate(ours: VersionCapabilities, proposal: VersionCapabilities) -> VersionCapabilities:
    """The server's reply to ``proposal`` (rules 4–5); its values are the effective limits.

    ``ours`` holds this server's own limits; ``ours.pgsizes`` is the mask of page sizes it
    can map. The result's ``names`` are the proposal's names this module knows.

    Raises:
        VersionError: the page-size masks do not intersect, or ``max_data_xfer_size`` is 0.
    """
    pgsizes = ours.pgsizes & proposal.pgsizes
    if not pgsizes:
        raise VersionError(f"no common DMA page size: ours {ours.pgsizes:#x}, proposed {proposal.pgsizes:#x}")
    xfer = min(ours.max_data_xfer_size, proposal.max_data_xfer_size)
    if not xfer:
        raise VersionError("max_data_xfer_size 0 leaves no room for any transfer")
    proposed = proposal.names if proposal.names is not None else proposal.wire_names()
    return VersionCapabilities(
        max_msg_fds=min(ours.max_msg_fds, proposal.max_msg_fds),
        max_data_xfer_size=xfer,
        max_dma_maps=min(ours.max_dma_maps, proposal.max_dma_maps),
        pgsizes=pgsizes,
        twin_socket=False,
        write_multiple=ours.write_multiple and proposal.write_multiple,
        names=frozenset(proposed & REPLY_NAMES),
    )


def spurious_names(proposal: VersionCapabilities, reply: VersionCapabilities) -> frozenset[str]:
    """Names in a server's reply that the proposal did not carry (rule 4 broken)."""
    if reply.names is None:
        return frozenset()
    return frozenset(reply.names - proposal.wire_names())
