"""Capture any network backend's traffic to a classic pcap file (Wireshark, tshark, tcpdump).

Rules:

1. ``PcapWriter`` wraps a ``NetBackend`` and is one: every frame the backend accepted from
   ``send`` and every frame ``receive`` returned is written, in the order they passed, as
   one record of a classic pcap file (magic 0xA1B2C3D4, version 2.4, microsecond
   timestamps, LINKTYPE_ETHERNET). Classic pcap has no direction field.
2. A virtio-net header, when enabled, is not part of the capture: records hold the Ethernet
   frame only. Records are cut at ``snaplen`` bytes (``orig_len`` keeps the real length).
3. Writes go through one lock, so a sender and a receiver on different threads interleave
   whole records. Timestamps are host wall-clock time (a backend is not a device; reading
   the clock here does not break the sans-IO rule).
4. ``read_pcap`` reads such a file back (either byte order, micro- or nanosecond), checking
   every length against the file.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TYPE_CHECKING

from ..._errors import HostError, UsageError
from .._net import NetBackend, NetOffloads
from ._packets import VNET_HDR_SIZE

__all__ = ["PcapWriter", "PcapRecord", "read_pcap", "LINKTYPE_ETHERNET"]

LINKTYPE_ETHERNET = 1
_MAGIC_USEC = 0xA1B2C3D4
_MAGIC_NSEC = 0xA1B23C4D
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    """A ``NetBackend`` that records the traffic of ``backend`` to ``path``.

    Args:
        backend: the backend to wrap; ``close`` closes it too.
        path: the pcap file (created or truncated).
        snaplen: most bytes kept per record.

    Raises:
        UsageError: ``snaplen`` is not positive.
        HostError: the file cannot be created.
    """

    def __init__(self, backend: NetBackend, path: str | os.PathLike[str], *, snaplen: int = 65_535) -> None:
        if not isinstance(snaplen, int) or snaplen < 1:
            raise UsageError(f"snaplen must be a positive integer, got {snaplen!r}")
        try:
            self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 -- closed in close()
        except OSError as exc:
            raise HostError(f"cannot create pcap file {os.fspath(path)!r}: {exc.strerror}") from exc
        self._backend = backend
        self._snaplen = snaplen
        self._lock = threading.Lock()
        self._vnet = False
        self._records = 0
        self._file.write(_GLOBAL.pack(_MAGIC_USEC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    @property
    def backend(self) -> NetBackend:
        """The wrapped backend."""
        return self._backend

    @property
    def records(self) -> int:
        """Records written so far."""
        return self._records

    def _record(self, frame: bytes | bytearray | memoryview) -> None:
        start = VNET_HDR_SIZE if self._vnet else 0
        with memoryview(frame) as view:
            length = max(0, len(view) - start)
            kept = bytes(view[start : start + self._snaplen])
        now = time.time_ns() // 1000
        with self._lock:
            if self._file.closed:
                return
            self._file.write(_RECORD.pack(now // 1_000_000, now % 1_000_000, len(kept), length))
            self._file.write(kept)
            self._records += 1

    # -- NetBackend -----------------------------------------------------------------------

    @property
    def offloads(self) -> NetOffloads:
        """The wrapped backend's offloads."""
        return self._backend.offloads

    @property
    def dropped(self) -> int:
        """The wrapped backend's drop count."""
        return self._backend.dropped

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Send through the wrapped backend; record the frame if it was taken."""
        taken = self._backend.send(frame)
        if taken:
            self._record(frame)
        return taken

    def receive(self, limit: int = 64) -> list[bytes]:
        """Receive from the wrapped backend, recording every frame."""
        frames = self._backend.receive(limit)
        for frame in frames:
            self._record(frame)
        return frames

    def set_vnet_hdr(self, enabled: bool) -> None:
        """Pass on to the wrapped backend; records then leave the header out (rule 2)."""
        self._backend.set_vnet_hdr(enabled)
        self._vnet = bool(enabled)

    def fileno(self) -> int | None:
        """The wrapped backend's fd."""
        return self._backend.fileno()

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Pass on to the wrapped backend."""
        self._backend.set_notify(notify)

    def flush(self) -> None:
        """Push buffered records to the file (to read it while capturing)."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()

    def close(self) -> None:
        """Close the wrapped backend and the file. Idempotent."""
        self._backend.close()
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class PcapRecord:
    """One captured frame."""

    timestamp_ns: int
    data: bytes
    orig_len: int


def read_pcap(path: str | os.PathLike[str]) -> tuple[int, list[PcapRecord]]:
    """Read a classic pcap file.

    Returns:
        ``(linktype, records)``.

    Raises:
        UsageError: the file is not a classic pcap file or is cut short.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _GLOBAL.size:
        raise UsageError("not a pcap file: shorter than its global header")
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data, 0)[0]
        if magic in (_MAGIC_USEC, _MAGIC_NSEC):
            break
    else:
        raise UsageError(f"not a classic pcap file (magic {data[:4].hex()})")
    scale = 1000 if magic == _MAGIC_USEC else 1
    _, major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from(order + "IHHiIII", data, 0)
    if major != 2:
        raise UsageError(f"unsupported pcap version {major}")
    record = struct.Struct(order + "IIII")
    records: list[PcapRecord] = []
    pos = _GLOBAL.size
    while pos < len(data):
        if pos + record.size > len(data):
            raise UsageError(f"pcap record header cut short at byte {pos}")
        seconds, fraction, incl, orig = record.unpack_from(data, pos)
        pos += record.size
        if pos + incl > len(data):
            raise UsageError(f"pcap record data cut short at byte {pos}")
        records.append(PcapRecord(seconds * 1_000_000_000 + fraction * scale, data[pos : pos + incl], orig))
        pos += incl
    return linktype, records


if TYPE_CHECKING:  # the static proof that PcapWriter implements the interface

    def _implements(backend: PcapWriter) -> NetBackend:
        return backend
