"""One vhost-user front-end session over one devmodels virtio device.

The session turns front-end messages into calls on a ``VirtioDevice``: feature
negotiation drives the device's status machine (ACKNOWLEDGE → DRIVER → FEATURES_OK →
DRIVER_OK), the memory table becomes regions of the device's ``GuestMemory``, and vring
messages program the device's queues directly (the session *is* the transport).

Rules:

1. Every message is validated before it changes anything: payload size (``messages``),
   ring index, ring size, addresses (translated from front-end user addresses to guest
   addresses, § Memory access), descriptor counts and kinds (a kick or call descriptor must
   be an eventfd or a pipe, so a regular file can never make the loop spin). A bad message
   raises ``ProtocolError``: non-fatal ones become an error ack when the front-end asked
   for one (REPLY_ACK), fatal ones end the connection. Descriptors a message carried and
   nobody kept are closed on every path.
2. A ring is *started* by SET_VRING_KICK and *stopped* by GET_VRING_BASE (§ Ring states). It
   is processed only while started, enabled (SET_VRING_ENABLE, or always when
   VHOST_USER_F_PROTOCOL_FEATURES was not negotiated) and after SET_FEATURES. Starting
   programs the device queue from the vring state (``VirtioDevice.start_queue``: a new
   epoch); the used index is read back from the used ring itself, so chains a previous
   back-end left in flight are not mistaken for new.
3. Stopping drains the device first (block requests complete and are returned to the
   guest), then the device gives back what it holds (``VirtioDevice.stop_queue``: a NIC
   un-pops receive buffers it had no frame for), so GET_VRING_BASE reports the position a
   restart resumes from, with nothing in flight and nothing lost. Memory regions are
   removed or replaced only after a drain (``BlockBackend`` rule 3).
4. Used-buffer notifications are coalesced: the device's ``signal_used`` only marks the
   ring; ``flush_calls`` writes each marked call eventfd once (after a batch of events).
   ``recheck`` (once per batch, and when the loop goes idle) sends calls a driver asked
   for late and processes buffers it made available without a kick (``VirtioDevice``
   rule 9).
5. ``close`` (front-end gone, fatal error) drains, resets the device, unmaps the memory and
   closes every descriptor, leaving the device ready for the next front-end.
6. Every ring error is recoverable by the guest's reset. When the device finds a malformed
   ring it enters DEVICE_NEEDS_RESET; every ring running then is *failed*: its error
   eventfd is written once and it is not processed again until it is stopped
   (GET_VRING_BASE) and started. A ring started while the device is in that state, and a
   SET_FEATURES then (QEMU resends the same features on the guest's reset), reset the
   device and negotiate the session's features again: a ring stopped and started again
   starts clean, whatever the features. Failed rings not yet stopped stay out.

7. Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, offered for devices that
   process every queue through ``handle_queue``, as virtio-blk does): GET_INFLIGHT_FD
   answers a new zeroed buffer with its descriptor (``take_reply_fds``); SET_INFLIGHT_FD
   maps the one the front-end keeps. A ring's *first* start after SET_INFLIGHT_FD
   recovers what a previous back-end left in its region (``inflight_split``,
   ``inflight_packed``): the ring starts at the recorded used position with the buffers
   still in flight taken, and they are resubmitted to the device in the order they were
   taken; a region that does not hold together is started afresh (nothing resubmitted,
   as without tracking). Every later start, and every start after the session reset the
   device, starts its region afresh at the ring's used position. While a ring runs its
   ``VringTap`` records every chain taken and returned.
8. Dirty logging (VHOST_F_LOG_ALL, VHOST_USER_PROTOCOL_F_LOG_SHMFD): SET_LOG_BASE maps the
   log and is always answered (QEMU waits for it; a log that cannot be mapped ends the
   connection, so the front-end never migrates with writes unlogged). SET_FEATURES that
   only turns VHOST_F_LOG_ALL on or off, and SET_VRING_ADDR that only changes a running
   ring's flags (VHOST_VRING_F_LOG) and log address, change logging and nothing else.
   While logging, every buffer the device returns and the ring areas it writes are marked
   after they were written, and a stopping ring marks its areas again before
   GET_VRING_BASE is answered (``tap`` rule 2).

No message, and nothing the guest puts in the rings, ends the server or stalls a ring
beyond the stated bounds: malformed messages are refused (rule 1), ring errors take the
device to DEVICE_NEEDS_RESET (rule 6), and a ``UsageError`` a front-end or guest could
reach is a bug.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from devmodels import GuestError, GuestMemoryError, SnapshotError, UsageError
from devmodels.trace import tracepoint

from ..defs import (
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_NOTIFICATION_DATA,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
)
from ..device import VirtioDevice
from . import atomic_bits
from .defs import (
    VHOST_F_LOG_ALL,
    VHOST_SET_CONFIG_TYPE_MASTER,
    VHOST_SET_CONFIG_TYPE_MIGRATION,
    VHOST_USER_ADD_MEM_REG,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_GET_CONFIG,
    VHOST_USER_GET_FEATURES,
    VHOST_USER_GET_INFLIGHT_FD,
    VHOST_USER_GET_MAX_MEM_SLOTS,
    VHOST_USER_GET_PROTOCOL_FEATURES,
    VHOST_USER_GET_QUEUE_NUM,
    VHOST_USER_GET_VRING_BASE,
    VHOST_USER_MAX_CONFIG_SIZE,
    VHOST_USER_MAX_MEM_SLOTS,
    VHOST_USER_PROTOCOL_F_CONFIG,
    VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
    VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD,
    VHOST_USER_PROTOCOL_F_LOG_SHMFD,
    VHOST_USER_PROTOCOL_F_MQ,
    VHOST_USER_PROTOCOL_F_REPLY_ACK,
    VHOST_USER_PROTOCOL_F_RESET_DEVICE,
    VHOST_USER_REM_MEM_REG,
    VHOST_USER_RESET_DEVICE,
    VHOST_USER_RESET_OWNER,
    VHOST_USER_SET_CONFIG,
    VHOST_USER_SET_FEATURES,
    VHOST_USER_SET_INFLIGHT_FD,
    VHOST_USER_SET_LOG_BASE,
    VHOST_USER_SET_LOG_FD,
    VHOST_USER_SET_MEM_TABLE,
    VHOST_USER_SET_OWNER,
    VHOST_USER_SET_PROTOCOL_FEATURES,
    VHOST_USER_SET_VRING_ADDR,
    VHOST_USER_SET_VRING_BASE,
    VHOST_USER_SET_VRING_CALL,
    VHOST_USER_SET_VRING_ENABLE,
    VHOST_USER_SET_VRING_ERR,
    VHOST_USER_SET_VRING_KICK,
    VHOST_USER_SET_VRING_NUM,
    VHOST_USER_VRING_IDX_MASK,
    VHOST_USER_VRING_NOFD_MASK,
    VHOST_VRING_F_LOG,
)
from .dirty_log import DirtyLog, LogError
from .inflight import InflightBuffer, InflightError, Recovery
from .inflight_packed import PackedInflight
from .inflight_split import SplitInflight
from .memory import MemoryTable, MemoryTableError
from .messages import (
    Message,
    ProtocolError,
    VringAddr,
    close_fds,
    decode_config,
    decode_inflight,
    decode_log,
    decode_mem_reg,
    decode_memory,
    decode_u64,
    decode_vring_addr,
    decode_vring_state,
    encode,
    encode_config,
    encode_inflight,
    encode_u64,
    encode_vring_state,
)
from .tap import VringTap

__all__ = ["VhostUserSession", "VringState", "PROTOCOL_FEATURES", "UNSUPPORTED_TRANSPORT_FEATURES"]

_log = logging.getLogger("devmodels.vhost_user")
_tp_msg = tracepoint("vhost_user.message")
_tp_error = tracepoint("vhost_user.error")
_tp_ring = tracepoint("vhost_user.ring")

LOGGING = atomic_bits.available()
"""Whether this machine can write the shared dirty log (``atomic_bits``): VHOST_F_LOG_ALL
and VHOST_USER_PROTOCOL_F_LOG_SHMFD are offered only then (rule 8)."""

PROTOCOL_FEATURES = (
    1 << VHOST_USER_PROTOCOL_F_MQ
    | 1 << VHOST_USER_PROTOCOL_F_REPLY_ACK
    | 1 << VHOST_USER_PROTOCOL_F_CONFIG
    | 1 << VHOST_USER_PROTOCOL_F_RESET_DEVICE
    | 1 << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS
    | 1 << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD
    | (1 << VHOST_USER_PROTOCOL_F_LOG_SHMFD if LOGGING else 0)
)
"""Protocol features this back-end may offer (INFLIGHT_SHMFD only for devices that can
resubmit, rule 7; CONFIG only for devices that keep their configuration)."""

_NOT_DEVICE_FEATURES = 1 << VHOST_USER_F_PROTOCOL_FEATURES | 1 << VHOST_F_LOG_ALL

UNSUPPORTED_TRANSPORT_FEATURES = (
    1 << VIRTIO_F_RING_RESET | 1 << VIRTIO_F_ACCESS_PLATFORM | 1 << VIRTIO_F_NOTIFICATION_DATA
)
"""Device features never offered over vhost-user (no message carries them)."""

# Messages whose reply is their own payload (REPLY_ACK adds nothing to them).
_HAS_REPLY = frozenset(
    {
        VHOST_USER_GET_FEATURES,
        VHOST_USER_GET_PROTOCOL_FEATURES,
        VHOST_USER_GET_VRING_BASE,
        VHOST_USER_GET_QUEUE_NUM,
        VHOST_USER_GET_CONFIG,
        VHOST_USER_GET_MAX_MEM_SLOTS,
        VHOST_USER_GET_INFLIGHT_FD,
    }
)


def _is_event_fd(fd: int) -> bool:
    """An eventfd or a pipe/FIFO: something that is readable only once written to."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if stat.S_ISFIFO(mode):
        return True
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


