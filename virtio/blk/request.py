"""Turning one descriptor chain into a virtio-blk request (VIRTIO 1.2 §5.2.6), or a status.

Rules:

1. Parsing never raises for anything the guest wrote. A chain that breaks a rule becomes
   a ``BlkRequest`` whose ``status`` is already decided (IOERR or UNSUPP) and whose
   ``ops`` are empty: the backend never sees it.
2. The driver MUST NOT make assumptions about framing (§2.6.4, VIRTIO_F_ANY_LAYOUT is
   implied by VERSION_1): the header is the first 16 device-readable bytes however they
   are split, the status byte is the last device-writable byte, and data is what lies
   between. Segments are cut at byte offsets, never assumed to line up with descriptors.
3. Every range the backend will touch is checked here: sectors against the capacity,
   lengths against 512-byte multiples, and every data segment against guest RAM with the
   direction it will be accessed in, so a request reaches the backend only if it can run.
4. Parsing is pure: it reads guest memory (header, discard segments) but writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from devmodels import Access, GuestMemory, GuestMemoryError
from devmodels.backends import BlockOp

from ..queue.chain import Chain

from .defs import (
    VIRTIO_BLK_DWZ_SEG_SIZE,
    VIRTIO_BLK_REQ_HDR_SIZE,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_SECTOR_SHIFT,
    VIRTIO_BLK_SECTOR_SIZE,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
)
from .layouts import VIRTIO_BLK_DWZ_SEG, VIRTIO_BLK_REQ_HDR

__all__ = ["BlkLimits", "BlkOp", "BlkRequest", "parse_request", "cut_segments", "last_byte"]

Segment = tuple[int, int]


@dataclass(frozen=True)
class BlkLimits:
    """What a request may ask for, from the configuration and the negotiated features.

    Attributes:
        capacity: disk size in 512-byte sectors.
        readonly: VIRTIO_BLK_F_RO is offered.
        discard: VIRTIO_BLK_F_DISCARD negotiated.
        write_zeroes: VIRTIO_BLK_F_WRITE_ZEROES negotiated.
        max_discard_sectors, max_discard_seg: the discard limits of the configuration.
        max_write_zeroes_sectors, max_write_zeroes_seg: the write-zeroes limits.
    """

    capacity: int
    readonly: bool = False
    discard: bool = False
    write_zeroes: bool = False
    max_discard_sectors: int = 0
    max_discard_seg: int = 0
    max_write_zeroes_sectors: int = 0
    max_write_zeroes_seg: int = 0


@dataclass
class BlkOp:
    """One backend operation of a request (a DISCARD may carry several)."""

    op: BlockOp
    offset: int
    length: int
    segments: Sequence[Segment] = ()
    unmap: bool = False


@dataclass
class BlkRequest:
    """A parsed request.

    Attributes:
        type: the request type (``VIRTIO_BLK_T_*``), or -1 when the header was unreadable.
        sector: the header's sector.
        status_gpa: where the status byte goes; ``None`` when the chain has no writable byte.
        status: an already decided status (rule 1), or ``None`` when ``ops`` must run.
        reason: why ``status`` was decided (for traces).
        ops: the backend operations, in order.
        data: GET_ID: the device-writable data segments.
        written: bytes of data the device writes into the chain on success (status excluded).
    """

    type: int
    sector: int = 0
    status_gpa: int | None = None
    status: int | None = None
    reason: str = ""
    ops: list[BlkOp] = field(default_factory=list)
    data: list[Segment] = field(default_factory=list)
    written: int = 0


def cut_segments(segments: Sequence[Segment], skip: int, length: int) -> list[Segment]:
    """The ``(gpa, length)`` pieces covering bytes ``[skip, skip+length)`` of ``segments``."""
    out: list[Segment] = []
    for gpa, seg_len in segments:
        if skip >= seg_len:
            skip -= seg_len
            continue
        take = min(seg_len - skip, length)
        if take > 0:
            out.append((gpa + skip, take))
            length -= take
        skip = 0
        if length <= 0:
            break
    return out


def last_byte(segments: Sequence[Segment]) -> int | None:
    """The address of the last byte of ``segments`` (zero-length segments hold none)."""
    for gpa, length in reversed(segments):
        if length:
            return gpa + length - 1
    return None


def _reject(request: BlkRequest, status: int, reason: str) -> BlkRequest:
    request.status = status
    request.reason = reason
    request.ops = []
    return request


def _in_ram(memory: GuestMemory, segments: Sequence[Segment], access: Access) -> bool:
    for gpa, length in segments:
        if not memory.check_range(gpa, length, access):
            return False
    return True


def _read_bytes(memory: GuestMemory, segments: Sequence[Segment]) -> bytes:
    if len(segments) == 1:
        return memory.read(*segments[0])
    return b"".join(memory.read(gpa, length) for gpa, length in segments)


def parse_request(chain: Chain, memory: GuestMemory, limits: BlkLimits) -> BlkRequest:
    """Parse ``chain`` (a popped ``Chain``) into a ``BlkRequest`` (rules 1–4)."""
    readable: list[Segment] = chain.readable
    readable_len: int = chain.readable_len
    writable_len: int = chain.writable_len
    request = BlkRequest(-1)
    if writable_len == 0:
        # Nowhere to put the status byte: nothing can be reported (the chain goes back
        # with length 0).
        return _reject(request, VIRTIO_BLK_S_IOERR, "no device-writable status byte")
    writable: list[Segment] = chain.writable
    request.status_gpa = last_byte(writable)
    if readable_len < VIRTIO_BLK_REQ_HDR_SIZE:
        return _reject(request, VIRTIO_BLK_S_IOERR, f"header is {readable_len} bytes, not {VIRTIO_BLK_REQ_HDR_SIZE}")
    try:
        first_gpa, first_len = readable[0]
        if first_len >= VIRTIO_BLK_REQ_HDR_SIZE:
            kind, _reserved, sector = memory.read_struct(VIRTIO_BLK_REQ_HDR, first_gpa)
        else:
            raw = _read_bytes(memory, cut_segments(readable, 0, VIRTIO_BLK_REQ_HDR_SIZE))
            kind, _reserved, sector = VIRTIO_BLK_REQ_HDR.unpack(raw)
    except GuestMemoryError as exc:
        return _reject(request, VIRTIO_BLK_S_IOERR, f"header unreadable: {exc}")
    request.type = kind
    request.sector = sector
    if kind == VIRTIO_BLK_T_IN:
        return _parse_rw(request, memory, limits, cut_segments(writable, 0, writable_len - 1), writable_len - 1, False)
    if kind == VIRTIO_BLK_T_OUT:
        if limits.readonly:
            # §5.2.6.2: IOERR for a write if VIRTIO_BLK_F_RO is offered; no data written.
            return _reject(request, VIRTIO_BLK_S_IOERR, "write to a read-only device")
        data_len = readable_len - VIRTIO_BLK_REQ_HDR_SIZE
        data = cut_segments(readable, VIRTIO_BLK_REQ_HDR_SIZE, data_len)
        return _parse_rw(request, memory, limits, data, data_len, True)
    if kind == VIRTIO_BLK_T_FLUSH:
        request.ops.append(BlkOp(BlockOp.FLUSH, 0, 0))
        return request
    if kind == VIRTIO_BLK_T_GET_ID:
        request.data = cut_segments(writable, 0, writable_len - 1)
        if not _in_ram(memory, request.data, Access.WRITE):
            return _reject(request, VIRTIO_BLK_S_IOERR, "GET_ID buffer outside guest RAM")
        return request
    if kind == VIRTIO_BLK_T_DISCARD or kind == VIRTIO_BLK_T_WRITE_ZEROES:
        return _parse_dwz(request, memory, limits, readable, readable_len)
    return _reject(request, VIRTIO_BLK_S_UNSUPP, f"request type {kind} is not supported")


def _parse_rw(
    request: BlkRequest, memory: GuestMemory, limits: BlkLimits, data: list[Segment], data_len: int, write: bool
) -> BlkRequest:
    # §5.2.6.1: data of IN and OUT is a multiple of 512 bytes; reads and writes stay
    # below the capacity.
    if data_len % VIRTIO_BLK_SECTOR_SIZE:
        return _reject(request, VIRTIO_BLK_S_IOERR, f"data length {data_len} is not a multiple of 512")
    sectors = data_len >> VIRTIO_BLK_SECTOR_SHIFT
    if request.sector + sectors > limits.capacity:
        return _reject(request, VIRTIO_BLK_S_IOERR, f"sectors [{request.sector}, +{sectors}) past capacity {limits.capacity}")
    if not _in_ram(memory, data, Access.READ if write else Access.WRITE):
        return _reject(request, VIRTIO_BLK_S_IOERR, "data buffer outside guest RAM")
    if data_len:
        op = BlockOp.WRITE if write else BlockOp.READ
        request.ops.append(BlkOp(op, request.sector << VIRTIO_BLK_SECTOR_SHIFT, data_len, data))
    if not write:
        request.written = data_len
    return request


def _parse_dwz(
    request: BlkRequest, memory: GuestMemory, limits: BlkLimits, readable: list[Segment], readable_len: int
) -> BlkRequest:
    discard = request.type == VIRTIO_BLK_T_DISCARD
    name = "discard" if discard else "write-zeroes"
    if not (limits.discard if discard else limits.write_zeroes):
        return _reject(request, VIRTIO_BLK_S_UNSUPP, f"{name} was not negotiated")
    if limits.readonly:
        return _reject(request, VIRTIO_BLK_S_IOERR, f"{name} on a read-only device")
    data_len = readable_len - VIRTIO_BLK_REQ_HDR_SIZE
    max_seg = limits.max_discard_seg if discard else limits.max_write_zeroes_seg
    max_sectors = limits.max_discard_sectors if discard else limits.max_write_zeroes_sectors
    # §5.2.6.1: data is a multiple of the segment size and at most max_*_seg segments.
    if data_len <= 0 or data_len % VIRTIO_BLK_DWZ_SEG_SIZE:
        return _reject(request, VIRTIO_BLK_S_IOERR, f"{name} data is {data_len} bytes")
    count = data_len // VIRTIO_BLK_DWZ_SEG_SIZE
    if count > max_seg:
        return _reject(request, VIRTIO_BLK_S_IOERR, f"{count} {name} segments exceed {max_seg}")
    try:
        raw = _read_bytes(memory, cut_segments(readable, VIRTIO_BLK_REQ_HDR_SIZE, data_len))
    except GuestMemoryError as exc:
        return _reject(request, VIRTIO_BLK_S_IOERR, f"{name} segments unreadable: {exc}")
    op = BlockOp.DISCARD if discard else BlockOp.WRITE_ZEROES
    for i in range(count):
        sector, num, flags = VIRTIO_BLK_DWZ_SEG.unpack_from(raw, i * VIRTIO_BLK_DWZ_SEG_SIZE)
        # §5.2.6.2: UNSUPP for unknown flags, and for unmap on a discard.
        if flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (discard and flags):
            return _reject(request, VIRTIO_BLK_S_UNSUPP, f"{name} segment {i} has flags {flags:#x}")
        if num > max_sectors:
            return _reject(request, VIRTIO_BLK_S_IOERR, f"{name} segment {i}: {num} sectors exceed {max_sectors}")
        if sector + num > limits.capacity:
            return _reject(request, VIRTIO_BLK_S_IOERR, f"{name} segment {i} past capacity")
        if num:
            request.ops.append(
                BlkOp(op, sector << VIRTIO_BLK_SECTOR_SHIFT, num << VIRTIO_BLK_SECTOR_SHIFT,
                      unmap=bool(flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))
            )
    return request
