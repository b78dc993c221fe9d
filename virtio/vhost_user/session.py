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

from devmodels import GuestMemoryError, UsageError
from devmodels._errors import SnapshotError
from devmodels._trace import tracepoint

from ..defs import (
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_NOTIFICATION_DATA,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
)
from ..device import VirtioDevice
from .defs import (
    VHOST_SET_CONFIG_TYPE_MASTER,
    VHOST_SET_CONFIG_TYPE_MIGRATION,
    VHOST_USER_ADD_MEM_REG,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_GET_CONFIG,
    VHOST_USER_GET_FEATURES,
    VHOST_USER_GET_MAX_MEM_SLOTS,
    VHOST_USER_GET_PROTOCOL_FEATURES,
    VHOST_USER_GET_QUEUE_NUM,
    VHOST_USER_GET_VRING_BASE,
    VHOST_USER_MAX_CONFIG_SIZE,
    VHOST_USER_MAX_MEM_SLOTS,
    VHOST_USER_PROTOCOL_F_CONFIG,
    VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
    VHOST_USER_PROTOCOL_F_MQ,
    VHOST_USER_PROTOCOL_F_REPLY_ACK,
    VHOST_USER_PROTOCOL_F_RESET_DEVICE,
    VHOST_USER_REM_MEM_REG,
    VHOST_USER_RESET_DEVICE,
    VHOST_USER_RESET_OWNER,
    VHOST_USER_SET_CONFIG,
    VHOST_USER_SET_FEATURES,
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
)
from .memory import MemoryTable, MemoryTableError
from .messages import (
    Message,
    ProtocolError,
    VringAddr,
    close_fds,
    decode_config,
    decode_mem_reg,
    decode_memory,
    decode_u64,
    decode_vring_addr,
    decode_vring_state,
    encode,
    encode_config,
    encode_u64,
    encode_vring_state,
)

__all__ = ["VhostUserSession", "VringState", "PROTOCOL_FEATURES", "UNSUPPORTED_TRANSPORT_FEATURES"]

_log = logging.getLogger("devmodels.vhost_user")
_tp_msg = tracepoint("vhost_user.message")
_tp_error = tracepoint("vhost_user.error")
_tp_ring = tracepoint("vhost_user.ring")

PROTOCOL_FEATURES = (
    1 << VHOST_USER_PROTOCOL_F_MQ
    | 1 << VHOST_USER_PROTOCOL_F_REPLY_ACK
    | 1 << VHOST_USER_PROTOCOL_F_CONFIG
    | 1 << VHOST_USER_PROTOCOL_F_RESET_DEVICE
    | 1 << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS
)
"""Protocol features this back-end offers."""

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
        VHOST_USER_F_PROTOCOL_FEATURES."""
        return (self.device.features.offered & ~UNSUPPORTED_TRANSPORT_FEATURES) | 1 << VHOST_USER_F_PROTOCOL_FEATURES

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
            if message.request in _HAS_REPLY:
                # The front-end waits for a payload this request cannot have.
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
        device_features = value & ~(1 << VHOST_USER_F_PROTOCOL_FEATURES)
        first = self.features is None
        protocol = bool(value >> VHOST_USER_F_PROTOCOL_FEATURES & 1)
        self.features = value
        if not protocol:
            # § Ring states: without protocol features the rings start enabled.
            for vring in self.vrings:
                vring.enabled = True
        device = self.device
        if not first and device.status & FEATURES_OK and device.negotiated == device_features and not device.broken:
            return  # QEMU resends the same features on every start and log change
        self._configure(device_features)

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
        if addr.flags:
            # VHOST_VRING_F_LOG: dirty logging needs LOG_SHMFD, which is not offered.
            raise ProtocolError(f"ring {addr.index}: vring flags {addr.flags:#x} (logging) are not supported")
        if vring.running:
            raise ProtocolError(f"ring {addr.index} is running; stop it before moving it")
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
            self._configure(self.features & ~(1 << VHOST_USER_F_PROTOCOL_FEATURES))
            return
        queue = device.queues[vring.index]
        packed = bool(queue.packed)
        size = vring.num
        try:
            if packed:
                position = vring.base & 0x7FFF
                wrap = bool(vring.base >> 15 & 1)
                used = vring.base >> 16
                if position >= size:
                    raise ProtocolError(f"ring {vring.index} base position {position} is not below size {size}")
                if used and used != vring.base & 0xFFFF:
                    # Buffers a previous back-end left in flight: their ids are unknown
                    # here (no inflight tracking), so they cannot be completed.
                    _log.warning("vhost-user: ring %d starts with buffers in flight from a previous back-end "
                                 "(used %#x, avail %#x); they are abandoned", vring.index, used, vring.base & 0xFFFF)
                next_avail, next_used, avail_wrap, used_wrap = position, position, wrap, wrap
            else:
                next_avail = vring.base
                next_used = device.memory.load_u16(device_area + 2)
                avail_wrap = used_wrap = True
                if (next_avail - next_used) & 0xFFFF > size:
                    raise ProtocolError(
                        f"ring {vring.index} base {next_avail} is more than {size} ahead of used idx {next_used}"
                    )
                if next_avail != next_used:
                    _log.warning("vhost-user: ring %d starts with %d chains in flight from a previous back-end",
                                 vring.index, (next_avail - next_used) & 0xFFFF)
            state = replace(
                queue.state(), size=size, ready=True, desc_addr=desc, driver_addr=driver, device_addr=device_area,
                next_avail=next_avail, next_used=next_used, avail_wrap=avail_wrap, used_wrap=used_wrap,
                in_order_next=0, inflight=(), broken=None, notify=True,
            )
            device.start_queue(vring.index, state)
            queue.set_features(device.negotiated)
        except (SnapshotError, GuestMemoryError, UsageError) as exc:
            raise ProtocolError(f"ring {vring.index} cannot start: {exc}") from None
        vring.running = True
        if _tp_ring.on:
            _tp_ring.emit(index=vring.index, event="start", size=size, base=vring.base, packed=packed)
        self._on_fds_changed()
        self.kick(vring.index)  # the driver may have queued work before the kick descriptor came

    def _stop(self, vring: VringState) -> None:
        if not vring.running:
            return
        self._drain()
        device = self.device
        device.stop_queue(vring.index)  # rule 3: what the device held goes back to the ring
        queue = device.queues[vring.index]
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
            _tp_ring.emit(index=vring.index, event="stop", base=vring.base)
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
        try:
            self._drain()
            self.device.write_status(0)
        finally:
            for vring in self.vrings:
                vring.close(self._close_kick)
            self.memory.clear()
            self.busy.clear()


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
}
