"""A fake vhost-user front-end, for tests and for trying a back-end by hand (CONVENTIONS: simulators).

It plays QEMU's part: guest RAM in memfd regions (shared with the back-end), a memory
table whose *user* addresses differ from the guest addresses (as a real front-end's do),
rings laid out by the driver simulators of ``virtio.testing`` and announced with their
user addresses, kick and call eventfds. Requests travel over any connected ``AF_UNIX``
stream socket (a ``socketpair`` end, or a connection to the back-end's path).

Rules: it sends only what the caller asks for (``send``/``call`` take any request, payload
and descriptors, so hostile messages are one call away); replies are read with a timeout
and parsed without trusting the back-end (a malformed reply raises ``FrontEndError``).
"""

from __future__ import annotations

import array
import os
import select
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from devmodels.testing import DeviceProtocolError
from devmodels import GuestMemory, MemoryRegion

from .defs import (
    VHOST_USER_GET_CONFIG,
    VHOST_USER_GET_FEATURES,
    VHOST_USER_GET_INFLIGHT_FD,
    VHOST_USER_GET_PROTOCOL_FEATURES,
    VHOST_USER_GET_QUEUE_NUM,
    VHOST_USER_GET_VRING_BASE,
    VHOST_USER_HDR_SIZE,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_REPLY_MASK,
    VHOST_USER_SET_FEATURES,
    VHOST_USER_SET_INFLIGHT_FD,
    VHOST_USER_SET_LOG_BASE,
    VHOST_USER_SET_MEM_TABLE,
    VHOST_USER_SET_OWNER,
    VHOST_USER_SET_PROTOCOL_FEATURES,
    VHOST_USER_SET_VRING_ADDR,
    VHOST_USER_SET_VRING_BASE,
    VHOST_USER_SET_VRING_CALL,
    VHOST_USER_SET_VRING_ENABLE,
    VHOST_USER_SET_VRING_KICK,
    VHOST_USER_SET_VRING_NUM,
    VHOST_USER_VERSION,
)
from .layouts import HEADER, U64
from .messages import Region, decode_vring_state, encode_config, encode_memory, encode_u64, encode_vring_addr
from .messages import InflightArea, Message, decode_config, decode_inflight, encode_inflight, encode_log
from .messages import encode_vring_state

__all__ = ["FakeFrontEnd", "FrontEndError", "SharedRam", "USER_BASE"]

USER_BASE = 0x7F00_0000_0000
"""Where the fake front-end pretends guest RAM is mapped in its own address space."""


class FrontEndError(DeviceProtocolError):
    """The back-end answered something a correct back-end does not (or did not answer)."""


@dataclass
class SharedRam:
    """Guest RAM the front-end shares: memfd regions and their fake user addresses."""

    memory: GuestMemory
    uaddr_base: int = USER_BASE

    @classmethod
    def create(cls, layout: Sequence[tuple[int, int]] = ((0, 16 << 20),), uaddr_base: int = USER_BASE) -> SharedRam:
        """RAM made of memfd regions at ``(gpa, size)``."""
        return cls(GuestMemory([MemoryRegion.memfd(gpa, size, name="fake-guest-ram") for gpa, size in layout]),
                   uaddr_base)

    def regions(self) -> list[Region]:
        """The memory table entries (user address = ``uaddr_base`` + gpa)."""
        return [Region(r.base, r.size, self.uaddr_base + r.base, r.fd_offset) for r in self.memory.regions]

    def fds(self) -> list[int]:
        """The memfds, one per region."""
        return [int(r.fd) for r in self.memory.regions if r.fd is not None]

    def uaddr(self, gpa: int) -> int:
        """The front-end user address of a guest address."""
        return self.uaddr_base + gpa

    def close(self) -> None:
        """Unmap and close the regions."""
        self.memory.close()


