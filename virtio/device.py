"""The virtio device base class: everything a virtio device does that is not device-specific.

A device subclasses ``VirtioDevice`` and declares its device ID, offered features, queues
(count and maximum sizes) and device configuration bytes (optionally described by a
``construct`` layout); it implements ``handle_queue(index, chains)`` and pushes used
entries back with ``push_used``. A transport (``virtio.transport.pci``/``mmio``) maps its
registers onto the transport-neutral entry points here, so both transports share one
status machine, one feature negotiation and one set of queue-programming rules.

Rules:

1. Sans-IO (CONVENTIONS: sans-io, injection): notifications come in as calls (``notify_queue(i)``), interrupts
   leave through the attached ``Transport`` (``signal_used``/``signal_config``); no threads,
   clocks or file descriptors.
2. Status writes go through ``virtio.status.transition`` only; feature windows through
   ``virtio.features.Features`` only.
3. Queue programming (size, addresses, enable) is accepted only after FEATURES_OK (§3.1.1
   step 7), only while the queue is disabled (§4.1.4.3.2, §4.2.2.2), and after DRIVER_OK
   only when VIRTIO_F_RING_RESET was negotiated (the re-enable flow of §2.6.1.2). Anything
   else is dropped with a ``virtio.queue_ignored`` trace event.
4. The device touches a queue only while it is live: DRIVER_OK set, neither FAILED nor
   DEVICE_NEEDS_RESET set, the queue enabled and not broken (§2.1.2, §4.2.2.1).
5. Broken is sticky (CONVENTIONS: sticky-broken): a queue that breaks, or a ``GuestError`` escaping a device
   hook, sets DEVICE_NEEDS_RESET and sends a configuration change notification if
   DRIVER_OK is set (§2.1.2). Every queue entry point then returns early until reset.
   ``error`` keeps the first cause (a ``DenialOfService`` lets a VMM stop the VM).
6. Each queue has an *epoch* that changes whenever its state is thrown away (device reset,
   queue reset). A device that completes work later (a block backend) records the epoch
   when it pops a chain and passes it to ``push_used``, which drops stale completions
   instead of writing them into a ring the driver has since replaced.
7. The configuration generation changes when the device changes its configuration
   (``update_config``), at most once between two driver observations of the
   configuration, so an 8-bit counter cannot wrap back to a value the driver holds
   (§4.1.4.3.1 note).
8. Every error state is left by a reset (§2.1.2, §2.4): ``reset`` (status 0 on any
   transport) clears DEVICE_NEEDS_RESET, ``error``, broken queues, pending work and what
   the device holds, and the full initialization then works again. A transport that keeps
   ring positions itself (vhost-user) stops a queue with ``stop_queue`` (the device gives
   back what it holds: nothing is lost, the position is where a restart resumes) and
   starts it with ``start_queue`` (a new epoch: nothing from before is used into it).
9. Notifications are never lost for good, even to a driver whose suppression stores
   become visible late (a guest that drops its memory barriers): the queue re-checks the
   ring after publishing ``avail_event`` (``Virtqueue`` rule 5), and ``recheck`` lets a
   serving loop send a used buffer notification still owed and process buffers made
   available without a notification, bounded by one pass over the queues per call.

10. Served by a loop (``devmodels.runtime.ServedDevice``): a notification marks the device
    as having posted work; ``run_posted`` (which the loop runs after the access is answered)
    processes queues whose budget ran out and calls ``recheck`` once, and asks, through
    ``next_deadline``/``tick``, for one more ``recheck`` ``IDLE_RECHECK_NS`` later — the
    "once more when idle" of rule 9, on the loop's clock, never the device's own. Devices
    with backends add their descriptors, waker and completions (virtio-blk, virtio-net).
11. Snapshots (``devmodels._state``): ``quiesce()`` runs the queues left over and has the
    device finish what it holds (``finish_in_flight``: virtio-blk's requests, virtio-net's
    receive chains), then ``state()`` copies; ``state()`` refuses, naming ``quiesce()``,
    while ``unfinished_work()`` says what is left. The device's own section is typed:
    ``VirtioDeviceState[D]`` with ``D`` the ``device_state_type``, which carries the
    device's constructor arguments (``args``); ``restore`` checks the section, args
    first, before anything else. A restored live device rechecks its queues once when
    served (rule 10), so buffers made available around the snapshot are not left waiting.

Hostile guests: no guest action (register write, descriptor, ring index, address) and no
message a VMM peer sends may end a server process or stall its rings beyond a stated
bound. Malformed input gets the architected behaviour (DEVICE_NEEDS_RESET, an error
status in the device's own used entry) and a trace event. A ``UsageError`` is for host
code misusing an API; one that a guest can reach is a bug. A device author keeps to this
by raising ``GuestError`` (never anything else) for what the guest got wrong, by bounding
every loop and every buffer by the queue sizes, and by handing back, in ``on_queue_stop``,
buffers taken from a queue and not yet used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import construct as cs

from devmodels import GuestError, GuestMemory, SnapshotError, UsageError
from devmodels.args import check_memory
from devmodels.snapshot import check_bool, check_bytes, check_int, check_type, check_version, require_quiesced
from devmodels.trace import tracepoint
from devmodels.runtime import ServedDeviceDefaults

from .defs import (
    DEVICE_NEEDS_RESET,
    DRIVER_OK,
    FAILED,
    FEATURES_OK,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_ID_MAX,
    VIRTQUEUE_MAX_SIZE,
)
from .features import Features
from .queue import VirtqueueState
from .queue.chain import Chain
from .status import DRIVER_BITS, VALID_TRANSITIONS, StatusEffect, status_names, transition

__all__ = [
    "VirtioDevice",
    "VirtioDeviceState",
    "Transport",
    "NullTransport",
    "RecordingTransport",
    "QueueArea",
    "QueueFactory",
]

_tp_status = tracepoint("virtio.status")
_tp_needs_reset = tracepoint("virtio.needs_reset")
_tp_queue_ignored = tracepoint("virtio.queue_ignored")
_tp_notify_ignored = tracepoint("virtio.notify_ignored")
_tp_config_ignored = tracepoint("virtio.config_ignored")
_tp_push_dropped = tracepoint("virtio.push_dropped")
_tp_recheck = tracepoint("virtio.recheck")


class QueueArea:
    """The three areas of a virtqueue (§2.6), as indices for the address entry points."""

    DESC = 0
    DRIVER = 1
    DEVICE = 2
    _ATTRS = ("desc_addr", "driver_addr", "device_addr")


class Transport(Protocol):
    """What a device needs from its transport: the two notifications and a reset hook."""

    def signal_used(self, index: int) -> None:
        """Send a used buffer notification for queue ``index``."""
        ...

    def signal_config(self) -> None:
        """Send a configuration change notification."""
        ...

    def device_reset(self) -> None:
        """The device was reset: clear transport state (vectors, ISR, interrupt status)."""
        ...


class NullTransport:
    """The transport of a device that is not plugged anywhere: notifications are dropped."""

    def signal_used(self, index: int) -> None:
        """Drop the notification."""

    def signal_config(self) -> None:
        """Drop the notification."""

    def device_reset(self) -> None:
        """Nothing to reset."""


class RecordingTransport:
    """A transport that records notifications (tests): ``used`` indices, ``config`` count."""

    def __init__(self) -> None:
        self.used: list[int] = []
        self.config = 0
        self.resets = 0

    def signal_used(self, index: int) -> None:
        """Record a used buffer notification."""
        self.used.append(index)

    def signal_config(self) -> None:
        """Count a configuration change notification."""
        self.config += 1

    def device_reset(self) -> None:
        """Count a reset."""
        self.resets += 1


QueueFactory = Callable[[int, bool], Any]
"""Builds a virtqueue: ``factory(max_size, packed)``; default ``virtio.queue.Virtqueue``."""


def _default_queue_factory(max_size: int, packed: bool) -> Any:
    from .queue import Virtqueue

    return Virtqueue(max_size, packed=packed)


D = TypeVar("D")


@dataclass(frozen=True)
class VirtioDeviceState(Generic[D]):
    """Snapshot of the transport-neutral part of a virtio device (CONVENTIONS: snapshots).

    ``queues`` holds each queue's own state (``Virtqueue.state()``); ``device`` is the
    subclass's section, of the subclass's ``device_state_type`` ``D`` (``None`` when it has
    none). It decodes typed: ``from_dict(VirtioDeviceState[VirtioBlkState], data)``
    (``VirtioDevice.state_type`` is that type for a device).
    """

    version: int
    status: int
    offered: int
    driver_features: int
    negotiated: int
    features_locked: bool
    device_feature_select: int
    driver_feature_select: int
    queue_select: int
    generation: int
    generation_observed: bool
    config: bytes
    packed: bool
    queues: tuple[VirtqueueState, ...]
    epochs: tuple[int, ...]
    device: D | None = None


_STATE_VERSION = 1
# Driver-bit states the table can produce (FAILED and DEVICE_NEEDS_RESET may be added).
_REACHABLE = {0} | {after for _, after in VALID_TRANSITIONS.values()}


class VirtioDevice(ServedDeviceDefaults):
    """Base class of virtio devices.

    Args:
        memory: guest RAM the queues live in.
        features: device-specific feature bits offered (a mask; ``VIRTIO_F_*`` transport
            bits a device supports are included here too). VERSION_1 is always offered.
        queue_sizes: the maximum size of each queue (a power of two, 1..32768).
        config: the initial device configuration bytes (``config_layout.build(...)``).
        budget: at most this many chains are popped per notification (default: the queue
            size, so one notification drains what the driver made available).
        queue_factory: builds the queues (default ``virtio.queue.Virtqueue``).
        name: for traces.

    Raises:
        UsageError: a bad device ID, queue size, feature mask or budget.
    """

    device_id: ClassVar[int] = 0
    """The virtio device ID (§5); a subclass sets it."""

    config_layout: ClassVar[cs.Construct | None] = None
    """Optional ``construct`` layout of the configuration bytes (for ``config_fields``)."""

    device_state_type: ClassVar[type | None] = None
    """The dataclass ``device_state`` returns, if any (the ``D`` of ``VirtioDeviceState[D]``)."""

    snapshot_kind: ClassVar[str] = ""
    """The kind a snapshot file names (``devmodels.snapshot_file``); a device that cannot be
    rebuilt from its state (no args section) has none."""

    QUIESCE_ROUNDS: ClassVar[int] = 64
    """At most this many rounds of leftover queue work and ``finish_in_flight`` in one
    ``quiesce()`` (a stopped driver adds nothing, so a few rounds finish everything)."""

    def __init__(
        self,
        memory: GuestMemory,
        *,
        features: int = 0,
        queue_sizes: Sequence[int] = (),
        config: bytes = b"",
        budget: int | None = None,
        queue_factory: QueueFactory | None = None,
        name: str = "",
    ) -> None:
        check_memory(type(self).__name__, memory)
        if not 1 <= self.device_id <= VIRTIO_ID_MAX:
            raise UsageError(f"{type(self).__name__}.device_id must be 1..{VIRTIO_ID_MAX}, got {self.device_id}")
        sizes = tuple(queue_sizes)
        for i, size in enumerate(sizes):
            # §4.1.4.3.1: without packed rings the device presents 0 or a power of two in
            # queue_size, and after reset that is the maximum.
            if not isinstance(size, int) or not 1 <= size <= VIRTQUEUE_MAX_SIZE or size & (size - 1):
                raise UsageError(f"queue {i}: maximum size must be a power of two in 1..{VIRTQUEUE_MAX_SIZE}, got {size!r}")
        if len(sizes) > 0xFFFF:
            raise UsageError(f"{len(sizes)} queues: num_queues is a 16-bit field")
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise UsageError(f"budget must be a positive integer, got {budget!r}")
        self.memory = memory
        self.name = name or type(self).__name__
        self.features = Features(features)
        self.max_sizes = sizes
        self.budget = budget
        self._queue_factory: QueueFactory = queue_factory or _default_queue_factory
        self.pending: set[int] = set()
        self._notified = False  # a notification arrived since the last run_posted (rule 10)
        self._now_ns = 0  # the loop's clock, from tick (rule 10)
        self._idle_recheck_at: int | None = None
        self.config = bytearray(config)
        self.transport: Transport = NullTransport()
        self._attached = False
        self.status = 0
        self.error: GuestError | None = None
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self._generation = 0
        self._generation_observed = True
        self._packed = False
        self.queues: list[Any] = self._make_queues(False)
        self._epochs = [0] * len(sizes)

    def _make_queues(self, packed: bool) -> list[Any]:
        queues = []
        for index, size in enumerate(self.max_sizes):
            queue = self._queue_factory(size, packed)
            queue.name = f"{self.name}.q{index}"
            queues.append(queue)
        return queues

    # -- wiring ----------------------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        """Connect the transport that carries this device (a transport calls this once).

        Raises:
            UsageError: the device already has a transport.
        """
        if self._attached:
            raise UsageError(f"{self.name} is already attached to {self.transport!r}")
        self.transport = transport
        self._attached = True

    @property
    def num_queues(self) -> int:
        """How many queues the device has."""
        return len(self.queues)

    # -- hooks a device overrides ------------------------------------------------------------

    def handle_queue(self, index: int, chains: list[Chain]) -> None:
        """Process chains the driver made available on queue ``index`` (override).

        Called by the default ``on_queue_notify`` with at most ``budget`` chains. Push
        results back with ``push_used`` now or later. A ``GuestError`` raised here sets
        DEVICE_NEEDS_RESET (rule 5); per-request errors with a wire status belong in the
        device's own used entries instead.
        """
        raise UsageError(f"{type(self).__name__} does not implement handle_queue (queue {index})")

    def on_queue_notify(self, index: int) -> bool:
        """The driver notified live queue ``index``; return whether work may remain.

        The default pops up to ``budget`` chains and hands them to ``handle_queue``. A
        device that consumes buffers only when it has data for them (a NIC's receive
        queue) overrides this and calls ``pop`` itself later.
        """
        budget = self.budget or self.queues[index].size or 1
        chains = self.pop(index, budget)
        if chains:
            self.handle_queue(index, chains)
        return len(chains) >= budget

    def validate_features(self, accepted: int) -> str | None:
        """Device-specific FEATURES_OK check: return why ``accepted`` is refused, or ``None``."""
        return None

    def activate(self) -> None:
        """The driver set DRIVER_OK: the device is live (override to start work)."""

    def reset_device(self) -> None:
        """Device-specific part of a reset: drop in-flight work, restore writable config."""

    def on_queue_reset(self, index: int) -> None:
        """Queue ``index`` was reset by the driver (VIRTIO_F_RING_RESET), or started again
        by its transport (``start_queue``): a new epoch; drop what was held of the old one."""

    def on_queue_stop(self, index: int) -> None:
        """Queue ``index`` is stopping without a reset (``stop_queue``): give back what the
        device holds of it, so the queue's position is where a restart resumes (rule 8).

        Buffers taken and not used go back with ``self.queues[index].rewind(chains)``;
        requests in flight are completed (or were drained before). The default holds
        nothing.
        """

    def awaits_buffers(self, index: int) -> bool:
        """Whether the device acts on buffers made available on queue ``index`` now, so
        that ``recheck`` processes ones that came without a notification (rule 9).

        The default (every queue) suits a device that drains a queue when notified; a NIC's
        receive queue waits for buffers only while frames are held for it.
        """
        return True

    def on_config_write(self, offset: int, data: bytes) -> None:
        """The driver wrote ``data`` at ``offset`` of the configuration (bounds checked).

        The default ignores it (read-only configuration). A device with writable fields
        updates ``self.config`` here; no generation change or notification is needed.
        """
        if _tp_config_ignored.on:
            _tp_config_ignored.emit(device=self.name, offset=offset, length=len(data), reason="read-only")

    # -- helpers for devices -----------------------------------------------------------------

    @property
    def negotiated(self) -> int:
        """The negotiated feature mask (0 until FEATURES_OK is accepted)."""
        return self.features.negotiated

    def has_feature(self, number: int) -> bool:
        """Whether feature bit ``number`` was negotiated."""
        return self.features.has(number)

    @property
    def live(self) -> bool:
        """DRIVER_OK is set and neither FAILED nor DEVICE_NEEDS_RESET (rule 4)."""
        return self.status & (DRIVER_OK | FAILED | DEVICE_NEEDS_RESET) == DRIVER_OK

    @property
    def broken(self) -> bool:
        """DEVICE_NEEDS_RESET is set (sticky until reset)."""
        return bool(self.status & DEVICE_NEEDS_RESET)

    def queue_live(self, index: int) -> bool:
        """Whether the device may touch queue ``index`` now (rule 4)."""
        if not self.live or not 0 <= index < len(self.queues):
            return False
        queue = self.queues[index]
        return bool(queue.ready) and not queue.broken

    def queue_epoch(self, index: int) -> int:
        """The epoch of queue ``index`` (rule 6)."""
        return self._epochs[index]

    def pop(self, index: int, budget: int) -> list[Chain]:
        """Up to ``budget`` available chains of queue ``index``; ``[]`` if it is not live."""
        if not self.queue_live(index) or budget <= 0:
            return []
        queue = self.queues[index]
        try:
            chains = list(queue.pop_batch(self.memory, budget))
        except GuestError as exc:
            self.fail(exc)
            return []
        if queue.broken:
            self._queue_broke(index)
        return chains

    def push_used(self, index: int, used: Sequence[tuple[Chain | int, int]], *, epoch: int | None = None) -> bool:
        """Return ``(chain or head, written length)`` entries to the driver on queue ``index``.

        Sends a used buffer notification when the queue asks for one. Returns ``False``
        (and writes nothing) when the queue is not live or ``epoch`` is stale (rule 6).
        """
        if not used:
            return True
        if not self.queue_live(index) or (epoch is not None and epoch != self._epochs[index]):
            if _tp_push_dropped.on:
                _tp_push_dropped.emit(device=self.name, queue=index, count=len(used), epoch=epoch)
            return False
        queue = self.queues[index]
        try:
            notify = queue.push_batch(self.memory, used)
        except GuestError as exc:
            self.fail(exc)
            return False
        if queue.broken:
            self._queue_broke(index)
            return False
        if notify:
            self.transport.signal_used(index)
        return True

    def fail(self, error: GuestError) -> None:
        """Enter the sticky DEVICE_NEEDS_RESET state because of ``error`` (rule 5)."""
        if self.error is None:
            self.error = error
        if _tp_needs_reset.on:
            _tp_needs_reset.emit(device=self.name, error=str(error), kind=type(error).__name__)
        if self.status & DEVICE_NEEDS_RESET:
            return
        self.status |= DEVICE_NEEDS_RESET
        if self.status & DRIVER_OK:
            # §2.1.2: after setting DEVICE_NEEDS_RESET with DRIVER_OK set, the device MUST
            # send a device configuration change notification.
            self.transport.signal_config()

    def _queue_broke(self, index: int) -> None:
        reason = self.queues[index].broken_reason
        error = reason if isinstance(reason, GuestError) else GuestError(f"queue {index} broken: {reason}")
        self.fail(error)

    def update_config(self, offset: int, data: bytes) -> None:
        """The device changes its configuration (link up, new capacity) (rule 7).

        Bumps the generation and, with DRIVER_OK set, notifies the driver; nothing happens
        if the bytes are unchanged.

        Raises:
            UsageError: the range is outside the configuration.
        """
        if offset < 0 or offset + len(data) > len(self.config):
            raise UsageError(f"{self.name}: config update [{offset}, +{len(data)}) outside {len(self.config)} bytes")
        if self.config[offset : offset + len(data)] == data:
            return
        self.config[offset : offset + len(data)] = data
        if self._generation_observed:
            self._generation = (self._generation + 1) & 0xFF
            self._generation_observed = False
        # QEMU and Linux both treat a configuration change before DRIVER_OK as not worth a
        # notification; the driver reads the configuration during initialization anyway.
        if self.status & DRIVER_OK:
            self.transport.signal_config()

    def config_fields(self) -> Any:
        """The configuration parsed with ``config_layout`` (a construct ``Container``)."""
        if self.config_layout is None:
            raise UsageError(f"{type(self).__name__} declares no config_layout")
        return self.config_layout.parse(bytes(self.config))

    def set_config_fields(self, **values: Any) -> None:
        """Change named fields of ``config_layout`` (a device-side change, rule 7)."""
        fields = self.config_fields()
        for key, value in values.items():
            if key not in fields:
                raise UsageError(f"{type(self).__name__}.config_layout has no field {key!r}")
            fields[key] = value
        assert self.config_layout is not None
        self.update_config(0, self.config_layout.build(fields))

    # -- transport entry points: status and features ---------------------------------------------

    def write_status(self, value: int) -> None:
        """The driver wrote ``device status`` (§2.1): apply the transition table."""
        before = self.status
        effect, after = transition(before, value)
        if effect is StatusEffect.RESET:
            self.reset()
        elif effect is StatusEffect.NEGOTIATE:
            self._negotiate(after)
        elif effect is StatusEffect.ILLEGAL:
            self.fail(GuestError(f"illegal status write {value:#x} in state {status_names(before)}"))
        else:
            self.status = after
            if effect is StatusEffect.ACTIVATE and self.live:
                self.activate()
        if _tp_status.on:
            _tp_status.emit(
                device=self.name, before=status_names(before), written=value,
                effect=effect.value, after=status_names(self.status), features=self.features.negotiated,
            )

    def _negotiate(self, after: int) -> None:
        accepted = self.features.driver
        reason = self.features.check(accepted)
        if reason is None:
            reason = self.validate_features(accepted)
        if reason is not None:
            # §2.2.2: the device MUST fail to set FEATURES_OK for a subset it refuses.
            if _tp_status.on:
                _tp_status.emit(device=self.name, refused=accepted, reason=reason)
            return
        self.features.accept(accepted)
        packed = bool(accepted >> VIRTIO_F_RING_PACKED & 1)
        if packed != self._packed:
            self._packed = packed
            self.queues = self._make_queues(packed)
        self.status = after

    def read_device_features(self) -> int:
        """``device_feature`` / ``DeviceFeatures`` for the current select."""
        return self.features.device_window(self.device_feature_select)

    def read_driver_features(self) -> int:
        """``driver_feature`` for the current select (mirrors what the driver wrote)."""
        return self.features.driver_window(self.driver_feature_select)

    def write_driver_features(self, value: int) -> None:
        """``driver_feature`` / ``DriverFeatures`` write for the current select."""
        self.features.write_driver_window(self.driver_feature_select, value)

    # -- transport entry points: queues --------------------------------------------------------

    def queue_max_size(self, index: int) -> int:
        """The maximum size of queue ``index``, 0 if it does not exist (§4.1.4.3.1)."""
        return self.max_sizes[index] if 0 <= index < len(self.max_sizes) else 0

    def queue_size(self, index: int) -> int:
        """The current size of queue ``index``, 0 if it does not exist."""
        return int(self.queues[index].size) if 0 <= index < len(self.queues) else 0

    def queue_ready(self, index: int) -> bool:
        """Whether queue ``index`` is enabled."""
        return 0 <= index < len(self.queues) and bool(self.queues[index].ready)

    def queue_address(self, index: int, area: int) -> int:
        """The 64-bit address of ``area`` (a ``QueueArea``) of queue ``index``, 0 if none."""
        if not 0 <= index < len(self.queues) or area not in (0, 1, 2):
            return 0
        return int(getattr(self.queues[index], QueueArea._ATTRS[area]))

    def _programmable(self, index: int, what: str) -> Any | None:
        # Rule 3. §3.1.1: virtqueues are set up after FEATURES_OK (step 7) and before
        # DRIVER_OK (step 8); §2.6.1.2 re-enables a reset queue while the device is live.
        reason = None
        if not 0 <= index < len(self.queues):
            reason = "no such queue"
        elif self.status & (DEVICE_NEEDS_RESET | FAILED):
            reason = "device needs reset"
        elif not self.status & FEATURES_OK:
            reason = "before FEATURES_OK"
        elif self.status & DRIVER_OK and not self.features.has(VIRTIO_F_RING_RESET):
            reason = "after DRIVER_OK"
        elif self.queues[index].ready:
            reason = "queue is enabled"
        if reason is None:
            return self.queues[index]
        if _tp_queue_ignored.on:
            _tp_queue_ignored.emit(device=self.name, queue=index, what=what, reason=reason)
        return None

    def set_queue_size(self, index: int, value: int) -> None:
        """``queue_size`` / ``QueueNum`` write: 1..max, a power of two for split rings (§2.7)."""
        queue = self._programmable(index, "size")
        if queue is None:
            return
        maximum = self.max_sizes[index]
        power_of_two = value > 0 and value & (value - 1) == 0
        if not 1 <= value <= maximum or not (self._packed or power_of_two):
            # §4.1.4.3.2: the driver MUST NOT write 0 (packed) or a non-power of two (split);
            # the size stays what it was, so the device never presents an invalid one.
            if _tp_queue_ignored.on:
                _tp_queue_ignored.emit(device=self.name, queue=index, what="size", reason=f"invalid size {value}")
            return
        was_broken = queue.broken
        queue.size = value
        if queue.broken and not was_broken:
            # A packed ring resized under buffers it still holds (Virtqueue rule 2).
            self._queue_broke(index)

    def write_queue_address(self, index: int, area: int, half: int, value: int) -> None:
        """Write the low (``half=0``) or high (``half=1``) 32 bits of a queue area address."""
        queue = self._programmable(index, QueueArea._ATTRS[area])
        if queue is None:
            return
        attr = QueueArea._ATTRS[area]
        shift = 32 * half
        current = int(getattr(queue, attr))
        setattr(queue, attr, (current & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift))

    def set_queue_ready(self, index: int, ready: bool) -> None:
        """Enable queue ``index`` (``queue_enable``/``QueueReady`` = 1) or stop it (MMIO 0)."""
        if not ready:
            # §4.2.2.2: an MMIO driver stops using a queue by writing 0 to QueueReady.
            if 0 <= index < len(self.queues) and self.queues[index].ready:
                self.queues[index].ready = False
            return
        queue = self._programmable(index, "enable")
        if queue is None:
            return
        # Ring addresses are the ring's to check (misaligned or outside RAM: the queue
        # breaks on first use, §2.7.1, §2.8.11, and rule 5 applies).
        queue.set_features(self.features.negotiated)
        queue.ready = True

    def reset_queue(self, index: int) -> None:
        """``queue_reset``/``QueueReset`` = 1: reset one queue (§2.6.1, VIRTIO_F_RING_RESET)."""
        if not self.features.has(VIRTIO_F_RING_RESET) or not 0 <= index < len(self.queues):
            if _tp_queue_ignored.on:
                _tp_queue_ignored.emit(device=self.name, queue=index, what="reset", reason="not negotiated")
            return
        self._reset_queue_state(index)
        self.on_queue_reset(index)

    def stop_queue(self, index: int) -> None:
        """Stop queue ``index`` without resetting it (vhost-user GET_VRING_BASE, rule 8).

        The device gives back what it holds (``on_queue_stop``), then the queue stops; its
        position (``next_avail``, and ``next_used`` for packed rings) is where a restart
        resumes, with no buffer lost to the driver.
        """
        if not 0 <= index < len(self.queues):
            return
        try:
            self.on_queue_stop(index)
        except GuestError as exc:
            self.fail(exc)
        queue = self.queues[index]
        if queue.broken:
            self._queue_broke(index)
        queue.ready = False
        self.pending.discard(index)

    def start_queue(self, index: int, state: VirtqueueState) -> None:
        """Start queue ``index`` from ``state``: ring positions kept by the transport
        (vhost-user SET_VRING_BASE and SET_VRING_KICK, rule 8). The queue gets a new epoch
        (rule 6): whatever the device still held of it is dropped (``on_queue_reset``) and
        nothing from before is used into the restarted ring.

        Raises:
            SnapshotError: ``state`` does not fit this queue; nothing changed.
        """
        queue = self.queues[index]
        queue.restore(state)
        self._epochs[index] += 1
        self.pending.discard(index)
        self.on_queue_reset(index)

    def recheck(self) -> None:
        """Catch up with a driver whose notification-suppression stores came late (rule 9).

        For every live queue: send a used buffer notification the driver now asks for and
        no push sent (``Virtqueue.notification_owed``), then process buffers made available
        without a notification when the device awaits them (``awaits_buffers``). A serving
        loop calls this once per batch of events and once more when it goes idle; each call
        reads a few ring fields per queue and pops at most ``budget`` chains per queue. What
        it catches is traced (``virtio.recheck``).
        """
        memory = self.memory
        for index, queue in enumerate(self.queues):
            if not self.queue_live(index):
                continue
            if queue.notification_owed(memory):
                if _tp_recheck.on:
                    _tp_recheck.emit(device=self.name, queue=index, caught="used notification owed")
                self.transport.signal_used(index)
            if not queue.broken and self.awaits_buffers(index) and queue.has_available(memory):
                if _tp_recheck.on:
                    _tp_recheck.emit(device=self.name, queue=index, caught="available buffers, no notification seen yet")
                self.notify_queue(index)
            if queue.broken and not self.broken:
                self._queue_broke(index)

    def _reset_queue_state(self, index: int) -> None:
        queue = self.queues[index]
        queue.reset()
        queue.size = self.max_sizes[index]
        queue.desc_addr = queue.driver_addr = queue.device_addr = 0
        queue.ready = False
        self._epochs[index] += 1

    def notify_queue(self, index: int) -> bool:
        """An available buffer notification for queue ``index`` (§2.9).

        Returns whether the budget ran out with work possibly left, so the VMM should
        call again (it never loops unboundedly itself). Never raises for guest input.
        """
        if not self.queue_live(index):
            if _tp_notify_ignored.on:
                _tp_notify_ignored.emit(device=self.name, queue=index, status=status_names(self.status))
            self.pending.discard(index)
            return False
        self._notified = True
        try:
            more = self.on_queue_notify(index)
        except GuestError as exc:
            self.fail(exc)
            more = False
        if more:
            self.pending.add(index)
        else:
            self.pending.discard(index)
        return more

    def run_pending(self) -> bool:
        """Process each queue whose last notification ran out of budget, once.

        A VMM calls this from its loop while ``pending`` is not empty; returns whether any
        queue still has work left.
        """
        for index in sorted(self.pending):
            self.notify_queue(index)
        return bool(self.pending)

    # -- serving (devmodels.runtime.ServedDevice, rule 10) ------------------------------------

    IDLE_RECHECK_NS: ClassVar[int] = 1_000_000
    """How long after a batch of work the device checks its queues once more (rule 10)."""

    @property
    def posted(self) -> bool:
        """Queues whose budget ran out, or a notification not yet followed by ``recheck``."""
        return self._notified or bool(self.pending)

    def run_posted(self) -> bool:
        """Process the queues left over, then ``recheck`` (rule 10); whether there was work."""
        worked = self._notified or bool(self.pending)
        self._notified = False
        self.run_pending()
        self.recheck()
        if worked:
            self._idle_recheck_at = self._now_ns + self.IDLE_RECHECK_NS
        return worked

    def tick(self, now_ns: int) -> None:
        """The loop's clock; the idle ``recheck`` runs when it is due (rule 10)."""
        self._now_ns = now_ns
        if self._idle_recheck_at is not None and now_ns >= self._idle_recheck_at:
            self._idle_recheck_at = None
            self.recheck()

    def next_deadline(self) -> int | None:
        """When the idle ``recheck`` is due (rule 10)."""
        return self._idle_recheck_at

    # -- transport entry points: configuration -----------------------------------------------

    @property
    def config_generation(self) -> int:
        """The configuration generation as the driver reads it (rule 7)."""
        self._generation_observed = True
        return self._generation

    def read_config(self, offset: int, size: int) -> int:
        """A driver read of ``size`` bytes at ``offset``; bytes past the end read as 0."""
        self._generation_observed = True
        if offset < 0 or size <= 0 or offset >= len(self.config):
            return 0
        return int.from_bytes(self.config[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """A driver write to the configuration: bounds and state checked, then the hook."""
        reason = None
        if offset < 0 or size <= 0 or offset + size > len(self.config):
            reason = "outside the configuration"
        elif not self.status & FEATURES_OK:
            # §3.1.1 step 4: the driver MAY read but MUST NOT write configuration fields
            # before FEATURES_OK.
            reason = "before FEATURES_OK"
        elif self.status & (DEVICE_NEEDS_RESET | FAILED):
            reason = "device needs reset"
        if reason is not None:
            if _tp_config_ignored.on:
                _tp_config_ignored.emit(device=self.name, offset=offset, length=size, reason=reason)
            return
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        try:
            self.on_config_write(offset, data)
        except GuestError as exc:
            self.fail(exc)

    # -- reset -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Device reset (§2.4): status 0, features forgotten, queues and selects cleared.

        The configuration bytes are the device's and survive; the generation keeps
        counting so a driver never sees an old value again.
        """
        self.status = 0
        self.error = None
        self.pending.clear()
        self._notified = False
        self._idle_recheck_at = None
        self.features.reset()
        self.device_feature_select = self.driver_feature_select = self.queue_select = 0
        if self._packed:
            self._packed = False
            self.queues = self._make_queues(False)
            self._epochs = [epoch + 1 for epoch in self._epochs]
        else:
            for index in range(len(self.queues)):
                self._reset_queue_state(index)
        self.reset_device()
        self.transport.device_reset()

    # -- snapshot (rule 11) -------------------------------------------------------------------

    @property
    def state_type(self) -> Any:
        """``VirtioDeviceState[D]`` for this device's section type ``D`` (what ``from_dict``
        decodes its state into)."""
        return VirtioDeviceState[self.device_state_type or type(None)]  # type: ignore[misc]

    def unfinished_work(self) -> str | None:
        """What the device holds unfinished, or None at a quiesce point (override)."""
        return None

    def finish_in_flight(self) -> None:
        """Finish what ``unfinished_work`` reports (override: wait for backends, give back
        buffers held)."""

    def quiesce(self) -> None:
        """Run the queues left over and finish what the device holds (rule 11), so that
        ``state()`` can be taken.

        Raises:
            UsageError: work still appears after ``QUIESCE_ROUNDS`` rounds (the driver is
                still running: stop the guest first).
        """
        for _ in range(self.QUIESCE_ROUNDS):
            self.run_pending()
            self.finish_in_flight()
            if not self.pending and self.unfinished_work() is None:
                return
        raise UsageError(f"{self.name}: quiesce() still found {self.unfinished_work() or 'queues with work left'} after "
                         f"{self.QUIESCE_ROUNDS} rounds; stop the guest first")

    def device_state(self) -> Any:
        """The subclass's snapshot section (override with ``restore_device_state``)."""
        return None

    def check_device_state(self, state: Any) -> None:
        """Validate the subclass's section; raise ``SnapshotError`` (override)."""
        if state is not None:
            raise SnapshotError("device", f"{type(self).__name__} has no device section")

    def restore_device_state(self, state: Any) -> None:
        """Apply a validated subclass section (override)."""

    def state(self) -> VirtioDeviceState[Any]:
        """Snapshot of the device (plain data, CONVENTIONS: snapshots) at the quiesce point (rule 11).

        Raises:
            UsageError: ``unfinished_work()`` reports work; ``quiesce()`` first.
        """
        require_quiesced(self.name, self.unfinished_work())
        return VirtioDeviceState(
            version=_STATE_VERSION,
            status=self.status,
            offered=self.features.offered,
            driver_features=self.features.driver,
            negotiated=self.features.negotiated,
            features_locked=self.features.locked,
            device_feature_select=self.device_feature_select,
            driver_feature_select=self.driver_feature_select,
            queue_select=self.queue_select,
            generation=self._generation,
            generation_observed=self._generation_observed,
            config=bytes(self.config),
            packed=self._packed,
            queues=tuple(queue.state() for queue in self.queues),
            epochs=tuple(self._epochs),
            device=self.device_state(),
        )

    def restore(self, state: VirtioDeviceState[Any]) -> None:
        """Validate ``state`` completely, then apply it (all or nothing).

        Raises:
            SnapshotError: a field this device could not have produced, or a device
                section (args first) of a device built differently; nothing applied.
        """
        check_type("state", state, VirtioDeviceState)
        check_version("version", state.version, _STATE_VERSION)
        section = state.device
        self.check_device_state(section)
        status = check_int("status", state.status, 0, 0xFF)
        if status & ~(DRIVER_BITS | DEVICE_NEEDS_RESET) or status & ~(FAILED | DEVICE_NEEDS_RESET) not in _REACHABLE:
            raise SnapshotError("status", f"{status_names(status)} is not a state the device can reach")
        if state.offered != self.features.offered:
            raise SnapshotError("offered", "offered features differ from this device's")
        check_int("driver_features", state.driver_features, 0, (1 << 128) - 1)
        negotiated = check_int("negotiated", state.negotiated, 0, (1 << 128) - 1)
        locked = check_bool("features_locked", state.features_locked)
        if locked and self.features.check(negotiated) is not None:
            raise SnapshotError("negotiated", "not a valid negotiated set for this device")
        if bool(state.status & FEATURES_OK) != locked:
            raise SnapshotError("features_locked", "disagrees with FEATURES_OK")
        for field in ("device_feature_select", "driver_feature_select", "queue_select"):
            # 32-bit select registers (MMIO QueueSel is 32 bits wide; PCI's is 16).
            check_int(field, getattr(state, field), 0, 0xFFFF_FFFF)
        check_int("generation", state.generation, 0, 0xFF)
        check_bool("generation_observed", state.generation_observed)
        config = check_bytes("config", state.config, len(self.config))
        packed = check_bool("packed", state.packed)
        if packed != bool(negotiated >> VIRTIO_F_RING_PACKED & 1):
            raise SnapshotError("packed", "disagrees with the negotiated features")
        check_type("queues", state.queues, tuple)
        check_type("epochs", state.epochs, tuple)
        if len(state.queues) != len(self.queues) or len(state.epochs) != len(self.queues):
            raise SnapshotError("queues", f"expected {len(self.queues)} queues")
        for i, epoch in enumerate(state.epochs):
            check_int(f"epochs[{i}]", epoch, 0, 1 << 63)
        queues = self._make_queues(packed)
        for i, (queue, queue_state) in enumerate(zip(queues, state.queues, strict=True)):
            try:
                queue.restore(queue_state)
            except SnapshotError as exc:
                raise SnapshotError(f"queues[{i}].{exc.field}", exc.reason) from None
        # Everything validated: apply.
        self.status = state.status
        self.features.driver = state.driver_features
        self.features.negotiated = negotiated
        self.features.locked = locked
        self.device_feature_select = state.device_feature_select
        self.driver_feature_select = state.driver_feature_select
        self.queue_select = state.queue_select
        self._generation = state.generation
        self._generation_observed = state.generation_observed
        self.config[:] = config
        self._packed = packed
        self.queues = queues
        self._epochs = list(state.epochs)
        self.pending.clear()
        self.error = GuestError("DEVICE_NEEDS_RESET restored from a snapshot") if self.broken else None
        self.restore_device_state(section)
        # Rule 11: once served, recheck the queues (buffers the driver made available
        # around the snapshot, notifications it is owed).
        self._notified = self.live

    def __repr__(self) -> str:
        return f"<{self.name} id={self.device_id} status={status_names(self.status)}>"
