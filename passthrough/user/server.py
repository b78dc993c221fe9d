"""A vfio-user server: any devmodels ``PciFunction`` served to a vfio-user client (a VMM).

Regions (vfio-pci's fixed layout, ``linux/vfio.h``): 0–5 are the function's BARs
(``bar_read``/``bar_write`` at offsets), 6 (ROM) and 8 (VGA) are absent (size 0), 7 is
config space (``config_read``/``config_write``). IRQ indexes: INTx, MSI, MSI-X with the
function's vector counts, ERR and REQ with one eventfd each (``irqs.ServerInterrupts``).
DMA windows from the client become regions of the device's ``GuestMemory``
(``dma.DmaTable``).

Rules:

1. Every command is answered from a table (``_HANDLERS``); before ``VFIO_USER_VERSION``
   only ``VERSION`` is accepted, after it ``VERSION`` is refused. ``VERSION`` is answered
   by ``negotiate.negotiate``: only capabilities the client proposed, each number the
   smaller of ours and the proposal. The negotiated values (``limits``) are enforced for
   the rest of the connection: fds per message, bytes per transfer, DMA windows (how many,
   and in whole pages of the smallest negotiated page size).
2. Client input is untrusted (vfio-user.rst "Security Considerations"): a malformed or
   invalid command gets an error reply with an errno (``VfioUserReject``), the fds it
   carried are closed, and the server carries on. Only a header that breaks the framing
   (``msg_size`` below 16 or above the limit) ends the connection, after an error reply.
   Nothing the client sends raises out of ``serve``. Every refusal, of a negotiation, a
   command or the stream, is traced and logged at WARNING with its reason (the first
   ``_LOG_EACH`` of each kind per connection; the rest are counted and the count logged
   at disconnect), never silent.
3. All work is bounded: a region access moves at most ``max_data_xfer_size`` bytes, split
   into naturally aligned 1/2/4/8-byte accesses (1/2/4 for config space) exactly as the
   core bus splits guest accesses, whatever the size and alignment the client sends.
   ``REGION_WRITE_MULTI`` (offered as ``write_multiple``) is a list of such writes of
   at most 8 bytes each, applied in order; a bad entry stops the list there with an error.
4. ``argsz`` in a request is the largest reply payload the client accepts (vfio-user.rst
   "Message sizes"); a value below the fixed structure is ``EINVAL``, as is one claiming
   more request bytes than were sent for the commands where it sizes the request.
5. Writes the client makes to the MSI and MSI-X capabilities and to the MSI-X table/PBA
   are dropped: the server programs those itself from ``SET_IRQS`` (see ``irqs``), as
   kernel vfio-pci virtualizes them.
6. Client disconnection (vfio-user.rst "Client Disconnection"; tested by a second client
   connecting after the first went away). Dropped: every DMA window (unmapped, its fd
   closed), every IRQ eventfd (INTx/MSI/MSI-X/ERR/REQ; the MSI/MSI-X capability the server
   programmed is disabled again), the negotiated capabilities (the next client starts
   with ``VFIO_USER_VERSION``), DMA dirty logging, a migration data session in progress
   (``STOP_COPY``/``RESUMING`` fall back to ``STOP``), queued commands. Kept: the device
   itself, registers, config space, internal state, the migration state otherwise. A
   device DMA after the disconnect faults (``GuestMemoryError``) as any DMA outside RAM.
7. Device DMA to windows without an fd goes out as ``VFIO_USER_DMA_READ``/``DMA_WRITE``
   on the same socket; commands that arrive while the server waits for their replies are
   queued (at most ``_MAX_QUEUED``) and run afterwards in order.
8. Migration (``DEVICE_FEATURE``, ``MIG_DATA_READ``/``WRITE``) goes through the device's
   snapshot contract; see ``migration``. ``MIG_DATA_WRITE`` takes any ``argsz`` from the
   fixed 8 bytes up (libvfio-user sends 8 + size, the spec's minimum is 8). A
   ``MIG_DATA_READ`` reply carries the data in ``argsz``/``size`` and is zero-padded to
   the size asked, as libvfio-user's server sends it: libvfio-user's client takes a reply
   of any other length for a broken connection, and a client reading ``size`` (ours,
   the spec's) is indifferent to the padding. DMA dirty
   logging is ``DEVICE_FEATURE`` too (``features``). The older ``DMA_UNMAP``
   ``GET_DIRTY_BITMAP`` flag is no longer in the spec ("flags is unused" but for
   ``VFIO_DMA_UNMAP_FLAG_ALL``, which QEMU sends and which unmaps every window) and is
   refused with ``ENOTSUP``.
9. ``VFIO_USER_DEVICE_RESET`` resets the device; DMA windows and eventfds stay wired (the
   MSI/MSI-X programming is re-applied), the migration state returns to ``RUNNING``.
10. A device model that raises while handling a command has failed in an unknown state:
    the command gets ``EIO`` and the server signals the ERR eventfd (``report_error``),
    vfio-pci's unrecoverable-error notification.
11. Served on an event loop (``serve(sock, loop=..., runner=...)``), the socket is one
    reader beside the device's own descriptors and timers (``devmodels.runtime``): the
    ``DeviceRunner`` serving the same device catches its clock up before each message and
    runs its posted work after it — after the reply, or right away for a posted
    (``NO_REPLY``) region write.
12. ``stats`` counts what the server handled (``ServerStats``: every message received,
    BAR and config accesses, posted writes, the DMA messages it sent), for stats lines
    and benchmarks; a disconnect does not clear them. The ``vfio_user.access`` trace event
    names each region access (region, offset, count, read/write/posted): which registers
    a driver's exits are.
"""

