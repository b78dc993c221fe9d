"""A guest-side virtio-net driver simulator over any transport (CONVENTIONS: simulators).

``NetDriver`` initializes a virtio-net device with ``virtio.testing.bring_up`` through a
transport driver (``PciDriver``, ``MmioDriver``, or the device directly), keeps its
receive queues stocked with buffers, transmits frames (with any header and any split
into descriptors), collects received packets (joining MRG_RXBUF buffers as
``num_buffers`` says) and issues control-queue commands.

Rules: like the other simulators, it writes only what a driver writes; a device that
writes something no correct device writes raises ``DeviceProtocolError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devmodels import GuestMemory

from ..device import VirtioDevice
from ..testing import DeviceProtocolError, TransportDriver, UsedBuffer, as_transport, bring_up
from .defs import VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_SIZE
from .layouts import VIRTIO_NET_HDR, virtio_net_config

_MAX_PAIRS_OFFSET = virtio_net_config.subcons[0].sizeof() + virtio_net_config.subcons[1].sizeof()
"""Offset of ``max_virtqueue_pairs`` in ``struct virtio_net_config`` (§5.1.4)."""

__all__ = ["NetDriver", "RxPacket"]


@dataclass
class RxPacket:
    """One received packet: its header fields and frame."""

    flags: int
    gso_type: int
    num_buffers: int
    frame: bytes


class NetDriver:
    """The driver of a virtio-net device, over any transport.

    Args:
        transport: a transport driver (``PciDriver``, ``MmioDriver``, ``DirectDriver``) or
            the device itself (driven through a ``DirectDriver``).
        accept: features to accept, a mask (default: all offered).
        rx_buffers: receive buffers kept posted per receive queue.
        rx_buffer_size: bytes per receive buffer (default 1526, or 2048 with MRG_RXBUF).
        queue_size: ring size (default: the device's maximum).
    """

    def __init__(
        self,
        transport: TransportDriver | VirtioDevice,
        *,
        accept: int | None = None,
        rx_buffers: int = 16,
        rx_buffer_size: int | None = None,
        queue_size: int | None = None,
        data_size: int = 1 << 20,
    ) -> None:
        self.transport = as_transport(transport)
        self.device: Any = transport if isinstance(transport, VirtioDevice) else None
        """The device, when it was given directly (tests reach its VMM-side methods)."""
        self.memory: GuestMemory = self.transport.memory
        self.rings = bring_up(self.transport, accept=accept, queue_size=queue_size, data_size=data_size)
        self.features = self.transport.negotiated
        self.mergeable = self._has(VIRTIO_NET_F_MRG_RXBUF)
        self.pairs = self.transport.read_config(_MAX_PAIRS_OFFSET, 2) if self._has(VIRTIO_NET_F_MQ) else 1
        self.ctrl_index = 2 * self.pairs if self._has(VIRTIO_NET_F_CTRL_VQ) else None
        self.rx_buffer_size = rx_buffer_size or (2048 if self.mergeable else 1526)
        self.rx_buffers = rx_buffers
        self._partial: list[list[UsedBuffer]] = [[] for _ in range(self.pairs)]
        for pair in range(self.pairs):
            self.post_rx(pair, rx_buffers)

    def _has(self, number: int) -> bool:
        return bool(self.features >> number & 1)

    # -- receive ---------------------------------------------------------------------------------

    def post_rx(self, pair: int = 0, count: int = 1, *, size: int | None = None, split: int = 0) -> None:
        """Post ``count`` receive buffers (each ``size`` bytes, cut in ``split``-byte pieces)
        and notify the device if the ring asks for it."""
        ring = self.rings[2 * pair]
        size = size or self.rx_buffer_size
        for _ in range(count):
            pieces = [size] if not split else [min(split, size - i) for i in range(0, size, split)]
            ring.add((), pieces)
        if ring.kick():
            self.transport.notify(2 * pair)

    def received(self, pair: int = 0, *, repost: bool = True) -> list[RxPacket]:
        """Packets the device delivered on receive queue ``pair`` (reposting the buffers)."""
        ring = self.rings[2 * pair]
        out: list[RxPacket] = []
        used = ring.reap()
        partial = self._partial[pair]
        for buffer in used:
            partial.append(buffer)
            first = partial[0]
            data = first.read(self.memory)
            if len(data) < VIRTIO_NET_HDR_SIZE:
                partial.clear()
                continue  # an unusable buffer the device returned empty
            flags, gso, _h, _s, _cs, _co, num = VIRTIO_NET_HDR.unpack_from(data, 0)
            if num < 1 or (not self.mergeable and num != 1):
                raise DeviceProtocolError(f"num_buffers {num}")
            if len(partial) < num:
                continue
            body = b"".join(b.read(self.memory) for b in partial)
            partial.clear()
            out.append(RxPacket(flags, gso, num, body[VIRTIO_NET_HDR_SIZE:]))
        if repost and used:
            self.post_rx(pair, len(used))
        return out

    # -- transmit --------------------------------------------------------------------------------

    def send(
        self,
        frame: bytes,
        *,
        pair: int = 0,
        header: bytes | None = None,
        split: Sequence[int] = (),
        indirect: bool = False,
        raw: Sequence[bytes | tuple[int, int]] | None = None,
    ) -> bool:
        """Transmit ``frame`` (after ``header``, default all zeros) and notify if asked to."""
        ring = self.rings[2 * pair + 1]
        if raw is not None:
            readable = list(raw)
        else:
            packet = (header if header is not None else bytes(VIRTIO_NET_HDR_SIZE)) + frame
            readable = []
            pos = 0
            for length in split:
                readable.append(packet[pos : pos + length])
                pos += length
            if pos < len(packet):
                readable.append(packet[pos:])
        ring.add([r for r in readable if r != b""], (), indirect=indirect)
        if ring.kick():
            self.transport.notify(2 * pair + 1)
            return True
        return False

    def reap_tx(self, pair: int = 0) -> list[int]:
        """Used lengths of the transmit buffers the device returned."""
        return [buffer.written for buffer in self.rings[2 * pair + 1].reap()]

    # -- control queue -----------------------------------------------------------------------------

    def command(self, klass: int, command: int, data: bytes = b"", *, ack_len: int = 1) -> int | None:
        """Issue one control command; return the ack byte (``None`` if the device wrote none)."""
        if self.ctrl_index is None:
            raise DeviceProtocolError("no control queue was negotiated")
        ring = self.rings[self.ctrl_index]
        ring.add([struct.pack("BB", klass, command) + data], [ack_len] if ack_len else [])
        if ring.kick():
            self.transport.notify(self.ctrl_index)
        (buffer,) = ring.reap()
        if buffer.written == 0:
            return None
        gpa, length = buffer.writable[-1]
        return self.memory.load_u8(gpa + length - 1)
