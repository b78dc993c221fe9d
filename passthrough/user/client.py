"""A vfio-user client: one connection to a device server, as a ``VfioDeviceBackend``.

Rules:

1. The connection is negotiated (``VFIO_USER_VERSION``) in the constructor; a server that
   answers with another major version, a larger minor one, malformed capabilities or
   twin-socket mode (never proposed) is refused with ``VfioUserProtocolError``. The
   proposal carries only what this client supports (the four numbers). Capabilities the
   reply adds are logged and ignored (libvfio-user's server adds ``migration``); what
   this client sends is bounded by the smaller of its own and the server's numbers.
2. Requests are synchronous and serialized by a lock. While waiting for a reply, server
   commands that arrive (``DMA_READ``/``DMA_WRITE``, vfio-user.rst "Command Concurrency")
   are served at once; ``service()`` serves them when no request is outstanding.
3. Server replies are untrusted: a reply must echo what was asked (region, offset, count,
   address) and carry exactly the announced data, otherwise ``VfioUserProtocolError``.
   Capability chains are parsed with ``passthrough.caps`` (bounded, loop-safe).
4. The server may DMA only inside windows this client mapped, with the permissions it
   granted, at most ``max_data_xfer_size`` bytes per message; anything else is answered
   with an error reply (``EFAULT``/``EPERM``/``E2BIG``), never by touching other memory.
5. Transfers larger than the server's ``max_data_xfer_size`` are split; so are eventfd
   sets larger than its ``max_msg_fds``.
6. "Message sizes": a reply whose ``argsz`` is larger than the request's is incomplete;
   the request is sent again once with that ``argsz`` (``GET_INFO``, ``GET_REGION_INFO``,
   ``GET_IRQ_INFO``, ``DEVICE_FEATURE``), and a size above ``_MAX_ARGSZ`` or a second
   larger answer is a protocol error. Region info keeps what the full reply carries: the
   capability chain (sparse mmap areas, region type) and the region's fd.
7. Migration data: ``MIG_DATA_WRITE`` is sent with ``argsz`` 8 + size (the spec allows
   any ``argsz`` from 8; libvfio-user refuses less than 8 + size), and a ``MIG_DATA_READ``
   reply is read by its ``size`` field: libvfio-user pads the data to the size asked.
"""

from __future__ import annotations

import errno
import logging
import mmap
import select
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from devmodels import MemoryRegion, UsageError

from ..backend import DeviceInfo, IrqInfo, RegionInfo
from ..caps import CapabilityChainError, parse_chain, region_type, sparse_mmap_areas
from ..defs import (
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_SET,
    VFIO_DEVICE_STATE_RESUMING,
    VFIO_DEVICE_STATE_STOP,
    VFIO_DEVICE_STATE_STOP_COPY,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_USER_DEVICE_FEATURE,
    VFIO_USER_DEVICE_GET_INFO,
    VFIO_USER_DEVICE_GET_IRQ_INFO,
    VFIO_USER_DEVICE_GET_REGION_INFO,
    VFIO_USER_DEVICE_RESET,
    VFIO_USER_DEVICE_SET_IRQS,
    VFIO_USER_DMA_MAP,
    VFIO_USER_DMA_READ,
    VFIO_USER_DMA_UNMAP,
    VFIO_USER_DMA_WRITE,
    VFIO_USER_F_DMA_REGION_READ,
    VFIO_USER_F_DMA_REGION_WRITE,
    VFIO_USER_F_ERROR,
    VFIO_USER_F_TYPE_COMMAND,
    VFIO_USER_F_TYPE_MASK,
    VFIO_USER_F_TYPE_REPLY,
    VFIO_USER_MAJOR,
    VFIO_USER_MIG_DATA_READ,
    VFIO_USER_MIG_DATA_WRITE,
    VFIO_USER_MINOR,
    VFIO_USER_REGION_READ,
    VFIO_USER_REGION_WRITE,
    VFIO_USER_VERSION,
)
from ..errors import VfioUserDisconnectedError, VfioUserError, VfioUserProtocolError
from ..layouts import (
    Layout,
    LayoutError,
    vfio_device_feature_dma_logging_control,
    vfio_device_feature_dma_logging_range,
    vfio_device_feature_dma_logging_report,
    vfio_device_feature_mig_state,
    vfio_device_feature_migration,
    vfio_irq_info,
    vfio_irq_set,
    vfio_region_info,
    vfio_user_device_info,
    vfio_user_dma_map,
    vfio_user_dma_region_access,
    vfio_user_dma_unmap,
    vfio_user_device_feature,
    vfio_user_mig_data,
    vfio_user_region_access,
)
from .framing import Message, MessageSocket, close_fds
from .negotiate import VersionCapabilities, VersionError, decode_version, encode_version, spurious_names

