"""Transmit side of virtio-net (VIRTIO 1.2 §5.1.6.2).

Rules:

1. A transmit chain is read whole (header and frame, however the driver split them);
   one shorter than the header, longer than a 64 KiB frame plus the header
   (``VIRTIO_NET_MAX_TX``), or whose buffers are not guest RAM is refused: it goes back
   with used length 0 and nothing is sent.
2. With a backend that carries the virtio-net header (``vnet``), the header travels with
   the frame, ``num_buffers`` cleared; a GSO type the driver was not allowed to use
   (HOST_TSO4/6, HOST_UFO, HOST_ECN not negotiated) drops the frame.
3. Without one, the device completes a partial checksum itself (§5.1.6.2: it was asked to
   with NEEDS_CSUM) and drops GSO frames it cannot segment; the backend gets a plain frame.
   §5.1.6.2.2: flag bits the device does not recognise are ignored.
"""

from __future__ import annotations


from devmodels import GuestMemory, GuestMemoryError
from devmodels.backends.net import finish_checksum

from ..queue.chain import Chain

from .defs import (
    ETH_HLEN,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_SIZE,
    VIRTIO_NET_MAX_TX,
)
from .layouts import VIRTIO_NET_HDR

__all__ = ["read_packet", "prepare_frame", "GSO_FEATURE"]

GSO_FEATURE = {
    VIRTIO_NET_HDR_GSO_TCPV4: VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_HDR_GSO_TCPV6: VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_GSO_UDP: VIRTIO_NET_F_HOST_UFO,
}
"""GSO type -> the feature that lets the driver send it."""


def read_packet(chain: Chain, memory: GuestMemory) -> bytearray | str:
    """Header and frame of a transmit chain, or why it is refused (rule 1)."""
    length = chain.readable_len
    if length < VIRTIO_NET_HDR_SIZE:
        return f"chain of {length} bytes is shorter than the header"
    if length > VIRTIO_NET_MAX_TX:
        return f"chain of {length} bytes is longer than a 64 KiB frame and header"
    out = bytearray(length)
    pos = 0
    try:
        for gpa, seg_len in chain.readable:
            if seg_len:
                memory.read_into(gpa, memoryview(out)[pos : pos + seg_len])
                pos += seg_len
    except GuestMemoryError as exc:
        return f"buffer outside guest RAM: {exc}"
    return out


def prepare_frame(packet: bytearray, negotiated: int, vnet: bool) -> bytes | bytearray | str:
    """What to hand to the backend for ``packet`` (header + frame), or why it is dropped
    (rules 2 and 3)."""
    flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset, _num = VIRTIO_NET_HDR.unpack_from(packet, 0)
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if len(packet) - VIRTIO_NET_HDR_SIZE < ETH_HLEN:
        return "frame shorter than an Ethernet header"
    if vnet:
        if gso != VIRTIO_NET_HDR_GSO_NONE:
            feature = GSO_FEATURE.get(gso)
            if feature is None or not negotiated >> feature & 1:
                return f"GSO type {gso_type:#x} was not negotiated"
            if gso_type & VIRTIO_NET_HDR_GSO_ECN and not negotiated >> VIRTIO_NET_F_HOST_ECN & 1:
                return "GSO ECN was not negotiated"
        packet[10:12] = b"\0\0"  # num_buffers means nothing on transmit
        return packet
    if gso != VIRTIO_NET_HDR_GSO_NONE:
        return f"GSO type {gso_type:#x} cannot be segmented for this backend"
    frame = packet[VIRTIO_NET_HDR_SIZE:]
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and not finish_checksum(frame, csum_start, csum_offset):
        return f"checksum offsets {csum_start}+{csum_offset} outside the frame"
    return frame
