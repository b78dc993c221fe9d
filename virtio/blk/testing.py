"""A guest-side virtio-blk driver simulator, and a generic device bring-up (STYLE 22).

``bring_up`` plays the §3.1.1 driver initialization against any ``VirtioDevice`` through
its transport-neutral entry points (status, feature windows, queue programming) and
returns one ring simulator (``virtio.testing``) per queue. ``BlkDriver`` builds on it: it
forms virtio-blk requests (any framing, any layout of header, data and status),
notifies the device, and reaps the results.

Rules: the simulators only write what a driver writes (rings, request buffers, device
registers through the device's entry points); ``raw`` layouts are there to build
malformed requests on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devmodels import UsageError

from ..defs import ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED
from ..device import QueueArea, VirtioDevice
from ..testing import PackedDriver, SplitDriver, UsedBuffer, make_driver
from .defs import VIRTIO_BLK_REQ_HDR_SIZE, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from .layouts import VIRTIO_BLK_REQ_HDR

__all__ = ["bring_up", "negotiate", "BlkDriver", "BlkResult"]

RingDriver = SplitDriver | PackedDriver


def negotiate(device: VirtioDevice, accept: int | None = None) -> bool:
    """Steps 1–6 of §3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK.

    ``accept`` defaults to everything offered. Returns whether FEATURES_OK stuck.
    """
    offered = device.features.offered
    wanted = offered if accept is None else accept
    device.write_status(0)
    device.write_status(ACKNOWLEDGE)
    device.write_status(ACKNOWLEDGE | DRIVER)
    for select in range(4):
        device.driver_feature_select = select
        device.write_driver_features((wanted >> (32 * select)) & 0xFFFF_FFFF)
    device.write_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
    return bool(device.status & FEATURES_OK)


def bring_up(
    device: VirtioDevice,
    *,
    accept: int | None = None,
    queues: Sequence[int] | None = None,
    queue_size: int | None = None,
    base: int = 0x10000,
    data_size: int = 1 << 20,
) -> list[RingDriver]:
    """Initialize ``device`` (§3.1.1) and set up ``queues`` (default: all) with ring simulators.

    Rings and their data arenas are laid out from ``base``, one after another.

    Raises:
        UsageError: the device refused the features.
    """
    if not negotiate(device, accept):
        raise UsageError(f"{device.name} refused features {device.features.driver:#x}")
    packed = device.has_feature(VIRTIO_F_RING_PACKED)
    event_idx = device.has_feature(VIRTIO_F_EVENT_IDX)
    drivers: list[RingDriver] = []
    cursor = base
    for index in range(device.num_queues) if queues is None else queues:
        size = queue_size or device.queue_max_size(index)
        driver = make_driver(device.memory, size, packed=packed, base=cursor, data_size=data_size, event_idx=event_idx)
        cursor = (driver.data_end + 0xFFF) & ~0xFFF
        device.set_queue_size(index, size)
        for area, address in enumerate((driver.layout.desc_addr, driver.layout.driver_addr, driver.layout.device_addr)):
            device.write_queue_address(index, area, 0, address & 0xFFFF_FFFF)
            device.write_queue_address(index, area, 1, address >> 32)
        device.set_queue_ready(index, True)
        drivers.append(driver)
    assert QueueArea.DESC == 0  # the enumerate above relies on the area order
    device.write_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    return drivers


@dataclass
class BlkResult:
    """One completed request as the driver sees it."""

    token: Any
    status: int | None
    data: bytes
    used_len: int


class BlkDriver:
    """A virtio-blk guest driver over ``bring_up`` (requests, notifications, reaping).

    Args:
        device: the virtio-blk device (``VirtioBlkDevice`` or any device with its queues).
        accept: features to accept (default: everything offered).
        queue_size: ring size (default: the device's maximum).
        data_size: bytes of data arena per queue.
    """

    def __init__(
        self,
        device: VirtioDevice,
        *,
        accept: int | None = None,
        queue_size: int | None = None,
        data_size: int = 1 << 20,
        base: int = 0x10000,
    ) -> None:
        self.device = device
        self.memory = device.memory
        self.rings = bring_up(device, accept=accept, queue_size=queue_size, data_size=data_size, base=base)
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

    def kick(self, queue: int = 0) -> bool:
        """Publish the placed requests and notify the device if the ring asks for it."""
        if self.rings[queue].kick():
            self.notifications += 1
            self.device.notify_queue(queue)
            while self.device.run_pending():
                pass
            return True
        return False

    def reap(self, queue: int = 0) -> list[BlkResult]:
        """Results of the requests the device completed on ``queue``."""
        return [self._result(buffer) for buffer in self.rings[queue].reap()]

    def complete(self, queue: int = 0) -> list[BlkResult]:
        """Let the device finish everything in flight (``drain``) and reap."""
        drain = getattr(self.device, "drain", None)
        if drain is not None:
            drain()
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
            raise UsageError(f"expected one completion, got {len(results)}")
        return results[0]


def _read(memory: Any, segments: Sequence[tuple[int, int]], count: int) -> bytes:
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


assert VIRTIO_BLK_REQ_HDR.size == VIRTIO_BLK_REQ_HDR_SIZE