__all__ = ["VfioUserClient", "ClientDmaWindow"]

_log = logging.getLogger("devmodels.passthrough.vfio_user")

_MAX_ARGSZ = 1 << 16  # the largest info reply accepted (rule 6)
_MAX_MIGRATION = 64 << 20  # the most device state a save accepts
_PAYLOAD_SLACK = 4096


@dataclass(frozen=True)
class ClientDmaWindow:
    """A window of this process's memory exported to the server."""

    iova: int
    region: MemoryRegion
    readable: bool
    writable: bool

    @property
    def end(self) -> int:
        """One past the last I/O virtual address."""
        return self.iova + self.region.size


T = TypeVar("T", bound=tuple)


def _decode(layout: Layout[T], payload: bytes, what: str) -> T:
    try:
        return layout.unpack(payload)
    except LayoutError as exc:
        raise VfioUserProtocolError(f"{what}: {exc}") from None


class VfioUserClient:
    """A vfio-user connection (a ``VfioDeviceBackend``).

    Args:
        sock: a connected ``AF_UNIX`` stream socket to the server (owned from now on).
        timeout: seconds to wait for any reply before giving up (``None``: forever).
        max_data_xfer_size: the most bytes per DMA message this client accepts.
        max_msg_fds: the most fds this client accepts with one message.

    Raises:
        VfioUserProtocolError: negotiation failed (rule 1).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        timeout: float | None = 30.0,
        max_data_xfer_size: int = 1 << 20,
        max_msg_fds: int = 16,
    ) -> None:
        sock.settimeout(timeout)
        self.caps = VersionCapabilities(max_msg_fds=max_msg_fds, max_data_xfer_size=max_data_xfer_size)
        self._conn = MessageSocket(sock, max_payload=max_data_xfer_size + _PAYLOAD_SLACK, max_fds=max_msg_fds)
        self._lock = threading.RLock()
        self._next_id = 0
        self._windows: list[ClientDmaWindow] = []
        self._region_fds: dict[int, int] = {}
        self._regions: dict[int, RegionInfo] = {}
        self.closed = False
        self.server_caps = VersionCapabilities()
        self.version = (VFIO_USER_MAJOR, VFIO_USER_MINOR)
        self._negotiate()

    @classmethod
    def connect(cls, path: str, **kwargs: object) -> VfioUserClient:
        """Connect to a server listening at ``path`` and negotiate."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise VfioUserDisconnectedError(f"cannot connect to vfio-user server at {path}: {exc}") from exc
        return cls(sock, **kwargs)  # type: ignore[arg-type]

    def fileno(self) -> int:
        """The socket, for the VMM's event loop (readable: call ``service()``)."""
        return self._conn.fileno()

    def close(self) -> None:
        """Close the connection (the server then unmaps this client's windows)."""
        if self.closed:
            return
        self.closed = True
        close_fds(self._region_fds.values())
        self._region_fds.clear()
        self._conn.close()

    # -- request/reply --------------------------------------------------------------------

    def _negotiate(self) -> None:
        reply = self._request(VFIO_USER_VERSION, encode_version(VFIO_USER_MAJOR, VFIO_USER_MINOR, self.caps))
        try:
            major, minor, caps = decode_version(reply.payload)
        except VersionError as exc:
            raise VfioUserProtocolError(f"server version reply: {exc}") from None
        if major != VFIO_USER_MAJOR or minor > VFIO_USER_MINOR:
            raise VfioUserProtocolError(f"server answered version {major}.{minor} to our {VFIO_USER_MAJOR}.{VFIO_USER_MINOR}")
        if caps.twin_socket:
            raise VfioUserProtocolError("server enabled twin-socket mode, which this client did not ask for")
        if caps.max_data_xfer_size == 0:
            raise VfioUserProtocolError("server advertised a zero max_data_xfer_size")
        extra = spurious_names(self.caps, caps)
        if extra:
            _log.warning("vfio-user: the server's VERSION reply adds capabilities not proposed (ignored): %s", sorted(extra))
        self.server_caps = caps
        self.version = (major, minor)

    def _request(self, command: int, payload: bytes = b"", fds: Sequence[int] = ()) -> Message:
        with self._lock:
            if self.closed:
                raise VfioUserDisconnectedError("the vfio-user connection is closed")
            self._next_id = (self._next_id + 1) & 0xFFFF
            msg_id = self._next_id
            self._conn.send(msg_id, command, payload, flags=VFIO_USER_F_TYPE_COMMAND, fds=fds)
            while True:
                message = self._conn.recv()
                if message is None:
                    raise VfioUserDisconnectedError("the vfio-user server closed the connection")
                if message.flags & VFIO_USER_F_TYPE_MASK == VFIO_USER_F_TYPE_REPLY:
                    if message.msg_id == msg_id and message.command == command:
                        if message.is_error:
                            message.close_fds()
                            raise VfioUserError(command, message.error_no)
                        return message
                    message.close_fds()  # a reply to nothing outstanding
                    continue
                self._serve(message)

    def _request_sized(self, command: int, build: Callable[[int], bytes], argsz: int, what: str) -> Message:
        """A request with ``argsz`` semantics, sent again once if the reply needs more (rule 6)."""
        reply = self._request(command, build(argsz))
        needed = _argsz(reply.payload, what)
        if needed <= argsz:
            return reply
        reply.close_fds()
        if needed > _MAX_ARGSZ:
            raise VfioUserProtocolError(f"{what} needs argsz {needed} (more than {_MAX_ARGSZ})")
        reply = self._request(command, build(needed))
        if _argsz(reply.payload, what) > needed:
            reply.close_fds()
            raise VfioUserProtocolError(f"{what} asked for argsz {needed} and then for more")
        return reply

    def service(self) -> int:
        """Serve server commands already waiting on the socket; return how many."""
        served = 0
        with self._lock:
            while not self.closed:
                ready, _, _ = select.select([self._conn.fileno()], [], [], 0)
                if not ready:
                    break
                message = self._conn.recv()
                if message is None:
                    raise VfioUserDisconnectedError("the vfio-user server closed the connection")
                if message.flags & VFIO_USER_F_TYPE_MASK == VFIO_USER_F_TYPE_REPLY:
                    message.close_fds()
                    continue
                self._serve(message)
                served += 1
        return served

    # -- server commands (rule 4) ---------------------------------------------------------

    def _serve(self, message: Message) -> None:
        message.close_fds()
        try:
            payload = self._serve_dma(message)
        except _Refuse as exc:
            if not message.no_reply:
                self._conn.send(
                    message.msg_id, message.command, flags=VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR, error_no=exc.errno
                )
            return
        if not message.no_reply:
            self._conn.send(message.msg_id, message.command, payload, flags=VFIO_USER_F_TYPE_REPLY)

    def _serve_dma(self, message: Message) -> bytes:
        if message.command not in (VFIO_USER_DMA_READ, VFIO_USER_DMA_WRITE) or message.fds:
            raise _Refuse(errno.EINVAL)
        try:
            access = vfio_user_dma_region_access.unpack(message.payload)
        except LayoutError:
            raise _Refuse(errno.EINVAL) from None
        data = message.payload[vfio_user_dma_region_access.size :]
        if access.count > self.caps.max_data_xfer_size:
            raise _Refuse(errno.E2BIG)
        window = self._window_for(access.address, access.count)
        if window is None:
            raise _Refuse(errno.EFAULT)
        start = access.address - window.iova
        buffer = window.region.buffer
        if message.command == VFIO_USER_DMA_READ:
            if data or not window.readable:
                raise _Refuse(errno.EINVAL if data else errno.EPERM)
            return message.payload[: vfio_user_dma_region_access.size] + bytes(buffer[start : start + access.count])
        if len(data) != access.count:
            raise _Refuse(errno.EINVAL)
        if not window.writable or window.region.readonly:
            raise _Refuse(errno.EPERM)
        buffer[start : start + access.count] = data
        return message.payload[: vfio_user_dma_region_access.size]

    def _window_for(self, address: int, count: int) -> ClientDmaWindow | None:
        for window in self._windows:
            if window.iova <= address and address + count <= window.end:
                return window
        return None

    # -- VfioDeviceBackend ----------------------------------------------------------------

    def device_info(self) -> DeviceInfo:
        """``VFIO_USER_DEVICE_GET_INFO``."""
        reply = self._request_sized(
            VFIO_USER_DEVICE_GET_INFO, lambda argsz: vfio_user_device_info.pack(argsz, 0, 0, 0),
            vfio_user_device_info.size, "DEVICE_GET_INFO reply",
        )
        reply.close_fds()
        info = _decode(vfio_user_device_info, reply.payload, "DEVICE_GET_INFO reply")
        return DeviceInfo(info.flags, info.num_regions, info.num_irqs)

    def region_info(self, index: int) -> RegionInfo:
        """``VFIO_USER_DEVICE_GET_REGION_INFO`` (rule 6: retried with the ``argsz`` announced)."""
        cached = self._regions.get(index)
        if cached is not None:
            return cached
        reply = self._request_sized(
            VFIO_USER_DEVICE_GET_REGION_INFO, lambda argsz: vfio_region_info.pack(argsz, 0, index, 0, 0, 0),
            vfio_region_info.size, "DEVICE_GET_REGION_INFO reply",
        )
        info = _decode(vfio_region_info, reply.payload, "DEVICE_GET_REGION_INFO reply")
        if info.index != index:
            reply.close_fds()
            raise VfioUserProtocolError(f"asked for region {index}, got {info.index}")
        try:
            caps = (
                parse_chain(reply.payload, info.cap_offset, vfio_region_info.size)
                if info.flags & VFIO_REGION_INFO_FLAG_CAPS
                else []
            )
            sparse = sparse_mmap_areas(caps)
            kind = region_type(caps)
        except CapabilityChainError as exc:
            reply.close_fds()
            raise VfioUserProtocolError(f"region {index} capabilities: {exc}") from None
        fds = list(reply.fds)
        if info.flags & VFIO_REGION_INFO_FLAG_MMAP and fds:
            old = self._region_fds.pop(index, None)
            if old is not None:
                close_fds([old])
            self._region_fds[index] = fds.pop(0)
        close_fds(fds)
        flags = info.flags if index in self._region_fds else info.flags & ~VFIO_REGION_INFO_FLAG_MMAP
        result = RegionInfo(
            index, flags, info.size, info.offset,
            tuple((a.offset, a.size) for a in sparse) if sparse is not None else None, kind,
        )
        self._regions[index] = result
        return result

    def irq_info(self, index: int) -> IrqInfo:
        """``VFIO_USER_DEVICE_GET_IRQ_INFO``."""
        reply = self._request_sized(
            VFIO_USER_DEVICE_GET_IRQ_INFO, lambda argsz: vfio_irq_info.pack(argsz, 0, index, 0),
            vfio_irq_info.size, "DEVICE_GET_IRQ_INFO reply",
        )
        reply.close_fds()
        info = _decode(vfio_irq_info, reply.payload, "DEVICE_GET_IRQ_INFO reply")
        if info.index != index:
            raise VfioUserProtocolError(f"asked for IRQ index {index}, got {info.index}")
        return IrqInfo(index, info.flags, info.count)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        """``VFIO_USER_REGION_READ`` (split per rule 5, checked per rule 3)."""
        out = bytearray()
        step = self.server_caps.max_data_xfer_size
        for pos in range(offset, offset + size, step):
            count = min(step, offset + size - pos)
            reply = self._request(VFIO_USER_REGION_READ, vfio_user_region_access.pack(pos, index, count))
            reply.close_fds()
            echo = _decode(vfio_user_region_access, reply.payload, "REGION_READ reply")
            data = reply.payload[vfio_user_region_access.size :]
            if (echo.offset, echo.region, echo.count) != (pos, index, count) or len(data) != count:
                raise VfioUserProtocolError(f"REGION_READ reply does not match region {index} [{pos:#x}, +{count})")
            out += data
        return bytes(out)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """``VFIO_USER_REGION_WRITE`` (split per rule 5)."""
        step = self.server_caps.max_data_xfer_size
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            reply = self._request(
                VFIO_USER_REGION_WRITE, vfio_user_region_access.pack(offset + start, index, len(chunk)) + chunk
            )
            reply.close_fds()
            echo = _decode(vfio_user_region_access, reply.payload, "REGION_WRITE reply")
            if (echo.offset, echo.region) != (offset + start, index):
                raise VfioUserProtocolError(f"REGION_WRITE reply does not match region {index}")

    def region_mmap(self, index: int, offset: int, size: int) -> mmap.mmap | None:
        """Map part of a region the server shared an fd for, or ``None``."""
        info = self.region_info(index)
        fd = self._region_fds.get(index)
        if fd is None or not info.mappable or offset < 0 or offset + size > info.size:
            return None
        try:
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, offset=info.offset + offset)
        except (OSError, ValueError):
            return None

    def set_irqs(
        self, index: int, flags: int, start: int, count: int, data: bytes = b"", fds: Sequence[int] = ()
    ) -> None:
        """``VFIO_USER_DEVICE_SET_IRQS`` (eventfds split into ``max_msg_fds`` chunks)."""
        if flags & VFIO_IRQ_SET_DATA_EVENTFD and len(fds) > self.server_caps.max_msg_fds:
            step = self.server_caps.max_msg_fds
            for first in range(0, len(fds), step):
                part = fds[first : first + step]
                self.set_irqs(index, flags, start + first, len(part), fds=part)
            return
        payload = vfio_irq_set.pack(vfio_irq_set.size + len(data), flags, index, start, count) + data
        self._request(VFIO_USER_DEVICE_SET_IRQS, payload, fds=fds).close_fds()

    def reset(self) -> None:
        """``VFIO_USER_DEVICE_RESET``."""
        self._request(VFIO_USER_DEVICE_RESET).close_fds()

    def dma_map(self, region: MemoryRegion, iova: int, *, readable: bool = True, writable: bool = True) -> None:
        """``VFIO_USER_DMA_MAP``: share ``region`` by fd if it has one, else by messages.

        Raises:
            UsageError: the window overlaps one already mapped.
        """
        for other in self._windows:
            if other.iova < iova + region.size and iova < other.end:
                raise UsageError(f"DMA window [{iova:#x}, +{region.size:#x}) overlaps [{other.iova:#x}, +{other.region.size:#x})")
        flags = (VFIO_USER_F_DMA_REGION_READ if readable else 0) | (VFIO_USER_F_DMA_REGION_WRITE if writable else 0)
        fds = [region.fd] if region.fd is not None else []
        offset = region.fd_offset if fds else 0
        payload = vfio_user_dma_map.pack(vfio_user_dma_map.size, flags, offset, iova, region.size)
        window = ClientDmaWindow(iova, region, readable, writable)
        self._windows.append(window)  # before the request: the server may DMA at once
        try:
            self._request(VFIO_USER_DMA_MAP, payload, fds=fds).close_fds()
        except BaseException:
            self._windows.remove(window)
            raise

    def dma_unmap(self, iova: int, size: int) -> None:
        """``VFIO_USER_DMA_UNMAP`` of a window mapped here."""
        window = next((w for w in self._windows if w.iova == iova and w.region.size == size), None)
        if window is None:
            raise UsageError(f"no DMA window [{iova:#x}, +{size:#x}) is mapped")
        reply = self._request(VFIO_USER_DMA_UNMAP, vfio_user_dma_unmap.pack(vfio_user_dma_unmap.size, 0, iova, size))
        reply.close_fds()
        self._windows.remove(window)

    # -- migration (vfio-user.rst "VFIO_USER_DEVICE_FEATURE", "MIG_DATA_READ/WRITE") -------

    def device_feature(self, flags: int, data: bytes = b"", reply_room: int = 64) -> bytes:
        """``VFIO_USER_DEVICE_FEATURE``; return the reply's data (after argsz/flags).

        ``argsz`` is 8 + the larger of ``len(data)`` and ``reply_room`` (the data a GET
        expects back); a reply announcing more is asked again once (rule 6).
        """
        head = vfio_user_device_feature.size
        reply = self._request_sized(
            VFIO_USER_DEVICE_FEATURE, lambda argsz: vfio_user_device_feature.pack(argsz, flags) + data,
            head + max(len(data), reply_room), "DEVICE_FEATURE reply",
        )
        reply.close_fds()
        _decode(vfio_user_device_feature, reply.payload, "DEVICE_FEATURE reply")
        return reply.payload[head:]

    # -- DMA dirty-page logging (vfio-user.rst "VFIO_DEVICE_FEATURE_DMA_LOGGING_*") -------

    def dma_logging_start(self, ranges: Sequence[tuple[int, int]], page_size: int = 4096) -> int:
        """Start logging device DMA writes to ``(iova, length)`` ranges (none: every window).

        Returns the page size the server chose.
        """
        data = vfio_device_feature_dma_logging_control.pack(page_size, len(ranges))
        data += b"".join(vfio_device_feature_dma_logging_range.pack(iova, length) for iova, length in ranges)
        reply = self.device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, data, 0)
        return _decode(vfio_device_feature_dma_logging_control, reply, "DMA_LOGGING_START reply").page_size

    def dma_logging_stop(self) -> None:
        """Stop DMA logging."""
        data = vfio_device_feature_dma_logging_control.pack(0, 0)
        self.device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, data, 0)

    def dma_logging_report(self, iova: int, length: int, page_size: int = 4096) -> bytes:
        """The dirty bitmap of ``[iova, iova+length)`` (bit *i*: page *i*), read and cleared.

        Raises:
            VfioUserProtocolError: the reply does not echo the request or its bitmap is short.
        """
        pages = -(-length // page_size) if page_size > 0 else 0
        bitmap_bytes = -(-pages // 64) * 8
        request = vfio_device_feature_dma_logging_report.pack(iova, length, page_size)
        reply = self.device_feature(
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, request, len(request) + bitmap_bytes
        )
        if reply[: len(request)] != request or len(reply) < len(request) + bitmap_bytes:
            raise VfioUserProtocolError("DMA_LOGGING_REPORT reply does not match its request")
        return reply[len(request) : len(request) + bitmap_bytes]

    def migration_flags(self) -> int:
        """``VFIO_DEVICE_FEATURE_MIGRATION`` flags (``VfioUserError`` if unsupported)."""
        data = self.device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION)
        return _decode(vfio_device_feature_migration, data, "migration feature").flags

    def migration_state(self) -> int:
        """The device's ``vfio_device_mig_state``."""
        data = self.device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
        return _decode(vfio_device_feature_mig_state, data, "migration state").device_state

    def set_migration_state(self, state: int) -> None:
        """Move the device's migration FSM to ``state``."""
        self.device_feature(
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, vfio_device_feature_mig_state.pack(state, -1)
        )

    def save_device_state(self) -> bytes:
        """STOP_COPY, read all migration data, STOP; return the data.

        Raises:
            VfioUserProtocolError: the server sends more than 64 MiB or a malformed reply.
        """
        self.set_migration_state(VFIO_DEVICE_STATE_STOP_COPY)
        out = bytearray()
        step = min(self.server_caps.max_data_xfer_size, self.caps.max_data_xfer_size)
        while True:
            reply = self._request(VFIO_USER_MIG_DATA_READ, vfio_user_mig_data.pack(vfio_user_mig_data.size + step, step))
            reply.close_fds()
            header = _decode(vfio_user_mig_data, reply.payload, "MIG_DATA_READ reply")
            data = reply.payload[vfio_user_mig_data.size :]
            # rule 7: ``size`` says how much is data; padding up to the size asked may follow.
            if header.size > step or len(data) < header.size or len(data) > step:
                raise VfioUserProtocolError(
                    f"MIG_DATA_READ reply: size {header.size} with {len(data)} data bytes for {step} asked"
                )
            chunk = data[: header.size]
            out += chunk
            if len(out) > _MAX_MIGRATION:
                raise VfioUserProtocolError(f"migration data exceeds {_MAX_MIGRATION} bytes")
            if len(chunk) < step:  # vfio-user.rst: less than asked means no more data
                break
        self.set_migration_state(VFIO_DEVICE_STATE_STOP)
        return bytes(out)

    def load_device_state(self, data: bytes) -> None:
        """RESUMING, write ``data``, STOP (the server restores the device then)."""
        self.set_migration_state(VFIO_DEVICE_STATE_RESUMING)
        step = self.server_caps.max_data_xfer_size
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            payload = vfio_user_mig_data.pack(vfio_user_mig_data.size + len(chunk), len(chunk)) + chunk  # rule 7
            self._request(VFIO_USER_MIG_DATA_WRITE, payload).close_fds()
        self.set_migration_state(VFIO_DEVICE_STATE_STOP)

    @property
    def windows(self) -> tuple[ClientDmaWindow, ...]:
        """The DMA windows currently exported."""
        return tuple(self._windows)


def _argsz(payload: bytes, what: str) -> int:
    """The ``argsz`` a reply starts with."""
    if len(payload) < 4:
        raise VfioUserProtocolError(f"{what}: {len(payload)} bytes, no argsz")
    return int.from_bytes(payload[:4], "little")


class _Refuse(Exception):
    def __init__(self, code: int) -> None:
        self.errno = code