@dataclass
class VringState:
    """What the front-end told the back-end about one vring."""

    index: int
    num: int | None = None
    addr: VringAddr | None = None
    base: int = 0
    kick_fd: int | None = None
    polling: bool = False  # SET_VRING_KICK with the invalid-fd flag: no notifications
    call_fd: int | None = None
    err_fd: int | None = None
    enabled: bool = False
    started: bool = False
    running: bool = False
    call_pending: bool = False
    failed: bool = False  # running when the device failed: out until stopped and started (rule 6)
    tap: VringTap | None = None  # while running: inflight tracking and dirty logging (rules 7, 8)
    recover: bool = False  # the next start recovers the inflight region (rule 7)

    def close(self, close_kick: Callable[[int], None]) -> None:
        """Close the ring's descriptors (the kick one through ``close_kick``)."""
        if self.kick_fd is not None:
            close_kick(self.kick_fd)
        close_fds([fd for fd in (self.call_fd, self.err_fd) if fd is not None])
        self.kick_fd = self.call_fd = self.err_fd = None


class VhostUserSession:
    """The protocol state of one front-end connection (rules 1–5).

    Args:
        device: the device served; the session drives its status and programs its queues.
        queue_num: the GET_QUEUE_NUM answer (default: the device's queue count).
        on_fds_changed: called when the set of descriptors to watch changed.
        close_kick: closes a kick descriptor; the event loop passes one that stops
            watching it first (an fd shared with the front-end stays registered in epoll
            after a plain ``close``).
    """

    def __init__(
        self,
        device: VirtioDevice,
        *,
        queue_num: int | None = None,
        on_fds_changed: Callable[[], None] | None = None,
        close_kick: Callable[[int], None] | None = None,
    ) -> None:
        self.device = device
        self.memory = MemoryTable(device.memory, max_slots=VHOST_USER_MAX_MEM_SLOTS)
        self.vrings = [VringState(i) for i in range(device.num_queues)]
        self.queue_num = device.num_queues if queue_num is None else queue_num
        # A device whose configuration the front-end keeps (QEMU's virtio-net) says so with
        # ``vhost_user_config = False``; CONFIG is then not offered.
        self.offered_protocol = PROTOCOL_FEATURES
        if not getattr(device, "vhost_user_config", True):
            self.offered_protocol &= ~(1 << VHOST_USER_PROTOCOL_F_CONFIG)
        # Rule 7: resubmitting means handing chains to ``handle_queue``, which a device that
        # overrides ``on_queue_notify`` (a NIC's receive queue) does not take them through.
        self.resubmits = type(device).on_queue_notify is VirtioDevice.on_queue_notify
        if not self.resubmits:
            self.offered_protocol &= ~(1 << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)
        self.inflight: InflightBuffer | None = None  # SET_INFLIGHT_FD (rule 7)
        self.log: DirtyLog | None = None  # SET_LOG_BASE (rule 8)
        self._reply_fds: list[int] = []
        self.owner = False
        self.features: int | None = None  # what SET_FEATURES last set
        self.protocol_features = 0
        self._on_fds_changed = on_fds_changed or (lambda: None)
        self._close_kick: Callable[[int], None] = close_kick or (lambda fd: close_fds([fd]))
        self._pending_config: list[tuple[int, bytes]] = []
        self.busy: set[int] = set()  # rings with work left after their budget
        self.closed = False

    # -- what the device sees ------------------------------------------------------------------

    @property
    def offered_features(self) -> int:
        """GET_FEATURES: the device's features, less what vhost-user cannot carry, plus
        VHOST_USER_F_PROTOCOL_FEATURES and (rule 8) VHOST_F_LOG_ALL."""
        offered = (self.device.features.offered & ~UNSUPPORTED_TRANSPORT_FEATURES) | 1 << VHOST_USER_F_PROTOCOL_FEATURES
        return offered | (1 << VHOST_F_LOG_ALL if LOGGING else 0)

    @property
    def logging(self) -> bool:
        """The front-end asked for every write to be logged (VHOST_F_LOG_ALL) and gave a log."""
        return self.log is not None and self.features is not None and bool(self.features >> VHOST_F_LOG_ALL & 1)

    def take_reply_fds(self) -> list[int]:
        """Descriptors to send with the reply ``handle`` just returned (GET_INFLIGHT_FD); the
        caller sends and closes them (rule 7)."""
        fds, self._reply_fds = self._reply_fds, []
        return fds

    @property
    def reply_ack(self) -> bool:
        """REPLY_ACK was negotiated."""
        return bool(self.protocol_features >> VHOST_USER_PROTOCOL_F_REPLY_ACK & 1)

    def signal_used(self, index: int) -> None:
        """The device returned buffers on ``index`` (rule 4: marked, sent by ``flush_calls``)."""
        if 0 <= index < len(self.vrings):
            self.vrings[index].call_pending = True

    def flush_calls(self) -> None:
        """Write the call eventfd of every marked ring once (rule 4); signal errors (rule 6)."""
        for vring in self.vrings:
            if vring.call_pending:
                vring.call_pending = False
                if vring.call_fd is not None:
                    _signal(vring.call_fd)
        if self.device.status & DEVICE_NEEDS_RESET:
            for vring in self.vrings:
                if vring.running:
                    self._fail_ring(vring)

    def _fail_ring(self, vring: VringState) -> None:
        if vring.failed:
            return
        vring.failed = True
        if _tp_ring.on:
            _tp_ring.emit(index=vring.index, event="failed", error=str(self.device.error))
        if vring.err_fd is not None:
            _signal(vring.err_fd)

    def recheck(self) -> None:
        """Catch up with late suppression stores of the driver (rule 4); the server calls it
        when due (``backend`` rule 5)."""
        if not any(v.running for v in self.vrings):
            return
        device = self.device
        device.recheck()
        for index in device.pending:
            if 0 <= index < len(self.vrings) and self.vrings[index].running:
                self.busy.add(index)

    def watched(self) -> dict[int, int]:
        """Kick descriptor -> ring index, for the rings being processed."""
        return {v.kick_fd: v.index for v in self.vrings if v.running and v.kick_fd is not None}

    @property
    def polling(self) -> bool:
        """Some running ring has no kick descriptor and must be polled."""
        return any(v.running and v.polling for v in self.vrings)

    # -- ring processing -------------------------------------------------------------------------

    def kick(self, index: int) -> None:
        """The front-end kicked ring ``index`` (or polling found work): process it."""
        vring = self.vrings[index]
        if not vring.running:
            return
        # The queue looks at the ring again after publishing avail_event (Virtqueue rule 5),
        # so "no more" means the driver will kick for what it adds next.
        more = self.device.notify_queue(index)
        if more:
            self.busy.add(index)
        else:
            self.busy.discard(index)

    def run_busy(self) -> None:
        """Process each ring that still had work after its last budget, once."""
        for index in sorted(self.busy):
            self.kick(index)

    def poll(self) -> None:
        """Process every running ring that has no kick descriptor (polling mode)."""
        for vring in self.vrings:
            if vring.running and vring.polling:
                self.kick(vring.index)

    # -- message dispatch ------------------------------------------------------------------------

    def handle(self, message: Message) -> bytes | None:
        """Handle one message; return the reply bytes, if any.

        Raises:
            ProtocolError: ``fatal`` set: end the connection. The message's descriptors
                were closed.
        """
        if _tp_msg.on:
            _tp_msg.emit(request=message.name, flags=message.flags, size=len(message.payload), fds=len(message.fds))
        handler = _HANDLERS.get(message.request)
        try:
            if handler is None:
                # Answerable only with an error ack; without one the front-end would wait.
                raise ProtocolError(f"{message.name} is not supported", fatal=not (message.need_reply and self.reply_ack))
            reply = handler(self, message)
        except ProtocolError as exc:
            if _tp_error.on:
                _tp_error.emit(request=message.name, error=str(exc), fatal=exc.fatal)
            _log.info("vhost-user: %s refused: %s", message.name, exc)
            if exc.fatal:
                raise
            if message.request == VHOST_USER_GET_CONFIG:
                return encode(message.request, b"")  # the protocol's GET_CONFIG error reply
            close_fds(self.take_reply_fds())
            if message.request in _HAS_REPLY or (
                message.request == VHOST_USER_SET_LOG_BASE and self.protocol_features >> VHOST_USER_PROTOCOL_F_LOG_SHMFD & 1
            ):
                # The front-end waits for a payload this request cannot have (a refused log:
                # rule 8, the front-end must not migrate believing writes are logged).
                raise ProtocolError(str(exc), fatal=True) from None
            if message.need_reply and self.reply_ack:
                return encode(message.request, encode_u64(1))
            return None
        finally:
            message.close_fds()
        if reply is not None:
            return reply
        if message.need_reply and self.reply_ack:
            return encode(message.request, encode_u64(0))
        return None

    # -- handlers: negotiation ---------------------------------------------------------------------

    def _get_features(self, message: Message) -> bytes:
        _no_payload(message)
        return encode(message.request, encode_u64(self.offered_features))

    def _set_features(self, message: Message) -> None:
        value = decode_u64(message)
        unknown = value & ~self.offered_features
        if unknown:
            raise ProtocolError(f"SET_FEATURES {value:#x} has bits never offered: {unknown:#x}")
        device_features = value & ~_NOT_DEVICE_FEATURES
        first = self.features is None
        protocol = bool(value >> VHOST_USER_F_PROTOCOL_FEATURES & 1)
        self.features = value
        if not protocol:
            # § Ring states: without protocol features the rings start enabled.
            for vring in self.vrings:
                vring.enabled = True
        device = self.device
        if not first and device.status & FEATURES_OK and device.negotiated == device_features and not device.broken:
            self._update_logging()  # rule 8: QEMU resends the same features on every start and log change
            return
        self._configure(device_features)
        self._update_logging()

    def _configure(self, device_features: int) -> None:
        """Reset the device and take it to DRIVER_OK with ``device_features``; running rings
        restart from where they stopped, except failed ones (rule 6)."""
        device = self.device
        broken = device.broken
        for vring in self.vrings:
            if vring.running:
                if broken:
                    self._fail_ring(vring)
                self._stop(vring)
            vring.recover = False  # rule 7: what the reset device held is gone
        self._drain()
        device.write_status(0)
        device.write_status(ACKNOWLEDGE)
        device.write_status(ACKNOWLEDGE | DRIVER)
        for select in range(4):
            device.driver_feature_select = select
            device.write_driver_features((device_features >> (32 * select)) & 0xFFFF_FFFF)
        device.driver_feature_select = 0
        device.write_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
        if not device.status & FEATURES_OK:
            device.write_status(0)
            self.features = None
            raise ProtocolError(f"the device refused features {device_features:#x}")
        for offset, data in self._pending_config:
            device.on_config_write(offset, data)
        device.write_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        if broken and _tp_ring.on:
            _tp_ring.emit(index=-1, event="device_reset", reason="a ring started after a ring error")
        for vring in self.vrings:
            self._maybe_start(vring)

    def _get_protocol_features(self, message: Message) -> bytes:
        _no_payload(message)
        return encode(message.request, encode_u64(self.offered_protocol))

    def _set_protocol_features(self, message: Message) -> None:
        value = decode_u64(message)
        if value & ~self.offered_protocol:
            raise ProtocolError(f"protocol features {value & ~self.offered_protocol:#x} were never offered", fatal=True)
        self.protocol_features = value

    def _set_owner(self, message: Message) -> None:
        _no_payload(message)
        self.owner = True

    def _reset_owner(self, message: Message) -> None:
        # Deprecated; the recommended reading is "disable all rings".
        _no_payload(message)
        for vring in self.vrings:
            self._stop(vring)
            vring.enabled = False
            vring.failed = False  # rule 6: what starts next starts clean

    def _reset_device(self, message: Message) -> None:
        _no_payload(message)
        self._require_protocol(VHOST_USER_PROTOCOL_F_RESET_DEVICE, message)
        for vring in self.vrings:
            self._stop(vring)
            vring.close(self._close_kick)
        self.vrings = [VringState(i) for i in range(len(self.vrings))]
        self._drain()
        self.device.write_status(0)
        self.features = None
        self._pending_config.clear()
        self._on_fds_changed()

    def _get_queue_num(self, message: Message) -> bytes:
        _no_payload(message)
        return encode(message.request, encode_u64(self.queue_num))

    # -- handlers: memory --------------------------------------------------------------------------

    def _set_mem_table(self, message: Message) -> None:
        regions = decode_memory(message)
        fds, message.fds = message.fds, []
        self._drain()
        try:
            self.memory.set_table(regions, fds)
        except MemoryTableError as exc:
            raise ProtocolError(f"memory table refused: {exc}") from None
        self._retranslate()

    def _get_max_mem_slots(self, message: Message) -> bytes:
        _no_payload(message)
        self._require_protocol(VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, message)
        return encode(message.request, encode_u64(self.memory.max_slots))

    def _add_mem_reg(self, message: Message) -> None:
        self._require_protocol(VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, message)
        region = decode_mem_reg(message)
        if len(message.fds) != 1:
            raise ProtocolError(f"ADD_MEM_REG carries {len(message.fds)} descriptors, not 1")
        fd = message.take_fd()
        try:
            self.memory.add(region, fd)
        except MemoryTableError as exc:
            raise ProtocolError(f"region refused: {exc}") from None

    def _rem_mem_reg(self, message: Message) -> None:
        self._require_protocol(VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, message)
        region = decode_mem_reg(message)
        message.close_fds()  # a descriptor here is tolerated and closed unused
        self._drain()
        try:
            self.memory.remove(region)
        except MemoryTableError as exc:
            raise ProtocolError(str(exc)) from None
        self._retranslate()

    # -- handlers: vrings --------------------------------------------------------------------------

    def _vring(self, index: int, message: Message) -> VringState:
        if not 0 <= index < len(self.vrings):
            raise ProtocolError(f"{message.name}: ring {index} does not exist ({len(self.vrings)} rings)")
        return self.vrings[index]

    def _set_vring_num(self, message: Message) -> None:
        index, num = decode_vring_state(message)
        vring = self._vring(index, message)
        maximum = self.device.queue_max_size(index)
        if not 1 <= num <= maximum:
            raise ProtocolError(f"ring {index} size {num} is not in 1..{maximum}")
        if vring.running:
            raise ProtocolError(f"ring {index} is running; stop it before resizing")
        vring.num = num

    def _set_vring_addr(self, message: Message) -> None:
        addr = decode_vring_addr(message)
        vring = self._vring(addr.index, message)
        if addr.flags & ~(1 << VHOST_VRING_F_LOG):
            raise ProtocolError(f"ring {addr.index}: vring flags {addr.flags:#x} are not defined")
        if addr.flags and not self.protocol_features >> VHOST_USER_PROTOCOL_F_LOG_SHMFD & 1:
            raise ProtocolError(f"ring {addr.index}: VHOST_VRING_F_LOG without VHOST_USER_PROTOCOL_F_LOG_SHMFD")
        if vring.running:
            old = vring.addr
            if old is None or (old.desc, old.used, old.avail) != (addr.desc, addr.used, addr.avail):
                raise ProtocolError(f"ring {addr.index} is running; stop it before moving it")
            vring.addr = addr  # rule 8: only the logging flag and address change
            self._update_logging()
            return
        vring.addr = addr
        if len(self.memory) and vring.num is not None:
            self._translate(vring)  # fail early; translated again when the ring starts

    def _set_vring_base(self, message: Message) -> None:
        index, num = decode_vring_state(message)
        vring = self._vring(index, message)
        if vring.running:
            raise ProtocolError(f"ring {index} is running; stop it before setting its base")
        # Split rings: the 16-bit last available index. Packed rings: bits 0-14 the next
        # descriptor to read, bit 15 its wrap counter, and (QEMU 7.2 and later) bits 16-30
        # and 31 the same for the next descriptor to use.
        if num > 0xFFFF and not self._packed():
            raise ProtocolError(f"ring {index} base {num:#x} is wider than 16 bits")
        vring.base = num

    def _get_vring_base(self, message: Message) -> bytes:
        index, _num = decode_vring_state(message)
        vring = self._vring(index, message)
        self._stop(vring)
        vring.started = False
        vring.failed = False  # rule 6: its next start is clean
        if vring.kick_fd is not None:
            self._close_kick(vring.kick_fd)
            vring.kick_fd = None
            self._on_fds_changed()
        return encode(message.request, encode_vring_state(index, vring.base))

    def _ring_fd(self, message: Message) -> tuple[VringState, int | None]:
        value = decode_u64(message)
        if value & ~(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK):
            raise ProtocolError(f"{message.name} payload {value:#x} has reserved bits set")
        vring = self._vring(value & VHOST_USER_VRING_IDX_MASK, message)
        if value & VHOST_USER_VRING_NOFD_MASK:
            if message.fds:
                raise ProtocolError(f"{message.name} says no descriptor but carries {len(message.fds)}")
            return vring, None
        if len(message.fds) != 1:
            raise ProtocolError(f"{message.name} carries {len(message.fds)} descriptors, not 1")
        fd = message.take_fd()
        if not _is_event_fd(fd):
            close_fds([fd])
            raise ProtocolError(f"{message.name}: descriptor is not an eventfd or a pipe")
        os.set_blocking(fd, False)
        return vring, fd

    def _set_vring_kick(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        if vring.kick_fd is not None:
            self._close_kick(vring.kick_fd)
        vring.kick_fd = fd
        vring.polling = fd is None
        vring.started = True
        self._on_fds_changed()
        self._maybe_start(vring)

    def _set_vring_call(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        if vring.call_fd is not None:
            close_fds([vring.call_fd])
        vring.call_fd = fd
        if fd is not None and vring.running:
            vring.call_pending = True  # a notification may have been lost in the switch

    def _set_vring_err(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        if vring.err_fd is not None:
            close_fds([vring.err_fd])
        vring.err_fd = fd

    def _set_vring_enable(self, message: Message) -> None:
        index, num = decode_vring_state(message)
        vring = self._vring(index, message)
        if num not in (0, 1):
            raise ProtocolError(f"SET_VRING_ENABLE {num} is neither 0 nor 1")
        vring.enabled = bool(num)
        if vring.enabled:
            self._maybe_start(vring)
        elif vring.running:
            # Disabled: the ring must have no side effects; keep its state, stop processing.
            self._stop(vring)
            vring.started = vring.kick_fd is not None or vring.polling

    # -- handlers: inflight tracking and dirty logging (rules 7, 8) -----------------------------

    def _get_inflight_fd(self, message: Message) -> bytes:
        self._require_protocol(VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, message)
        area = decode_inflight(message)
        if area.num_queues > len(self.vrings):
            raise ProtocolError(f"GET_INFLIGHT_FD for {area.num_queues} queues; the device has {len(self.vrings)}")
        try:
            fd, size = InflightBuffer.create(area.num_queues, area.queue_size)
        except InflightError as exc:
            raise ProtocolError(f"GET_INFLIGHT_FD: {exc}") from None
        except OSError as exc:
            raise ProtocolError(f"GET_INFLIGHT_FD: no memory file: {exc}") from None
        self._reply_fds.append(fd)
        return encode(message.request, encode_inflight(size, 0, area.num_queues, area.queue_size))

    def _set_inflight_fd(self, message: Message) -> None:
        self._require_protocol(VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, message)
        area = decode_inflight(message)
        if len(message.fds) != 1:
            raise ProtocolError(f"SET_INFLIGHT_FD carries {len(message.fds)} descriptors, not 1")
        fd = message.take_fd()
        if any(v.running for v in self.vrings):
            close_fds([fd])
            raise ProtocolError("SET_INFLIGHT_FD while rings run; stop them first")
        if area.num_queues > len(self.vrings):
            close_fds([fd])
            raise ProtocolError(f"SET_INFLIGHT_FD for {area.num_queues} queues; the device has {len(self.vrings)}")
        try:
            buffer = InflightBuffer.adopt(fd, area.size, area.offset, area.num_queues, area.queue_size)
        except InflightError as exc:
            raise ProtocolError(f"inflight buffer refused: {exc}") from None
        if self.inflight is not None:
            self.inflight.close()
        self.inflight = buffer
        for vring in self.vrings:
            vring.recover = vring.index < buffer.num_queues  # rule 7: the first start recovers

    def _set_log_base(self, message: Message) -> bytes:
        self._require_protocol(VHOST_USER_PROTOCOL_F_LOG_SHMFD, message)
        area = decode_log(message)
        if len(message.fds) != 1:
            raise ProtocolError(f"SET_LOG_BASE carries {len(message.fds)} descriptors, not 1")
        try:
            log = DirtyLog.open(message.take_fd(), area.size, area.offset)
        except LogError as exc:
            raise ProtocolError(f"log refused: {exc}") from None
        old, self.log = self.log, log
        self._update_logging()
        if old is not None:
            old.close()
        if _tp_ring.on:
            _tp_ring.emit(index=-1, event="log", size=area.size, pages=log.pages)
        # Answered whether or not the front-end asked (rule 8; QEMU reads this reply).
        return encode(message.request, encode_u64(0))

    def _set_log_fd(self, message: Message) -> None:
        # An eventfd to tell the front-end the log changed: optional, never needed here
        # (the log is shared memory the front-end reads when it syncs).
        if len(message.fds) != 1:
            raise ProtocolError(f"SET_LOG_FD carries {len(message.fds)} descriptors, not 1")
        message.close_fds()

    def _update_logging(self) -> None:
        """Give every running ring the log, or take it away (rule 8)."""
        for vring in self.vrings:
            tap = vring.tap
            if tap is None:
                continue
            ring_log = vring.addr is not None and vring.addr.flags >> VHOST_VRING_F_LOG & 1
            tap.log = self.log if self.log is not None and (self.logging or ring_log) else None
            if vring.addr is not None:
                tap.log_areas = self._log_areas(vring, tap)

    def _log_areas(self, vring: VringState, tap: VringTap) -> tuple[tuple[int, int], ...]:
        """What the device writes in a ring besides buffers (``tap`` rule 2)."""
        assert vring.addr is not None
        size = tap.size
        if tap.packed:
            # Used descriptors go into the descriptor ring; the device event area is what
            # log_guest_addr names for a packed ring (QEMU: the device area).
            return ((tap.desc_addr, 16 * size), (tap.device_addr, 4), (vring.addr.log, 4))
        # § Migration: the used ring, logged at log_guest_addr (QEMU: its guest address, the
        # one the memory table gives too; both are marked).
        return ((tap.device_addr, 6 + 8 * size), (vring.addr.log, 6 + 8 * size))

    # -- handlers: configuration -----------------------------------------------------------------

    def _get_config(self, message: Message) -> bytes:
        self._require_protocol(VHOST_USER_PROTOCOL_F_CONFIG, message)
        access = decode_config(message)
        if access.offset + access.size > VHOST_USER_MAX_CONFIG_SIZE:
            raise ProtocolError(f"GET_CONFIG [{access.offset}, +{access.size}) is outside the config space")
        config = bytes(self.device.config)
        data = config[access.offset : access.offset + access.size].ljust(access.size, b"\0")
        return encode(message.request, encode_config(access.offset, data, access.flags))

    def _set_config(self, message: Message) -> None:
        self._require_protocol(VHOST_USER_PROTOCOL_F_CONFIG, message)
        access = decode_config(message)
        if access.flags not in (VHOST_SET_CONFIG_TYPE_MASTER, VHOST_SET_CONFIG_TYPE_MIGRATION):
            raise ProtocolError(f"SET_CONFIG flags {access.flags:#x}")
        if access.size == 0 or access.offset + access.size > len(self.device.config):
            raise ProtocolError(f"SET_CONFIG [{access.offset}, +{access.size}) is outside the config space")
        if access.flags == VHOST_SET_CONFIG_TYPE_MIGRATION:
            raise ProtocolError("SET_CONFIG for migration is not supported")
        device = self.device
        if device.status & FEATURES_OK:
            device.write_config(access.offset, access.size, int.from_bytes(access.data, "little"))
        else:
            # The guest wrote a field before the front-end sent us its features; apply it
            # after negotiation. Bounded: the newest 16 writes are kept.
            self._pending_config = (self._pending_config + [(access.offset, access.data)])[-16:]

    # -- ring start/stop ---------------------------------------------------------------------------

    def _require_protocol(self, bit: int, message: Message) -> None:
        if not self.protocol_features >> bit & 1:
            raise ProtocolError(f"{message.name} needs a protocol feature that was not negotiated")

    def _packed(self) -> bool:
        return bool(self.features is not None and self.features >> VIRTIO_F_RING_PACKED & 1)

    def _translate(self, vring: VringState) -> tuple[int, int, int]:
        """The guest addresses of the ring's three areas (§ Memory access)."""
        addr, num = vring.addr, vring.num
        if addr is None or num is None:
            raise ProtocolError(f"ring {vring.index} has no size or address")
        sizes = (16 * num, 4, 4) if self._packed() else (16 * num, 6 + 2 * num, 6 + 8 * num)
        out = []
        for uaddr, size, name in zip((addr.desc, addr.avail, addr.used), sizes, ("descriptor", "driver", "device"),
                                     strict=True):
            gpa = self.memory.uaddr_to_gpa(uaddr, size)
            if gpa is None:
                raise ProtocolError(f"ring {vring.index} {name} area at uaddr {uaddr:#x} (+{size:#x}) is not in one region")
            out.append(gpa)
        return out[0], out[1], out[2]

    def _maybe_start(self, vring: VringState) -> None:
        if vring.running or vring.failed or not vring.started or not vring.enabled or self.features is None:
            return
        if not self.device.status & DRIVER_OK or vring.num is None or vring.addr is None:
            return
        desc, driver, device_area = self._translate(vring)
        device = self.device
        if device.broken:
            # Rule 6: the device failed since; this ring starts clean on a reset device.
            self._configure(self.features & ~_NOT_DEVICE_FEATURES)
            return
        queue = device.queues[vring.index]
        packed = bool(queue.packed)
        size = vring.num
        tap = VringTap(device.memory, packed=packed, size=size, desc_addr=desc, device_addr=device_area)
        tracker = self._tracker(vring, packed, size)
        recovery: Recovery | None = None
        try:
            if packed:
                position = vring.base & 0x7FFF
                wrap = bool(vring.base >> 15 & 1)
                used = vring.base >> 16
                if position >= size:
                    raise ProtocolError(f"ring {vring.index} base position {position} is not below size {size}")
                next_avail, next_used, avail_wrap, used_wrap = position, position, wrap, wrap
                inflight: tuple[tuple[int, int], ...] = ()
                if isinstance(tracker, PackedInflight):
                    packed_tracker = tracker
                    recovery = self._recover(vring, tracker, lambda: packed_tracker.recover(
                        lambda pos: device.memory.load_u16(desc + 16 * pos + 14)))
                if recovery is not None:
                    next_used, used_wrap = recovery.used, recovery.used_wrap
                    total = sum(recovery.counts)
                    next_avail, avail_wrap = (next_used + total) % size, used_wrap ^ (next_used + total >= size)
                    inflight = tuple(zip(recovery.ids, recovery.counts, strict=True))
                else:
                    if isinstance(tracker, PackedInflight):
                        tracker.initialize(next_used, used_wrap)
                    if used and used != vring.base & 0xFFFF:
                        # Buffers a previous back-end left in flight and did not record: their
                        # ids are unknown here, so they cannot be completed.
                        _log.warning("vhost-user: ring %d starts with buffers in flight from a previous back-end "
                                     "(used %#x, avail %#x) and no inflight record; they are abandoned",
                                     vring.index, used, vring.base & 0xFFFF)
            else:
                next_used = device.memory.load_u16(device_area + 2)
                next_avail = vring.base
                avail_wrap = used_wrap = True
                inflight = ()
                if isinstance(tracker, SplitInflight):
                    split_tracker, used_idx = tracker, next_used
                    recovery = self._recover(vring, tracker, lambda: split_tracker.recover(used_idx))
                if recovery is not None:
                    next_avail = (next_used + len(recovery.resubmit)) & 0xFFFF
                else:
                    if isinstance(tracker, SplitInflight):
                        tracker.initialize(next_used)
                    if (next_avail - next_used) & 0xFFFF > size:
                        raise ProtocolError(
                            f"ring {vring.index} base {next_avail} is more than {size} ahead of used idx {next_used}"
                        )
                    if next_avail != next_used:
                        _log.warning("vhost-user: ring %d starts with %d chains in flight from a previous back-end "
                                     "and no inflight record", vring.index, (next_avail - next_used) & 0xFFFF)
            state = replace(
                queue.state(), size=size, ready=True, desc_addr=desc, driver_addr=driver, device_addr=device_area,
                next_avail=next_avail, next_used=next_used, avail_wrap=avail_wrap, used_wrap=used_wrap,
                in_order_next=0, inflight=inflight, broken=None, notify=True,
            )
            device.start_queue(vring.index, state)
            queue.set_features(device.negotiated)
        except (SnapshotError, GuestMemoryError, UsageError) as exc:
            raise ProtocolError(f"ring {vring.index} cannot start: {exc}") from None
        tap.inflight = tracker
        vring.tap = tap
        queue.observer = tap
        vring.running = True
        self._update_logging()
        if _tp_ring.on:
            _tp_ring.emit(index=vring.index, event="start", size=size, base=vring.base, packed=packed,
                          resubmitted=len(recovery.resubmit) if recovery is not None else 0)
        if recovery is not None and recovery.resubmit:
            self._resubmit(vring.index, queue, recovery)
        self._on_fds_changed()
        self.kick(vring.index)  # the driver may have queued work before the kick descriptor came

    def _tracker(self, vring: VringState, packed: bool, size: int) -> SplitInflight | PackedInflight | None:
        """The inflight region of ``vring`` (rule 7), if the front-end shared a buffer that
        has one of the right size."""
        buffer = self.inflight
        if buffer is None or not self.resubmits:
            return None
        if self.features is not None and self.features >> VIRTIO_F_IN_ORDER & 1:
            # Resubmission re-reads chains by head, which an IN_ORDER ring does not allow.
            _log.warning("vhost-user: ring %d negotiated VIRTIO_F_IN_ORDER; it is not tracked", vring.index)
            return None
        kind = PackedInflight if packed else SplitInflight
        base = buffer.region(vring.index, kind.need(buffer.queue_size))
        if base is None or size > buffer.queue_size:
            _log.warning("vhost-user: ring %d (%d entries) has no usable region in the inflight buffer "
                         "(%d queues of %d entries, %d bytes each); it is not tracked", vring.index, size,
                         buffer.num_queues, buffer.queue_size, buffer.stride)
            return None
        return kind(buffer.mapping, base, buffer.queue_size, size)

    def _recover(self, vring: VringState, tracker: SplitInflight | PackedInflight,
                 recover: Callable[[], Recovery]) -> Recovery | None:
        """What the region of ``vring`` holds, at its first start after SET_INFLIGHT_FD (rule
        7); ``None`` when it is to be started afresh."""
        if not vring.recover:
            return None
        vring.recover = False
        if not tracker.valid:
            return None  # a new buffer: nothing was ever taken
        try:
            recovery = recover()
        except (InflightError, GuestMemoryError) as exc:
            _log.warning("vhost-user: ring %d: the inflight region is not usable (%s); starting it afresh",
                         vring.index, exc)
            if _tp_ring.on:
                _tp_ring.emit(index=vring.index, event="inflight_refused", reason=str(exc))
            return None
        if recovery.resubmit:
            _log.info("vhost-user: ring %d resubmits %d request(s) a previous back-end left in flight",
                      vring.index, len(recovery.resubmit))
        return recovery

    def _resubmit(self, index: int, queue: Any, recovery: Recovery) -> None:
        """Hand the chains a previous back-end left in flight to the device (rule 7)."""
        device = self.device
        chains = []
        for item in recovery.resubmit:
            if isinstance(item, bytes):
                chain = queue.reread_buffer(device.memory, item)
            else:
                chain = queue.reread_chain(device.memory, item)
            if chain is None:  # the queue broke on it: DEVICE_NEEDS_RESET (rule 6)
                reason = queue.broken_reason
                device.fail(reason if reason is not None else GuestError(f"queue {index}: resubmission failed"))
                return
            chains.append(chain)
        try:
            device.handle_queue(index, chains)
        except GuestError as exc:
            device.fail(exc)

    def _stop(self, vring: VringState) -> None:
        if not vring.running:
            return
        self._drain()
        device = self.device
        device.stop_queue(vring.index)  # rule 3: what the device held goes back to the ring
        queue = device.queues[vring.index]
        tap, vring.tap = vring.tap, None
        if tap is not None:
            tap.log_rings()  # rule 8: after the last write, before GET_VRING_BASE is answered
            if queue.observer is tap:
                queue.observer = None
        if queue.packed:
            # Both halves (see _set_vring_base); after the drain nothing is in flight and
            # they are equal.
            avail = queue.next_avail | int(queue.avail_wrap) << 15
            used = queue.next_used | int(queue.used_wrap) << 15
            vring.base = avail | used << 16
        else:
            vring.base = queue.next_avail
        vring.running = False
        self.busy.discard(vring.index)
        if _tp_ring.on:
            # ``logged``: pages this back-end marked in the current dirty log so far (rule 8).
            _tp_ring.emit(index=vring.index, event="stop", base=vring.base,
                          logged=self.log.marked if self.log is not None else 0)
        self._on_fds_changed()

    def _retranslate(self) -> None:
        """Running rings follow a new memory table (their guest addresses may have moved)."""
        for vring in self.vrings:
            if not vring.running:
                continue
            try:
                desc, driver, device_area = self._translate(vring)
            except ProtocolError:
                self._stop(vring)
                raise
            queue = self.device.queues[vring.index]
            queue.ready = False
            queue.desc_addr, queue.driver_addr, queue.device_addr = desc, driver, device_area
            queue.ready = True

    def _drain(self) -> None:
        drain = getattr(self.device, "drain", None)
        if drain is not None:
            drain()

    # -- teardown -----------------------------------------------------------------------------------

    def close(self) -> None:
        """The front-end is gone (rule 5): drain, reset the device, unmap, close descriptors."""
        if self.closed:
            return
        self.closed = True
        for vring in self.vrings:
            vring.running = False
            if vring.tap is not None:
                vring.tap.log_rings()
        try:
            self._drain()
            self.device.write_status(0)
        finally:
            for vring in self.vrings:
                vring.close(self._close_kick)
                vring.tap = None
            for queue in self.device.queues:
                if isinstance(queue.observer, VringTap):
                    queue.observer = None
            self.memory.clear()
            self.busy.clear()
            close_fds(self.take_reply_fds())
            for held in (self.inflight, self.log):
                if held is not None:
                    held.close()
            self.inflight = self.log = None


def _no_payload(message: Message) -> None:
    if message.payload:
        # QEMU sends these with size 0; some front-ends send a zero u64. Anything else is odd
        # but harmless, so only the size is bounded (by the framer).
        if len(message.payload) != 8:
            raise ProtocolError(f"{message.name} has a {len(message.payload)}-byte payload")
    if message.fds:
        raise ProtocolError(f"{message.name} carries {len(message.fds)} descriptors")


def _signal(fd: int) -> None:
    try:
        os.write(fd, (1).to_bytes(8, "little"))
    except BlockingIOError:
        pass  # the counter is saturated: the peer has a notification pending anyway
    except OSError as exc:
        _log.debug("vhost-user: signalling fd %d failed: %s", fd, exc)


Handler = Callable[[VhostUserSession, Message], Any]

_HANDLERS: dict[int, Handler] = {
    VHOST_USER_GET_FEATURES: VhostUserSession._get_features,
    VHOST_USER_SET_FEATURES: VhostUserSession._set_features,
    VHOST_USER_SET_OWNER: VhostUserSession._set_owner,
    VHOST_USER_RESET_OWNER: VhostUserSession._reset_owner,
    VHOST_USER_SET_MEM_TABLE: VhostUserSession._set_mem_table,
    VHOST_USER_SET_VRING_NUM: VhostUserSession._set_vring_num,
    VHOST_USER_SET_VRING_ADDR: VhostUserSession._set_vring_addr,
    VHOST_USER_SET_VRING_BASE: VhostUserSession._set_vring_base,
    VHOST_USER_GET_VRING_BASE: VhostUserSession._get_vring_base,
    VHOST_USER_SET_VRING_KICK: VhostUserSession._set_vring_kick,
    VHOST_USER_SET_VRING_CALL: VhostUserSession._set_vring_call,
    VHOST_USER_SET_VRING_ERR: VhostUserSession._set_vring_err,
    VHOST_USER_GET_PROTOCOL_FEATURES: VhostUserSession._get_protocol_features,
    VHOST_USER_SET_PROTOCOL_FEATURES: VhostUserSession._set_protocol_features,
    VHOST_USER_GET_QUEUE_NUM: VhostUserSession._get_queue_num,
    VHOST_USER_SET_VRING_ENABLE: VhostUserSession._set_vring_enable,
    VHOST_USER_GET_CONFIG: VhostUserSession._get_config,
    VHOST_USER_SET_CONFIG: VhostUserSession._set_config,
    VHOST_USER_RESET_DEVICE: VhostUserSession._reset_device,
    VHOST_USER_GET_MAX_MEM_SLOTS: VhostUserSession._get_max_mem_slots,
    VHOST_USER_ADD_MEM_REG: VhostUserSession._add_mem_reg,
    VHOST_USER_REM_MEM_REG: VhostUserSession._rem_mem_reg,
    VHOST_USER_GET_INFLIGHT_FD: VhostUserSession._get_inflight_fd,
    VHOST_USER_SET_INFLIGHT_FD: VhostUserSession._set_inflight_fd,
    VHOST_USER_SET_LOG_BASE: VhostUserSession._set_log_base,
    VHOST_USER_SET_LOG_FD: VhostUserSession._set_log_fd,
}
