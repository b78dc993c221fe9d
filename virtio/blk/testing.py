"""A guest-side virtio-blk driver simulator over any transport (CONVENTIONS: simulators).

``BlkDriver`` initializes a virtio-blk device with ``virtio.testing.bring_up`` through a
transport driver (``PciDriver``, ``MmioDriver``, or ``DirectDriver`` straight to the device),
forms requests (any framing, any layout of header, data and status), notifies the device
through the transport, lets the VMM's part run (``TransportDriver.poll``/``settle``) and
reaps the results::

    function = VirtioPciFunction(VirtioBlkDevice(machine.memory, MemoryDiskBackend(1 << 20)))
    machine.add_pci(function)
    machine.enumerate()
    blk = BlkDriver(PciDriver.for_function(machine, function))
    blk.write(0, bytes(512))

Rules: the simulator only writes what a driver writes (rings, request buffers, device
registers through the transport); ``raw`` layouts are there to build malformed requests on
purpose. The generic bring-up lives in ``virtio.testing`` (``bring_up``, ``negotiate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devmodels import GuestMemory
from devmodels.testing import DriverError

from ..device import VirtioDevice
from ..testing import TransportDriver, UsedBuffer, as_transport, bring_up
from .defs import VIRTIO_BLK_REQ_HDR_SIZE, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from .layouts import VIRTIO_BLK_REQ_HDR

__all__ = ["BlkDriver", "BlkResult"]


@dataclass
class BlkResult:
    """One completed request as the driver sees it."""

    token: Any
    status: int | None
    data: bytes
    used_len: int


class BlkDriver:
    """A virtio-blk guest driver over any transport (requests, notifications, reaping).

    Args:
        transport: a transport driver (``virtio.transport.testing.PciDriver`` or
            ``MmioDriver``, ``virtio.testing.DirectDriver``), or the device itself (driven
            through a ``DirectDriver``).
        accept: features to accept, a mask (default: everything offered;
            ``virtio.features.feature_mask`` builds one from bit numbers).
        queue_size: ring size (default: the device's maximum).
        data_size: bytes of data arena per queue.
        base: guest address where the rings and arenas are laid out.

    Raises:
        FeaturesRefused: the device refused ``accept`` (with its reason).
    """

    def __init__(
        self,
        transport: TransportDriver | VirtioDevice,
        *,
        accept: int | None = None,
        queue_size: int | None = None,
        data_size: int = 1 << 20,
        base: int = 0x10000,
    ) -> None:
        self.transport = as_transport(transport)
        self.memory: GuestMemory = self.transport.memory
        self.rings = bring_up(self.transport, accept=accept, queue_size=queue_size, data_size=data_size, base=base)
        self.notifications = 0
        self._next_token = 0

    def request(
        self,
        type_: int,
        sector: int = 0,
        *,
        data: bytes = b"",
        read_len: int = 0,
        queue: int = 0,
        header_split: Sequence[int] = (),
        data_split: int = 0,
        status_with_data: bool = False,
        indirect: bool = False,
        status_len: int = 1,
        raw_readable: Sequence[bytes | tuple[int, int]] | None = None,
        raw_writable: Sequence[int | tuple[int, int]] | None = None,
        token: Any = None,
    ) -> Any:
        """Place one request (not yet visible: call ``kick``); returns its token.

        Args:
            type_, sector: the header.
            data: bytes after the header in the device-readable part (OUT, DISCARD).
            read_len: bytes of device-writable data before the status byte (IN, GET_ID).
            header_split: cut the header into pieces of these lengths (framing freedom).
            data_split: cut data and read buffers into pieces of this many bytes.
            status_with_data: put the status byte in the same segment as the read data.
            status_len: bytes of the status segment (1 normally; 0 for none).
            raw_readable, raw_writable: the chain's segments exactly as given.
        """
        ring = self.rings[queue]
        readable: list[bytes | tuple[int, int]]
        writable: list[int | tuple[int, int]]
        if raw_readable is not None or raw_writable is not None:
            readable = list(raw_readable or ())
            writable = list(raw_writable or ())
        else:
            header = VIRTIO_BLK_REQ_HDR.pack(type_, 0, sector)
            readable = [*_cut(header, header_split), *_cut(data, [data_split] * (len(data) // data_split + 1) if data_split else [])]
            if status_with_data:
                writable = [read_len + status_len] if read_len + status_len else []
            else:
                pieces = _lengths(read_len, data_split)
                writable = [*pieces, *([status_len] if status_len else [])]
        if token is None:
            token = self._next_token
            self._next_token += 1
        ring.add([r for r in readable if r != b""], writable, indirect=indirect, token=token)
        return token

    def move_to(self, transport: TransportDriver | VirtioDevice) -> None:
        """Go on driving the device through ``transport``: the guest moved to another machine
        with its RAM (the caller copied it) and finds its device there, restored from a
        snapshot. Rings, outstanding requests and tokens carry over; nothing is
        renegotiated (the device's state says what was)."""
        self.transport = as_transport(transport)
        self.memory = self.transport.memory
        for ring in self.rings:
            ring.memory = self.memory

    def kick(self, queue: int = 0) -> bool:
        """Publish the placed requests and notify the device if the ring asks for it
        (then let the VMM run the device's posted work: ``TransportDriver.poll``)."""
        if self.rings[queue].kick():
            self.notifications += 1
            self.transport.notify(queue)
            self.transport.poll()
            return True
        return False

    def reap(self, queue: int = 0) -> list[BlkResult]:
        """Results of the requests the device completed on ``queue``."""
        return [self._result(buffer) for buffer in self.rings[queue].reap()]

    def complete(self, queue: int = 0) -> list[BlkResult]:
        """Let the device finish everything in flight (``TransportDriver.settle``) and reap."""
        self.transport.settle()
        return self.reap(queue)

    def _result(self, buffer: UsedBuffer) -> BlkResult:
        # The status is the last device-writable byte whatever the used length says (the
        # Linux driver reads it from its own buffer); data is what the used length covers
        # before it. A used length of 0 means nothing was written, status included.
        status = None
        data = b""
        segments = [(gpa, n) for gpa, n in buffer.writable if n]
        if buffer.written and segments:
            gpa, length = segments[-1]
            status = self.memory.load_u8(gpa + length - 1)
            data = _read(self.memory, segments, buffer.written - 1)
        return BlkResult(buffer.token, status, data, buffer.written)

    # -- conveniences --------------------------------------------------------------------------

    def read(self, sector: int, count: int, *, queue: int = 0, **kwargs: Any) -> BlkResult:
        """Read ``count`` sectors and wait for the result."""
        self.request(VIRTIO_BLK_T_IN, sector, read_len=512 * count, queue=queue, **kwargs)
        return self._one(queue)

    def write(self, sector: int, data: bytes, *, queue: int = 0, **kwargs: Any) -> BlkResult:
        """Write ``data`` at ``sector`` and wait for the result."""
        self.request(VIRTIO_BLK_T_OUT, sector, data=data, queue=queue, **kwargs)
        return self._one(queue)

    def submit(self, type_: int, sector: int = 0, *, queue: int = 0, **kwargs: Any) -> BlkResult:
        """Any request, waited for."""
        self.request(type_, sector, queue=queue, **kwargs)
        return self._one(queue)

    def _one(self, queue: int) -> BlkResult:
        self.kick(queue)
        results = self.complete(queue)
        if len(results) != 1:
            raise DriverError(f"expected one completion on queue {queue}, got {len(results)}")
        return results[0]


def _read(memory: GuestMemory, segments: Sequence[tuple[int, int]], count: int) -> bytes:
    out = bytearray()
    for gpa, length in segments:
        take = min(length, count - len(out))
        if take <= 0:
            break
        out += memory.read(gpa, take)
    return bytes(out)


def _cut(data: bytes, lengths: Sequence[int]) -> list[bytes]:
    if not data:
        return []
    out = []
    pos = 0
    for length in lengths:
        if pos >= len(data):
            break
        if length <= 0:
            continue
        out.append(data[pos : pos + length])
        pos += length
    if pos < len(data):
        out.append(data[pos:])
    return out


def _lengths(total: int, piece: int) -> list[int]:
    if total <= 0:
        return []
    if piece <= 0:
        return [total]
    return [min(piece, total - start) for start in range(0, total, piece)]


if VIRTIO_BLK_REQ_HDR.size != VIRTIO_BLK_REQ_HDR_SIZE:  # pragma: no cover - a layout typo
    raise ImportError("VIRTIO_BLK_REQ_HDR does not match VIRTIO_BLK_REQ_HDR_SIZE")