from __future__ import annotations

import collections
import errno
import logging
import mmap
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from devmodels import GuestMemory, GuestMemoryError, trace
from devmodels.pci import defs as pcidefs, PciFunction
from devmodels.runtime import DeviceRunner, EventLoop

from ..defs import (
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_RESET,
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
    VFIO_USER_COMMAND_NAMES,
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
    VFIO_USER_F_ERROR,
    VFIO_USER_F_TYPE_COMMAND,
    VFIO_USER_F_TYPE_MASK,
    VFIO_USER_F_TYPE_REPLY,
    VFIO_USER_MAJOR,
    VFIO_USER_MIG_DATA_READ,
    VFIO_USER_MIG_DATA_WRITE,
    VFIO_USER_MINOR,
    VFIO_USER_MULTI_DATA,
    VFIO_USER_REGION_READ,
    VFIO_USER_REGION_WRITE,
    VFIO_USER_REGION_WRITE_MULTI,
    VFIO_USER_VERSION,
)
from ..errors import VfioUserDisconnectedError, VfioUserReject
from ..layouts import (
    Layout,
    LayoutError,
    vfio_irq_info,
    vfio_irq_set,
    vfio_region_info,
    vfio_user_device_info,
    vfio_user_dma_map,
    vfio_user_dma_region_access,
    vfio_user_dma_unmap,
    vfio_user_mig_data,
    vfio_user_region_access,
    vfio_user_write_multi_count,
    vfio_user_write_multi_entry,
)
from .dma import DmaMemory, DmaTable
from .features import DeviceFeatures
from .framing import Message, MessageSocket, VfioUserFramingError
from .irqs import ServerInterrupts
from .migration import MigrationStateMachine
from .negotiate import VersionCapabilities, VersionError, decode_version, encode_version, negotiate

__all__ = ["ServerStats", "VfioUserServer", "access_pieces"]

_log = logging.getLogger("devmodels.passthrough.vfio_user")
_tp_reject = trace.tracepoint("vfio_user.reject")
_tp_negotiated = trace.tracepoint("vfio_user.negotiated")
_tp_stream = trace.tracepoint("vfio_user.stream_error")
_tp_device_error = trace.tracepoint("vfio_user.device_error")
_tp_command = trace.tracepoint("vfio_user.command")
_tp_dropped_write = trace.tracepoint("vfio_user.dropped_write")
_tp_access = trace.tracepoint("vfio_user.access")  # every region access (rule 12), for exit breakdowns

T = TypeVar("T", bound=tuple)

_MAX_QUEUED = 64
_PAYLOAD_SLACK = 4096  # room above max_data_xfer_size for fixed structures and IRQ bools
_LOG_EACH = 8  # refusals of one kind logged per connection before they are only counted (rule 2)
# Page sizes a DMA window may use: any power of two the host can mmap (fd offsets must be
# page aligned, dma rule 3), as the "pgsizes" mask of vfio-user.rst "VFIO_USER_VERSION".
SERVER_PGSIZES = ~(mmap.PAGESIZE - 1) & ((1 << 64) - 1)


def access_pieces(offset: int, count: int, widest: int) -> list[tuple[int, int]]:
    """Split ``[offset, offset+count)`` into naturally aligned accesses of at most ``widest``."""
    pieces = []
    pos, end = offset, offset + count
    while pos < end:
        size = widest
        while size > 1 and (pos % size or pos + size > end):
            size //= 2
        pieces.append((pos, size))
        pos += size
    return pieces


def _unpack(layout: Layout[T], payload: bytes) -> T:
    try:
        return layout.unpack(payload)
    except LayoutError as exc:
        raise VfioUserReject(errno.EINVAL, str(exc)) from None


def _check_argsz(argsz: int, fixed: int, name: str) -> None:
    if argsz < fixed:
        raise VfioUserReject(errno.EINVAL, f"{name}: argsz {argsz} is smaller than the {fixed}-byte structure")


