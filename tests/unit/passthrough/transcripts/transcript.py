"""The wire-transcript format of this folder (see README.md): one JSON document per connection.

``{"format": FORMAT, "version": 1, "peer": ..., "note": ..., "messages": [...]}``, each
message ``{"dir": "c2s"|"s2c", "msg_id", "command", "flags", "error_no", "payload": hex,
"zero_pad": n, "fds": n, "fd_sizes": [...]}``: the header fields as on the wire
(vfio-user.rst "Header"; ``msg_size`` is 16 + the payload length), the payload as hex
followed by ``zero_pad`` zero bytes (trailing zeros are stored as a count: libvfio-user
pads migration data to the size asked), the number of descriptors passed with it and, for
each, its size if it was a regular file (memfd, tmpfs) else ``null``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "WireMessage", "dump", "load", "message_record"]

FORMAT = "devmodels-vfio-user-transcript"
_MIN_RUN = 64  # shorter zero runs stay in the hex


@dataclass(frozen=True)
class WireMessage:
    """One recorded message."""

    dir: str
    msg_id: int
    command: int
    flags: int
    error_no: int
    payload: bytes
    fds: int
    fd_sizes: tuple[int | None, ...]

    @property
    def from_client(self) -> bool:
        return self.dir == "c2s"

    @property
    def is_reply(self) -> bool:
        return self.flags & 0xF == 1

    @property
    def is_error(self) -> bool:
        return bool(self.flags & 0x20)


def message_record(
    direction: str, msg_id: int, command: int, flags: int, error_no: int, payload: bytes, fd_sizes: list[int | None]
) -> dict[str, Any]:
    """The JSON object of one message (trailing zeros stored as ``zero_pad``)."""
    stripped = payload.rstrip(b"\0")
    pad = len(payload) - len(stripped)
    if pad < _MIN_RUN:
        stripped, pad = payload, 0
    return {
        "dir": direction, "msg_id": msg_id, "command": command, "flags": flags, "error_no": error_no,
        "payload": stripped.hex(), "zero_pad": pad, "fds": len(fd_sizes), "fd_sizes": fd_sizes,
    }


def dump(document: dict[str, Any]) -> str:
    """The JSON text of a transcript: the metadata, then one message per line."""
    head = {k: v for k, v in document.items() if k != "messages"}
    lines = [json.dumps(m, separators=(",", ":")) for m in document["messages"]]
    text = json.dumps(head, indent=1)[:-2] + ',\n "messages": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    json.loads(text)  # well-formed by construction; checked all the same
    return text


def load(path: Path) -> tuple[dict[str, Any], list[WireMessage]]:
    """The document's metadata and its messages."""
    document = json.loads(path.read_text())
    if document.get("format") != FORMAT or document.get("version") != 1:
        raise ValueError(f"{path} is not a version 1 {FORMAT}")
    messages = [
        WireMessage(
            m["dir"], m["msg_id"], m["command"], m["flags"], m["error_no"],
            bytes.fromhex(m["payload"]) + bytes(m.get("zero_pad", 0)), m["fds"], tuple(m["fd_sizes"]),
        )
        for m in document["messages"]
    ]
    meta = {k: v for k, v in document.items() if k != "messages"}
    return meta, messages