class FakeFrontEnd:
    """The front-end side of one connection.

    Args:
        sock: a connected ``AF_UNIX`` stream socket (the front-end owns it).
        ram: the shared guest RAM.
        timeout: seconds to wait for a reply or a call.
    """

    def __init__(self, sock: socket.socket, ram: SharedRam, *, timeout: float = 10.0) -> None:
        self.sock = sock
        self.ram = ram
        self.timeout = timeout
        self.kick_fds: dict[int, int] = {}
        self.call_fds: dict[int, int] = {}
        self._buf = bytearray()
        self._fds: list[int] = []  # descriptors received with reply bytes not yet parsed

    # -- raw messages ------------------------------------------------------------------------

    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *, need_reply: bool = False,
             flags: int | None = None, size: int | None = None) -> None:
        """Send one message (``flags``/``size`` override the header, to forge bad ones)."""
        value = VHOST_USER_VERSION | (VHOST_USER_NEED_REPLY_MASK if need_reply else 0) if flags is None else flags
        data = HEADER.pack(request, value, len(payload) if size is None else size) + payload
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self.sock.sendmsg([data], ancillary)

    def recv(self) -> Message:
        """The next reply, with the descriptors that came with its bytes (the caller owns
        them: ``Message.fds``).

        Raises:
            FrontEndError: none within the timeout, the connection closed, or a bad header.
        """
        while True:
            if len(self._buf) >= VHOST_USER_HDR_SIZE:
                request, flags, size = HEADER.unpack_from(self._buf, 0)
                if not flags & VHOST_USER_REPLY_MASK:
                    raise FrontEndError(f"reply to {request} lacks the reply flag")
                if size > 4096:
                    raise FrontEndError(f"reply announces {size} bytes")
                end = VHOST_USER_HDR_SIZE + size
                if len(self._buf) >= end:
                    message = Message(request, flags, bytes(self._buf[VHOST_USER_HDR_SIZE:end]), self._fds)
                    self._fds = []
                    del self._buf[:end]
                    return message
            ready, _, _ = select.select([self.sock], [], [], self.timeout)
            if not ready:
                raise FrontEndError("no reply from the back-end")
            chunk, ancdata, _flags, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC)
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                    self._fds.extend(fds)
            if not chunk:
                raise FrontEndError("the back-end closed the connection")
            self._buf += chunk

    def call(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *, need_reply: bool = False) -> Message:
        """Send and wait for the reply."""
        self.send(request, payload, fds, need_reply=need_reply)
        reply = self.recv()
        if reply.request != request:
            raise FrontEndError(f"reply to {reply.request}, expected {request}")
        return reply

    def ack(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> int:
        """Send with ``need_reply`` and return the acknowledged value (0 = success)."""
        reply = self.call(request, payload, fds, need_reply=True)
        return _u64(reply)

    def closed(self, timeout: float | None = None) -> bool:
        """Whether the back-end closed the connection (waiting up to ``timeout``)."""
        ready, _, _ = select.select([self.sock], [], [], self.timeout if timeout is None else timeout)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(65536, socket.MSG_PEEK)
        except ConnectionResetError:
            return True
        return chunk == b""

    # -- the usual session -------------------------------------------------------------------

    def get_features(self) -> int:
        """GET_FEATURES."""
        return _u64(self.call(VHOST_USER_GET_FEATURES))

    def get_protocol_features(self) -> int:
        """GET_PROTOCOL_FEATURES."""
        return _u64(self.call(VHOST_USER_GET_PROTOCOL_FEATURES))

    def get_queue_num(self) -> int:
        """GET_QUEUE_NUM."""
        return _u64(self.call(VHOST_USER_GET_QUEUE_NUM))

    def handshake(self, features: int, protocol_features: int | None = None) -> None:
        """SET_OWNER, protocol features (all offered, default), SET_FEATURES, memory table."""
        self.send(VHOST_USER_SET_OWNER)
        offered = self.get_features()
        proto = self.get_protocol_features() if protocol_features is None else protocol_features
        self.send(VHOST_USER_SET_PROTOCOL_FEATURES, encode_u64(proto))
        if self.ack(VHOST_USER_SET_FEATURES, encode_u64(features & offered)) != 0:
            raise FrontEndError(f"SET_FEATURES {features & offered:#x} refused")
        self.set_mem_table()

    def set_mem_table(self) -> int:
        """SET_MEM_TABLE with every region (acknowledged; returns the ack)."""
        return self.ack(VHOST_USER_SET_MEM_TABLE, encode_memory(self.ram.regions()), self.ram.fds())

    def get_config(self, offset: int, size: int) -> bytes:
        """GET_CONFIG (an empty payload means the back-end refused)."""
        reply = self.call(VHOST_USER_GET_CONFIG, encode_config(offset, bytes(size)))
        if not reply.payload:
            return b""
        access = decode_config(reply)
        return access.data

    def setup_ring(self, index: int, driver: object, *, base: int | None = None, enable: bool = True) -> None:
        """Announce a ring laid out by a driver simulator: NUM, BASE, ADDR, KICK, CALL, ENABLE.

        ``base`` defaults to a fresh ring: 0, or for a packed ring position 0 with the wrap
        counter at 1 (§2.8.1), which QEMU sends as ``0x8000``.
        """
        if base is None:
            base = 0x8000 if getattr(driver, "packed", False) else 0
        layout = driver.layout  # type: ignore[attr-defined]
        size = driver.size  # type: ignore[attr-defined]
        self._must(VHOST_USER_SET_VRING_NUM, encode_vring_state(index, size))
        self._must(VHOST_USER_SET_VRING_BASE, encode_vring_state(index, base))
        uaddr = self.ram.uaddr
        self._must(
            VHOST_USER_SET_VRING_ADDR,
            encode_vring_addr(index, uaddr(layout.desc_addr), uaddr(layout.device_addr), uaddr(layout.driver_addr)),
        )
        call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        for table, fd in ((self.call_fds, call), (self.kick_fds, kick)):
            old = table.pop(index, None)
            if old is not None:
                os.close(old)
            table[index] = fd
        self._must(VHOST_USER_SET_VRING_CALL, encode_u64(index), [call])
        self._must(VHOST_USER_SET_VRING_KICK, encode_u64(index), [kick])
        if enable:
            self._must(VHOST_USER_SET_VRING_ENABLE, encode_vring_state(index, 1))

    def _must(self, request: int, payload: bytes, fds: Sequence[int] = ()) -> None:
        if self.ack(request, payload, fds) != 0:
            raise FrontEndError(f"request {request} was refused")

    def kick(self, index: int) -> None:
        """Notify the back-end that ring ``index`` has new buffers."""
        os.eventfd_write(self.kick_fds[index], 1)

    def wait_call(self, index: int, timeout: float | None = None) -> bool:
        """Wait for (and consume) a used-buffer notification on ring ``index``."""
        fd = self.call_fds[index]
        ready, _, _ = select.select([fd], [], [], self.timeout if timeout is None else timeout)
        if not ready:
            return False
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return False
        return True

    def get_inflight_fd(self, num_queues: int, queue_size: int) -> tuple[int, InflightArea]:
        """GET_INFLIGHT_FD: the back-end's new inflight buffer (its descriptor, which the
        caller owns, and its description).

        Raises:
            FrontEndError: no descriptor came, or more than one.
        """
        reply = self.call(VHOST_USER_GET_INFLIGHT_FD, encode_inflight(0, 0, num_queues, queue_size))
        if len(reply.fds) != 1:
            for fd in reply.fds:
                os.close(fd)
            raise FrontEndError(f"GET_INFLIGHT_FD reply carries {len(reply.fds)} descriptors")
        return reply.fds[0], decode_inflight(reply)

    def set_inflight_fd(self, fd: int, area: InflightArea) -> int:
        """SET_INFLIGHT_FD with a buffer the caller keeps (a copy of ``fd`` is sent); the ack."""
        return self.ack(VHOST_USER_SET_INFLIGHT_FD,
                        encode_inflight(area.size, area.offset, area.num_queues, area.queue_size), [fd])

    def set_log_base(self, fd: int, size: int, offset: int = 0) -> Message:
        """SET_LOG_BASE with a log the caller keeps; the back-end's reply (always sent)."""
        return self.call(VHOST_USER_SET_LOG_BASE, encode_log(size, offset), [fd])

    def get_vring_base(self, index: int) -> int:
        """GET_VRING_BASE (stops the ring)."""
        reply = self.call(VHOST_USER_GET_VRING_BASE, encode_vring_state(index, 0))
        got, num = decode_vring_state(reply)
        if got != index:
            raise FrontEndError(f"GET_VRING_BASE answered for ring {got}, asked {index}")
        return num

    def close(self) -> None:
        """Close the socket and the eventfds (the RAM stays the caller's)."""
        for table in (self.kick_fds, self.call_fds):
            for fd in table.values():
                os.close(fd)
            table.clear()
        self.sock.close()


def _u64(reply: Message) -> int:
    if len(reply.payload) != U64.size:
        raise FrontEndError(f"reply payload is {len(reply.payload)} bytes, expected 8")
    return int(U64.unpack(reply.payload)[0])