@dataclass
class ServerStats:
    """What the server handled (rule 12): every message received (``messages``), region
    accesses by kind (a ``REGION_WRITE_MULTI`` counts each write in it), the writes among
    them the client posted (``NO_REPLY``), and the ``DMA_READ``/``DMA_WRITE`` messages the
    server sent."""

    messages: int = 0
    bar_reads: int = 0
    bar_writes: int = 0
    config_reads: int = 0
    config_writes: int = 0
    posted_writes: int = 0
    write_multi: int = 0
    dma_messages: int = 0


class VfioUserServer:
    """Serves ``function`` to one vfio-user client at a time.

    Args:
        function: the PCI function (its INTx and MSI sinks are taken over).
        memory: the memory the function's DMA uses; client DMA windows are mapped into it
            (pass a ``DmaMemory`` to also accept windows without an fd).
        reset: what ``VFIO_USER_DEVICE_RESET`` calls; default ``function.reset()`` if the
            device defines one, else ``function.reset_function()``.
        max_data_xfer_size: the largest region/DMA transfer accepted (offered; the
            client's proposal may lower it, rule 1).
        max_dma_maps: the most DMA windows at once (offered, may be lowered).
        max_msg_fds: the most fds accepted with one message (offered, may be lowered).
    """

    def __init__(
        self,
        function: PciFunction,
        memory: GuestMemory,
        *,
        reset: Callable[[], None] | None = None,
        max_data_xfer_size: int = 1 << 20,
        max_dma_maps: int = 1024,
        max_msg_fds: int = 64,
    ) -> None:
        function.realize()
        self.function = function
        self.memory = memory
        self.irqs = ServerInterrupts(function)
        self.dma = DmaTable(memory, max_dma_maps)
        self.migration = MigrationStateMachine(function, after_restore=self.irqs.reapply)
        self.features = DeviceFeatures(self.migration, memory, lambda: self.dma.windows)
        default_reset = getattr(function, "reset", None)
        self._reset: Callable[[], None] = reset or (default_reset if callable(default_reset) else function.reset_function)
        self.caps = VersionCapabilities(
            max_msg_fds=max_msg_fds, max_data_xfer_size=max_data_xfer_size, max_dma_maps=max_dma_maps,
            pgsizes=SERVER_PGSIZES, write_multiple=True,
        )
        self.client_caps = VersionCapabilities()
        self.limits = self.caps  # the negotiated values once VERSION is done (rule 1)
        self.negotiated = False
        self._refusals: collections.Counter[tuple[int, int]] = collections.Counter()
        self._conn: MessageSocket | None = None
        self._queued: collections.deque[Message] = collections.deque()
        self._next_id = 0
        self._closing = False
        self.rejected = 0
        self.stats = ServerStats()
        self._handlers: dict[int, Callable[[Message], tuple[bytes, list[int]]]] = {
            VFIO_USER_VERSION: self._version,
            VFIO_USER_DMA_MAP: self._dma_map,
            VFIO_USER_DMA_UNMAP: self._dma_unmap,
            VFIO_USER_DEVICE_GET_INFO: self._device_info,
            VFIO_USER_DEVICE_GET_REGION_INFO: self._region_info,
            VFIO_USER_DEVICE_GET_IRQ_INFO: self._irq_info,
            VFIO_USER_DEVICE_SET_IRQS: self._set_irqs,
            VFIO_USER_REGION_READ: self._region_read,
            VFIO_USER_REGION_WRITE: self._region_write,
            VFIO_USER_REGION_WRITE_MULTI: self._region_write_multi,
            VFIO_USER_DEVICE_RESET: self._device_reset,
            VFIO_USER_DEVICE_FEATURE: self._device_feature,
            VFIO_USER_MIG_DATA_READ: self._mig_data_read,
            VFIO_USER_MIG_DATA_WRITE: self._mig_data_write,
        }

    # -- connection -----------------------------------------------------------------------

    def serve(self, sock: socket.socket, *, loop: EventLoop | None = None, runner: DeviceRunner | None = None) -> None:
        """Serve one client on a connected socket until it disconnects (rules 2, 6, 11).

        With ``loop``, the socket is one reader of that event loop, so the device's own
        descriptors and timers (``runner``, serving the same device) run beside it (rule 11).
        The socket is closed on return.
        """
        conn = MessageSocket(
            sock, max_payload=self.caps.max_data_xfer_size + _PAYLOAD_SLACK, max_fds=self.caps.max_msg_fds
        )
        self._conn = conn
        self._closing = False
        self.negotiated = False
        self.client_caps = VersionCapabilities()
        if isinstance(self.memory, DmaMemory):
            self.memory.channel = self
        try:
            if loop is None:
                while not self._closing:
                    self._serve_next(conn, runner)
            else:
                fd = conn.fileno()
                loop.add_reader(fd, lambda: self._serve_next(conn, runner))
                try:
                    loop.run(until=lambda: self._closing)
                finally:
                    loop.remove_reader(fd)
        except VfioUserFramingError as exc:
            self._refuse_stream(exc, conn)
        except VfioUserDisconnectedError:
            pass
        finally:
            self._disconnect()

    def _serve_next(self, conn: MessageSocket, runner: DeviceRunner | None) -> None:
        """Receive and handle one message, then any queued while a DMA reply was due (rule 7);
        the runner's hooks run around them (rule 11)."""
        message = self._queued.popleft() if self._queued else conn.recv()
        if message is None:
            self._closing = True
            return
        if runner is not None:
            runner.before_access()
        self.dispatch(message)
        while self._queued and not self._closing:
            self.dispatch(self._queued.popleft())
        if runner is not None:
            runner.after_access()

    def serve_forever(self, listener: socket.socket) -> None:
        """Accept clients on a listening socket one after the other (until it is closed)."""
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            self.serve(sock)

    def shutdown(self) -> None:
        """Make ``serve`` return soon (from another thread)."""
        self._closing = True
        if self._conn is not None:
            try:
                self._conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _refuse_stream(self, exc: VfioUserFramingError, conn: MessageSocket) -> None:
        """A header broke the framing (rule 2): say why, answer it if it can be, then close."""
        _log.warning("vfio-user: closing the connection: %s", exc)
        if _tp_stream.on:
            _tp_stream.emit(reason=str(exc))
        if exc.header is not None:
            too_big = exc.header.msg_size > conn.max_payload
            self._send_error(exc.header.msg_id, exc.header.command, errno.E2BIG if too_big else errno.EINVAL, str(exc))

    def _disconnect(self) -> None:
        """Drop what belongs to the client, keep the device (rule 6)."""
        windows = len(self.dma.windows)
        if isinstance(self.memory, DmaMemory):
            self.memory.channel = None
        self.features.stop_logging()
        self.dma.clear()
        self.irqs.close()
        self.migration.abandon()
        while self._queued:
            self._queued.popleft().close_fds()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        unlogged = sum(n - _LOG_EACH for n in self._refusals.values() if n > _LOG_EACH)
        if unlogged:
            _log.warning("vfio-user: %d more refusals were not logged one by one: %s", unlogged, self._refusal_summary())
        _log.info("vfio-user: client gone (%d DMA windows unmapped, %d commands refused)", windows, sum(self._refusals.values()))
        self._refusals.clear()
        self.negotiated = False
        self.limits = self.caps
        self.dma.max_windows = self.caps.max_dma_maps

    def _refusal_summary(self) -> str:
        return ", ".join(
            f"{VFIO_USER_COMMAND_NAMES.get(command, command)}/{errno.errorcode.get(code, code)} x{n}"
            for (command, code), n in sorted(self._refusals.items())
        )

    # -- dispatch -------------------------------------------------------------------------

    def dispatch(self, message: Message) -> None:
        """Handle one received message and send its reply (rules 1, 2)."""
        self.stats.messages += 1
        kind = message.flags & VFIO_USER_F_TYPE_MASK
        if kind == VFIO_USER_F_TYPE_REPLY:
            message.close_fds()  # a reply to nothing we asked: drop it
            self._reject(message, VfioUserReject(errno.EINVAL, "unsolicited reply"), reply=False)
            return
        if _tp_command.on:
            _tp_command.emit(command=VFIO_USER_COMMAND_NAMES.get(message.command, message.command), msg_id=message.msg_id)
        kept: list[int] = []
        try:
            if kind != VFIO_USER_F_TYPE_COMMAND:
                raise VfioUserReject(errno.EINVAL, f"message type {kind} is neither command nor reply")
            if message.fds_truncated:
                raise VfioUserReject(errno.EINVAL, f"more than {self.limits.max_msg_fds} file descriptors (max_msg_fds)")
            handler = self._handlers.get(message.command)
            if handler is None:
                if message.command in (VFIO_USER_DMA_READ, VFIO_USER_DMA_WRITE):
                    raise VfioUserReject(errno.EINVAL, "DMA_READ/DMA_WRITE go from server to client")
                raise VfioUserReject(errno.ENOTSUP, f"command {message.command} is not supported")
            if not self.negotiated and message.command != VFIO_USER_VERSION:
                raise VfioUserReject(errno.EINVAL, "VFIO_USER_VERSION must come first")
            payload, kept = handler(message)
        except VfioUserReject as exc:
            self._reject(message, exc)
            return
        except Exception as exc:  # a device model bug must not kill the server (rules 2, 10)
            _log.exception("vfio-user %s handler failed", message.command)
            # ERR before the reply: a client that sees the EIO has the notification too.
            self.report_error(f"{VFIO_USER_COMMAND_NAMES.get(message.command, message.command)} raised {exc!r}")
            self._reject(message, VfioUserReject(errno.EIO, f"internal error: {exc!r}"))
            return
        finally:
            if message.fds:
                message.close_fds(keep=kept)
        if not message.no_reply:
            self._send(message.msg_id, message.command, payload, flags=VFIO_USER_F_TYPE_REPLY)

    def _reject(self, message: Message, exc: VfioUserReject, reply: bool = True) -> None:
        self.rejected += 1
        if _tp_reject.on:
            _tp_reject.emit(command=message.command, msg_id=message.msg_id, errno=exc.errno, reason=exc.reason)
        kind = (message.command, exc.errno)
        self._refusals[kind] += 1
        seen = self._refusals[kind]
        if seen <= _LOG_EACH:
            name = VFIO_USER_COMMAND_NAMES.get(message.command, f"command {message.command}")
            more = " (further refusals of this kind are counted, not logged)" if seen == _LOG_EACH else ""
            _log.warning("vfio-user: refused %s (msg %#x): %s%s", name, message.msg_id, exc, more)
        if reply and not message.no_reply:
            self._send_error(message.msg_id, message.command, exc.errno, exc.reason)

    def _send_error(self, msg_id: int, command: int, error_no: int, reason: str) -> None:
        self._send(msg_id, command, b"", flags=VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR, error_no=error_no)

    def _send(self, msg_id: int, command: int, payload: bytes, *, flags: int, error_no: int = 0) -> None:
        if self._conn is None:
            return
        try:
            self._conn.send(msg_id, command, payload, flags=flags, error_no=error_no)
        except VfioUserDisconnectedError:
            self._closing = True

    # -- handlers -------------------------------------------------------------------------

    def _version(self, message: Message) -> tuple[bytes, list[int]]:
        if self.negotiated:
            raise VfioUserReject(errno.EINVAL, "version already negotiated")
        if message.fds:
            raise VfioUserReject(errno.EINVAL, "VFIO_USER_VERSION carries no file descriptors")
        try:
            major, minor, caps = decode_version(message.payload)
        except VersionError as exc:
            raise VfioUserReject(errno.EINVAL, f"malformed VERSION: {exc}") from None
        if major != VFIO_USER_MAJOR:
            # vfio-user.rst: the server "closes the connection if it cannot support the
            # advertised version"; the error reply tells the client why first.
            self._closing = True
            raise VfioUserReject(errno.ENOTSUP, f"major version {major} is not {VFIO_USER_MAJOR}")
        try:
            limits = negotiate(self.caps, caps)
        except VersionError as exc:
            raise VfioUserReject(errno.EINVAL, f"cannot agree on capabilities: {exc}") from None
        self._apply_limits(limits)
        self.client_caps = caps
        self.negotiated = True
        version = (VFIO_USER_MAJOR, min(minor, VFIO_USER_MINOR))
        _log.info("vfio-user: version %d.%d negotiated: %s", *version, limits.to_json()["capabilities"])
        if _tp_negotiated.on:
            _tp_negotiated.emit(
                major=version[0], minor=version[1], proposed=sorted(caps.names or ()), max_msg_fds=limits.max_msg_fds,
                max_data_xfer_size=limits.max_data_xfer_size, max_dma_maps=limits.max_dma_maps, pgsizes=limits.pgsizes,
            )
        return encode_version(*version, limits), []

    def _apply_limits(self, limits: VersionCapabilities) -> None:
        """Enforce the negotiated values from now on (rule 1)."""
        self.limits = limits
        self.dma.max_windows = limits.max_dma_maps
        if self._conn is not None:
            self._conn.max_fds = limits.max_msg_fds

    def _device_info(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        request = _unpack(vfio_user_device_info, message.payload)
        _check_argsz(request.argsz, vfio_user_device_info.size, "DEVICE_GET_INFO")
        flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET
        reply = vfio_user_device_info.pack(vfio_user_device_info.size, flags, VFIO_PCI_NUM_REGIONS, VFIO_PCI_NUM_IRQS)
        return reply, []

    def region_size(self, index: int) -> int:
        """Size of region ``index`` (0 for an absent one)."""
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return self.function.config.size
        if 0 <= index < pcidefs.PCI_NUM_BARS:
            bar = self.function.bars[index]
            return bar.size if bar is not None else 0
        return 0

    def _region_info(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        request = _unpack(vfio_region_info, message.payload)
        _check_argsz(request.argsz, vfio_region_info.size, "DEVICE_GET_REGION_INFO")
        if not 0 <= request.index < VFIO_PCI_NUM_REGIONS:
            raise VfioUserReject(errno.EINVAL, f"region {request.index} does not exist")
        size = self.region_size(request.index)
        flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE if size else 0
        return vfio_region_info.pack(vfio_region_info.size, flags, request.index, 0, size, 0), []

    def _irq_info(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        request = _unpack(vfio_irq_info, message.payload)
        _check_argsz(request.argsz, vfio_irq_info.size, "DEVICE_GET_IRQ_INFO")
        info = self.irqs.info(request.index)
        return vfio_irq_info.pack(vfio_irq_info.size, info.flags, info.index, info.count), []

    def _set_irqs(self, message: Message) -> tuple[bytes, list[int]]:
        request = _unpack(vfio_irq_set, message.payload)
        _check_argsz(request.argsz, vfio_irq_set.size, "DEVICE_SET_IRQS")
        if request.argsz > len(message.payload):
            raise VfioUserReject(errno.EINVAL, f"SET_IRQS argsz {request.argsz} exceeds the {len(message.payload)} bytes sent")
        data = message.payload[vfio_irq_set.size : request.argsz]
        kept = self.irqs.set_irqs(request.index, request.flags, request.start, request.count, data, message.fds)
        return b"", kept

    def _dma_map(self, message: Message) -> tuple[bytes, list[int]]:
        request = _unpack(vfio_user_dma_map, message.payload)
        _check_argsz(request.argsz, vfio_user_dma_map.size, "DMA_MAP")
        if request.argsz > len(message.payload):
            raise VfioUserReject(errno.EINVAL, f"DMA_MAP argsz {request.argsz} exceeds the {len(message.payload)} bytes sent")
        if len(message.fds) > 1:
            raise VfioUserReject(errno.EINVAL, f"DMA_MAP carries {len(message.fds)} file descriptors (at most 1)")
        # "pgsizes": the page sizes of DMA map operations; a window is whole pages of the smallest.
        page = self.limits.pgsizes & -self.limits.pgsizes
        if request.address % page or request.size % page:
            raise VfioUserReject(errno.EINVAL, f"DMA window [{request.address:#x}, +{request.size:#x}) is not in {page:#x}-byte pages")
        fd = message.fds[0] if message.fds else None
        window = self.dma.add(request.address, request.size, request.flags, fd, request.offset)
        self.features.window_added(window)
        return b"", [fd] if fd is not None else []

    def _dma_unmap(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        request = _unpack(vfio_user_dma_unmap, message.payload)
        _check_argsz(request.argsz, vfio_user_dma_unmap.size, "DMA_UNMAP")
        if request.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP:
            raise VfioUserReject(errno.ENOTSUP, "DMA_UNMAP GET_DIRTY_BITMAP is not supported (use DMA_LOGGING_REPORT)")
        if request.flags & ~VFIO_DMA_UNMAP_FLAG_ALL:
            raise VfioUserReject(errno.EINVAL, f"unknown DMA_UNMAP flags {request.flags:#x}")
        if request.flags & VFIO_DMA_UNMAP_FLAG_ALL:
            # linux/vfio.h VFIO_DMA_UNMAP_FLAG_ALL: every mapping; iova and size must be 0.
            if request.address or request.size:
                raise VfioUserReject(errno.EINVAL, "DMA_UNMAP ALL with a nonzero address or size")
            for window in self.dma.windows:
                self.features.window_removed(window)
            self.dma.clear()
        else:
            self.features.window_removed(self.dma.remove(request.address, request.size))
        # "The server responds with the original DMA entry in the request."
        reply = vfio_user_dma_unmap.pack(vfio_user_dma_unmap.size, request.flags, request.address, request.size)
        return reply, []

    def _check_access(self, region: int, offset: int, count: int) -> None:
        if not 0 <= region < VFIO_PCI_NUM_REGIONS:
            raise VfioUserReject(errno.EINVAL, f"region {region} does not exist")
        if count > self.limits.max_data_xfer_size:
            raise VfioUserReject(errno.E2BIG, f"count {count} exceeds max_data_xfer_size {self.limits.max_data_xfer_size}")
        size = self.region_size(region)
        # offset is a u64 and count a u32 from the wire; Python ints do not wrap, so an
        # offset near 2**64 fails here instead of wrapping around to the region's start.
        if offset + count > size:
            raise VfioUserReject(errno.EINVAL, f"[{offset:#x}, +{count:#x}) is outside region {region} ({size:#x} bytes)")

    def _region_read(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        request = _unpack(vfio_user_region_access, message.payload)
        if len(message.payload) != vfio_user_region_access.size:
            raise VfioUserReject(errno.EINVAL, "REGION_READ carries data")
        self._check_access(request.region, request.offset, request.count)
        fn = self.function
        out = bytearray()
        if _tp_access.on:
            _tp_access.emit(region=request.region, offset=request.offset, count=request.count, kind="read")
        if request.region == VFIO_PCI_CONFIG_REGION_INDEX:
            self.stats.config_reads += 1
            for pos, size in access_pieces(request.offset, request.count, 4):
                out += fn.config_read(pos, size).to_bytes(size, "little")
        else:
            self.stats.bar_reads += 1
            for pos, size in access_pieces(request.offset, request.count, 8):
                out += fn.bar_read(request.region, pos, size).to_bytes(size, "little")
        return message.payload + bytes(out), []

    def _region_write(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        request = _unpack(vfio_user_region_access, message.payload)
        data = message.payload[vfio_user_region_access.size :]
        if len(data) != request.count:
            raise VfioUserReject(errno.EINVAL, f"REGION_WRITE count {request.count} but {len(data)} data bytes")
        self._check_access(request.region, request.offset, request.count)
        if message.no_reply:
            self.stats.posted_writes += 1
        if _tp_access.on:
            _tp_access.emit(region=request.region, offset=request.offset, count=request.count,
                            kind="posted" if message.no_reply else "write")
        self._write(request.region, request.offset, data)
        return message.payload[: vfio_user_region_access.size], []

    def _write(self, region: int, offset: int, data: bytes) -> None:
        """One checked client write, split like the bus (rules 3, 5)."""
        if region == VFIO_PCI_CONFIG_REGION_INDEX:
            self.stats.config_writes += 1
            for pos, size in access_pieces(offset, len(data), 4):
                self._config_write(pos, size, int.from_bytes(data[pos - offset : pos - offset + size], "little"))
            return
        self.stats.bar_writes += 1
        for pos, size in access_pieces(offset, len(data), 8):
            value = int.from_bytes(data[pos - offset : pos - offset + size], "little")
            if self._msix_structure(region, pos, size):
                if _tp_dropped_write.on:
                    _tp_dropped_write.emit(region=region, offset=pos, reason="MSI-X table/PBA")
                continue
            self.function.bar_write(region, pos, size, value)

    def _region_write_multi(self, message: Message) -> tuple[bytes, list[int]]:
        """``VFIO_USER_REGION_WRITE_MULTI``: coalesced writes of at most 8 bytes (rule 3)."""
        self._no_fds(message)
        if not self.limits.write_multiple:
            raise VfioUserReject(errno.ENOTSUP, "REGION_WRITE_MULTI was not negotiated (write_multiple)")
        count = _unpack(vfio_user_write_multi_count, message.payload).wr_cnt
        step = vfio_user_write_multi_entry.size
        if len(message.payload) != vfio_user_write_multi_count.size + count * step:
            raise VfioUserReject(errno.EINVAL, f"REGION_WRITE_MULTI of {count} writes has {len(message.payload)} bytes")
        self.stats.write_multi += 1
        for i in range(count):
            entry = vfio_user_write_multi_entry.unpack(message.payload, vfio_user_write_multi_count.size + i * step)
            if not 0 < entry.count <= VFIO_USER_MULTI_DATA:
                raise VfioUserReject(errno.EINVAL, f"REGION_WRITE_MULTI write {i} has count {entry.count}")
            self._check_access(entry.region, entry.offset, entry.count)
            self._write(entry.region, entry.offset, entry.data[: entry.count])
        return vfio_user_write_multi_count.pack(count), []

    def _protected_config(self) -> list[tuple[int, int]]:
        fn = self.function
        ranges = []
        if fn.msi is not None:
            ranges.append((fn.msi.offset, fn.msi.offset + fn.msi.length))
        if fn.msix is not None:
            ranges.append((fn.msix.offset, fn.msix.offset + 12))
        return ranges

    def _config_write(self, offset: int, size: int, value: int) -> None:
        """A client config write with the MSI/MSI-X capability bytes removed (rule 5)."""
        protected = self._protected_config()
        run_start = None
        for i in range(size + 1):
            pos = offset + i
            keep = i < size and not any(lo <= pos < hi for lo, hi in protected)
            if keep and run_start is None:
                run_start = i
            elif not keep and run_start is not None:
                length = i - run_start
                part = (value >> (8 * run_start)) & ((1 << (8 * length)) - 1)
                for piece_pos, piece_size in access_pieces(offset + run_start, length, 4):
                    shift = 8 * (piece_pos - offset - run_start)
                    self.function.config_write(piece_pos, piece_size, (part >> shift) & ((1 << (8 * piece_size)) - 1))
                run_start = None
        if len(protected) and any(lo < offset + size and offset < hi for lo, hi in protected) and _tp_dropped_write.on:
            _tp_dropped_write.emit(region=VFIO_PCI_CONFIG_REGION_INDEX, offset=offset, reason="MSI/MSI-X capability")

    def _msix_structure(self, region: int, offset: int, size: int) -> bool:
        msix = self.function.msix
        if msix is None or msix.bar != region:
            return False
        for start, length in ((msix.table_offset, msix.table_len), (msix.pba_offset, msix.pba_len)):
            if offset < start + length and start < offset + size:
                return True
        return False

    def _device_reset(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        if message.payload:
            raise VfioUserReject(errno.EINVAL, "DEVICE_RESET has no payload")
        self._reset()
        self.irqs.reapply()
        self.migration.reset()
        return b"", []

    # -- migration (passthrough.user.migration) -------------------------------------------

    def _device_feature(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        return self.features.handle(message.payload), []

    def _mig_data_read(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        request = _unpack(vfio_user_mig_data, message.payload)
        _check_argsz(request.argsz, vfio_user_mig_data.size, "MIG_DATA_READ")
        if request.size > self.limits.max_data_xfer_size:
            raise VfioUserReject(errno.E2BIG, f"MIG_DATA_READ size {request.size} exceeds max_data_xfer_size")
        asked = min(request.size, request.argsz - vfio_user_mig_data.size)
        chunk = self.migration.read(asked)
        # rule 8: argsz and size give the data; zeros pad it to the size asked.
        padding = bytes(asked - len(chunk))
        return vfio_user_mig_data.pack(vfio_user_mig_data.size + len(chunk), len(chunk)) + chunk + padding, []

    def _mig_data_write(self, message: Message) -> tuple[bytes, list[int]]:
        self._no_fds(message)
        request = _unpack(vfio_user_mig_data, message.payload)
        _check_argsz(request.argsz, vfio_user_mig_data.size, "MIG_DATA_WRITE")
        data = message.payload[vfio_user_mig_data.size :]
        if request.size != len(data):
            raise VfioUserReject(errno.EINVAL, f"MIG_DATA_WRITE size {request.size} but {len(data)} data bytes")
        if request.size > self.limits.max_data_xfer_size:
            raise VfioUserReject(errno.E2BIG, f"MIG_DATA_WRITE size {request.size} exceeds max_data_xfer_size")
        self.migration.write(data)
        return b"", []

    # -- notifications to the client (irqs rule 4) -----------------------------------------

    def report_error(self, reason: str) -> bool:
        """The device failed unrecoverably: log, trace and signal the ERR eventfd (rule 10).

        Returns whether the client had wired ERR (QEMU does, to stop the VM on it).
        """
        signalled = self.irqs.signal_err()
        _log.error("vfio-user: device error (%s); ERR %s", reason, "signalled" if signalled else "not wired by the client")
        if _tp_device_error.on:
            _tp_device_error.emit(reason=reason, signalled=signalled)
        return signalled

    def request_release(self) -> bool:
        """Ask the client to give the device back (REQ eventfd); whether it was wired."""
        return self.irqs.signal_req()

    @staticmethod
    def _no_fds(message: Message) -> None:
        if message.fds:
            raise VfioUserReject(errno.EINVAL, f"{len(message.fds)} stray file descriptors")

    # -- server-to-client DMA (rule 7; DmaChannel) ----------------------------------------

    def dma_read(self, address: int, count: int) -> bytes:
        """Read client memory with ``VFIO_USER_DMA_READ`` (``GuestMemoryError`` on failure)."""
        out = bytearray()
        step = max(1, self.limits.max_data_xfer_size)
        for pos in range(address, address + count, step):
            n = min(step, address + count - pos)
            reply = self._dma_request(VFIO_USER_DMA_READ, vfio_user_dma_region_access.pack(pos, n), pos, n)
            data = reply[vfio_user_dma_region_access.size :]
            if len(data) != n:
                raise GuestMemoryError(pos, n, "DMA_READ reply has the wrong length")
            out += data
        return bytes(out)

    def dma_write(self, address: int, data: bytes) -> None:
        """Write client memory with ``VFIO_USER_DMA_WRITE`` (``GuestMemoryError`` on failure)."""
        step = max(1, self.limits.max_data_xfer_size)
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            self._dma_request(
                VFIO_USER_DMA_WRITE, vfio_user_dma_region_access.pack(address + start, len(chunk)) + chunk,
                address + start, len(chunk),
            )

    def _dma_request(self, command: int, payload: bytes, address: int, count: int) -> bytes:
        conn = self._conn
        if conn is None or self._closing:
            raise GuestMemoryError(address, count, "no vfio-user client connected")
        self._next_id = (self._next_id + 1) & 0xFFFF
        msg_id = self._next_id
        self.stats.dma_messages += 1
        try:
            conn.send(msg_id, command, payload)
            while True:
                message = conn.recv()
                if message is None:
                    raise VfioUserDisconnectedError("client closed the connection")
                if message.is_reply:
                    message.close_fds()
                    if message.msg_id == msg_id and message.command == command:
                        break
                    continue  # a reply to nothing outstanding: dropped
                if len(self._queued) >= _MAX_QUEUED:
                    message.close_fds()
                    raise VfioUserDisconnectedError("client flooded the socket while a DMA reply was due")
                self._queued.append(message)
        except (VfioUserDisconnectedError, VfioUserFramingError) as exc:
            self._closing = True
            raise GuestMemoryError(address, count, f"vfio-user DMA failed: {exc}") from None
        if message.is_error:
            raise GuestMemoryError(address, count, f"client refused DMA (errno {message.error_no})")
        return message.payload
