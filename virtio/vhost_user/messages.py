"""vhost-user message framing and payload decoding (sans-IO).

A front-end writes one message (12-byte header, then ``size`` payload bytes) with one
``sendmsg``, its file descriptors attached as ``SCM_RIGHTS``. On a Linux UNIX stream
socket one ``recvmsg`` may return the bytes of several writes, but it stops right after the
write whose descriptors it hands over, so the descriptors of a ``recvmsg`` belong to the
message its *last byte* came from.

Rules:

1. ``MessageReader.feed(data, fds)`` takes one ``recvmsg`` result and returns the messages
   it completed. Its ``fds`` go to the message holding the last byte of ``data``; an
   incomplete message keeps them until it completes.
2. A header announcing more than ``VHOST_USER_MAX_PAYLOAD`` bytes, a version other than 1,
   or the reply bit set cannot come from a well-behaved front-end: ``ProtocolError`` is
   raised and the connection must end (the reader is then unusable; ``close`` releases the
   descriptors it holds).
3. The reader holds at most one incomplete message and at most ``VHOST_USER_MAX_FDS``
   descriptors per message (more is a ``ProtocolError``): memory stays bounded.
4. Decoders (``decode_*``) check the payload size of their request *exactly* before
   parsing and raise ``ProtocolError`` otherwise; they never look at values beyond
   their shape.
5. Messages own their descriptors. Whoever handles a message takes the ones it keeps
   (``take_fd``) and closes the rest (``close_fds``); nothing is leaked on any path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import construct as cs

from devmodels.fds import close_fds

from .defs import (
    VHOST_USER_CONFIG_HDR_SIZE,
    VHOST_USER_HDR_SIZE,
    VHOST_USER_MAX_CONFIG_SIZE,
    VHOST_USER_MAX_FDS,
    VHOST_USER_MAX_PAYLOAD,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_REPLY_MASK,
    VHOST_USER_VERSION,
    VHOST_USER_VERSION_MASK,
    VHOST_MEMORY_BASELINE_NREGIONS,
    request_name,
)
from .layouts import (
    HEADER,
    INFLIGHT_SIZE,
    LOG_SIZE,
    MEM_REG_MSG_SIZE,
    MEMORY_HEADER_SIZE,
    MEMORY_REGION_SIZE,
    U64,
    VRING_ADDR_SIZE,
    VRING_STATE_SIZE,
    VhostUserConfigHeader,
    VhostUserInflight,
    VhostUserLog,
    VhostUserMemory,
    VhostUserMemRegMsg,
    VhostVringAddr,
    VhostVringState,
)

__all__ = [
    "ProtocolError",
    "Message",
    "MessageReader",
    "Region",
    "VringAddr",
    "ConfigAccess",
    "LogArea",
    "InflightArea",
    "encode",
    "encode_u64",
    "encode_vring_state",
    "encode_config",
    "encode_memory",
    "encode_mem_reg",
    "encode_vring_addr",
    "encode_log",
    "encode_inflight",
    "decode_u64",
    "decode_vring_state",
    "decode_vring_addr",
    "decode_memory",
    "decode_mem_reg",
    "decode_config",
    "decode_log",
    "decode_inflight",
    "close_fds",
]


class ProtocolError(Exception):
    """A message that breaks the vhost-user protocol.

    Attributes:
        fatal: the connection must end (framing is lost, or the peer cannot be answered
            sensibly); otherwise an error reply is enough.
    """

    def __init__(self, reason: str, *, fatal: bool = False) -> None:
        super().__init__(reason)
        self.fatal = fatal


@dataclass
class Message:
    """One framed message (rule 5: it owns ``fds``).

    Attributes:
        request: the request id (any ``int``; unknown ones are the session's to refuse).
        flags: the header flags.
        payload: the ``size`` payload bytes.
        fds: descriptors received with it.
    """

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        """The front-end asked for an ack (``need_reply``, bit 3)."""
        return bool(self.flags & VHOST_USER_NEED_REPLY_MASK)

    @property
    def name(self) -> str:
        """The request's name for traces."""
        return request_name(self.request)

    def take_fd(self) -> int:
        """Remove and return the first descriptor.

        Raises:
            ProtocolError: the message carries none.
        """
        if not self.fds:
            raise ProtocolError(f"{self.name} carries no file descriptor")
        return self.fds.pop(0)

    def close_fds(self) -> None:
        """Close the descriptors nobody took."""
        fds, self.fds = self.fds, []
        close_fds(fds)


class MessageReader:
    """Incremental framing of one connection (rules 1–3)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []  # descriptors of the incomplete message at the head of _buf

    @property
    def partial(self) -> bool:
        """Whether an incomplete message (bytes or descriptors) is held."""
        return bool(self._buf or self._fds)

    def feed(self, data: bytes | bytearray | memoryview, fds: Sequence[int] = ()) -> list[Message]:
        """Add one ``recvmsg`` worth of bytes and descriptors; return the completed messages.

        Raises:
            ProtocolError: (fatal) a header this protocol cannot frame past (rule 2) or too
                many descriptors (rule 3). Descriptors not yet handed out stay in the reader
                for ``close``.
        """
        buf = self._buf
        buf += data
        out: list[Message] = []
        try:
            self._frame(buf, out, fds)
        except ProtocolError:
            # Messages completed before the bad header never reach the session: their
            # descriptors are closed here (regression: fuzz/regressions/vhost_user).
            for message in out:
                message.close_fds()
            raise
        # Rule 3, and whichever limit fails: the connection is closed, so the messages
        # completed in this read never reach the session and their descriptors are closed
        # here (regressions: fuzz/regressions/vhost_user/).
        too_many = next((m for m in out if len(m.fds) > VHOST_USER_MAX_FDS), None)
        if too_many is not None or len(self._fds) > VHOST_USER_MAX_FDS:
            if too_many is not None:
                reason = f"{too_many.name} carries {len(too_many.fds)} descriptors"
            else:
                reason = f"{len(self._fds)} descriptors for one message"
            for message in out:
                message.close_fds()
            raise ProtocolError(reason, fatal=True)
        return out

    def _frame(self, buf: bytearray, out: list[Message], fds: Sequence[int]) -> None:
        pos = 0
        end = len(buf)
        try:
            while end - pos >= VHOST_USER_HDR_SIZE:
                request, flags, size = HEADER.unpack_from(buf, pos)
                _check_header(request, flags, size)
                stop = pos + VHOST_USER_HDR_SIZE + size
                if stop > end:
                    break
                out.append(Message(request, flags, bytes(buf[pos + VHOST_USER_HDR_SIZE : stop]), self._fds))
                self._fds = []
                pos = stop
        finally:
            del buf[:pos]
            # Rule 1: the last byte of this read belongs to the incomplete message if one
            # is left, else to the last message completed.
            if fds:
                if buf or not out:
                    self._fds.extend(fds)
                else:
                    out[-1].fds.extend(fds)

    def close(self) -> None:
        """Drop any incomplete message and close its descriptors."""
        self._buf.clear()
        fds, self._fds = self._fds, []
        close_fds(fds)


def _check_header(request: int, flags: int, size: int) -> None:
    if size > VHOST_USER_MAX_PAYLOAD:
        raise ProtocolError(f"{request_name(request)} announces {size} payload bytes", fatal=True)
    if flags & VHOST_USER_VERSION_MASK != VHOST_USER_VERSION:
        raise ProtocolError(f"{request_name(request)} has protocol version {flags & 3}", fatal=True)
    if flags & VHOST_USER_REPLY_MASK:
        raise ProtocolError(f"{request_name(request)} has the reply flag set", fatal=True)


# -- encoding ---------------------------------------------------------------------------------


def encode(request: int, payload: bytes = b"", *, reply: bool = True, need_reply: bool = False) -> bytes:
    """A whole message: header (version 1, ``reply``/``need_reply`` flags) and payload."""
    flags = VHOST_USER_VERSION | (VHOST_USER_REPLY_MASK if reply else 0)
    if need_reply:
        flags |= VHOST_USER_NEED_REPLY_MASK
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_u64(value: int) -> bytes:
    """A ``u64`` payload."""
    return U64.pack(value & 0xFFFF_FFFF_FFFF_FFFF)


def encode_vring_state(index: int, num: int) -> bytes:
    """A vring state payload."""
    return bytes(VhostVringState.build(dict(index=index, num=num)))


def encode_vring_addr(
    index: int, desc: int, used: int, avail: int, *, flags: int = 0, log: int = 0
) -> bytes:
    """A vring address payload (front-end side, for tests and fake front-ends)."""
    return bytes(
        VhostVringAddr.build(
            dict(index=index, flags=flags, desc_user_addr=desc, used_user_addr=used, avail_user_addr=avail,
                 log_guest_addr=log)
        )
    )


def encode_config(offset: int, data: bytes, flags: int = 0) -> bytes:
    """A device config space payload."""
    return bytes(VhostUserConfigHeader.build(dict(offset=offset, size=len(data), flags=flags))) + data


def encode_memory(regions: Sequence[Region]) -> bytes:
    """A SET_MEM_TABLE payload (front-end side)."""
    return bytes(
        VhostUserMemory.build(
            dict(
                nregions=len(regions),
                padding=0,
                regions=[
                    dict(guest_phys_addr=r.gpa, memory_size=r.size, userspace_addr=r.uaddr, mmap_offset=r.mmap_offset)
                    for r in regions
                ],
            )
        )
    )


def encode_mem_reg(region: Region) -> bytes:
    """An ADD_MEM_REG / REM_MEM_REG payload (front-end side)."""
    return bytes(
        VhostUserMemRegMsg.build(
            dict(
                padding=0,
                region=dict(guest_phys_addr=region.gpa, memory_size=region.size, userspace_addr=region.uaddr,
                            mmap_offset=region.mmap_offset),
            )
        )
    )


def encode_log(size: int, offset: int = 0) -> bytes:
    """A SET_LOG_BASE payload (front-end side): the log's size and offset in its fd."""
    return bytes(VhostUserLog.build(dict(mmap_size=size, mmap_offset=offset)))


def encode_inflight(size: int, offset: int, num_queues: int, queue_size: int) -> bytes:
    """A GET_INFLIGHT_FD / SET_INFLIGHT_FD payload (and the GET_INFLIGHT_FD reply)."""
    return bytes(VhostUserInflight.build(dict(mmap_size=size, mmap_offset=offset, num_queues=num_queues,
                                              queue_size=queue_size)))


# -- decoding (rule 4) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """One memory region as the front-end describes it."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int


@dataclass(frozen=True)
class VringAddr:
    """A SET_VRING_ADDR payload (user addresses of the front-end)."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True)
class ConfigAccess:
    """A GET_CONFIG / SET_CONFIG payload."""

    offset: int
    size: int
    flags: int
    data: bytes


@dataclass(frozen=True)
class LogArea:
    """A SET_LOG_BASE payload: ``size`` bytes of log at ``offset`` in the message's fd."""

    size: int
    offset: int


@dataclass(frozen=True)
class InflightArea:
    """A GET_INFLIGHT_FD / SET_INFLIGHT_FD payload."""

    size: int
    offset: int
    num_queues: int
    queue_size: int


def _exact(message: Message, size: int) -> None:
    if len(message.payload) != size:
        raise ProtocolError(f"{message.name} payload is {len(message.payload)} bytes, expected {size}")


def _parse(layout: cs.Construct, message: Message) -> Any:
    try:
        return layout.parse(message.payload)
    except cs.ConstructError as exc:  # sizes were checked; this is a bug guard only
        raise ProtocolError(f"{message.name}: {exc}") from None


def decode_u64(message: Message) -> int:
    """The ``u64`` payload."""
    _exact(message, U64.size)
    return int(U64.unpack(message.payload)[0])


def decode_vring_state(message: Message) -> tuple[int, int]:
    """``(index, num)`` of a vring state payload."""
    _exact(message, VRING_STATE_SIZE)
    parsed = _parse(VhostVringState, message)
    return int(parsed.index), int(parsed.num)


def decode_vring_addr(message: Message) -> VringAddr:
    """A vring address payload."""
    _exact(message, VRING_ADDR_SIZE)
    p = _parse(VhostVringAddr, message)
    return VringAddr(p.index, p.flags, p.desc_user_addr, p.used_user_addr, p.avail_user_addr, p.log_guest_addr)


def _region(p: Any) -> Region:
    return Region(int(p.guest_phys_addr), int(p.memory_size), int(p.userspace_addr), int(p.mmap_offset))


def decode_memory(message: Message) -> list[Region]:
    """The regions of a SET_MEM_TABLE payload (at most ``VHOST_MEMORY_BASELINE_NREGIONS``)."""
    if len(message.payload) < MEMORY_HEADER_SIZE:
        raise ProtocolError(f"{message.name} payload is {len(message.payload)} bytes")
    nregions = int(U64.unpack_from(message.payload, 0)[0] & 0xFFFF_FFFF)
    if nregions > VHOST_MEMORY_BASELINE_NREGIONS:
        raise ProtocolError(f"{message.name} has {nregions} regions (at most {VHOST_MEMORY_BASELINE_NREGIONS})")
    _exact(message, MEMORY_HEADER_SIZE + MEMORY_REGION_SIZE * nregions)
    parsed = _parse(VhostUserMemory, message)
    return [_region(r) for r in parsed.regions]


def decode_mem_reg(message: Message) -> Region:
    """The region of an ADD_MEM_REG / REM_MEM_REG payload."""
    _exact(message, MEM_REG_MSG_SIZE)
    return _region(_parse(VhostUserMemRegMsg, message).region)


def decode_config(message: Message) -> ConfigAccess:
    """A config space payload: 12-byte header and ``size`` bytes (at most 256)."""
    if len(message.payload) < VHOST_USER_CONFIG_HDR_SIZE:
        raise ProtocolError(f"{message.name} payload is {len(message.payload)} bytes")
    p = VhostUserConfigHeader.parse(message.payload[:VHOST_USER_CONFIG_HDR_SIZE])
    if p.size > VHOST_USER_MAX_CONFIG_SIZE:
        raise ProtocolError(f"{message.name} size {p.size} exceeds {VHOST_USER_MAX_CONFIG_SIZE}")
    _exact(message, VHOST_USER_CONFIG_HDR_SIZE + p.size)
    return ConfigAccess(int(p.offset), int(p.size), int(p.flags), message.payload[VHOST_USER_CONFIG_HDR_SIZE:])


def decode_log(message: Message) -> LogArea:
    """A log description (16 bytes)."""
    _exact(message, LOG_SIZE)
    p = _parse(VhostUserLog, message)
    return LogArea(int(p.mmap_size), int(p.mmap_offset))


def decode_inflight(message: Message) -> InflightArea:
    """An inflight description (24 bytes, QEMU's unpacked ``VhostUserInflight``)."""
    _exact(message, INFLIGHT_SIZE)
    p = _parse(VhostUserInflight, message)
    return InflightArea(int(p.mmap_size), int(p.mmap_offset), int(p.num_queues), int(p.queue_size))
