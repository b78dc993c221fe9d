"""One virtqueue as the device sees it: configuration, batch pop/push, suppression, snapshots.

Rules:

1. ``Virtqueue`` is the public face; ring memory is touched only by the ring
   implementation (``ring.Ring``: the Cython twin or the pure-Python reference, chosen at
   import or per queue with ``ring=``). This module validates what the *host* passes
   (``UsageError``) and keeps the snapshot contract; the ring validates what the *guest*
   wrote.
2. The transport sets ``size``, the three area addresses, ``ready`` and the feature flags
   (``event_idx``, ``in_order``, ``indirect``; or ``set_features``). Guest values that
   break the ring rules (a size that is not a power of two, a misaligned address) are
   accepted here and break the queue on first use (§2.7.1, §2.8.11). One exception:
   resizing a packed ring that holds buffers breaks it at once, because the in-flight
   table belongs to the old size; so a packed queue that is not broken and holds buffers
   always has the size they were taken under.
3. No guest-controlled value raises out of ``pop_batch``/``push_batch``/notification
   calls: a violation leaves the queue ``broken`` with the ``VirtqueueError`` in
   ``broken_reason`` (a ``virtio.queue.broken`` trace event marks the moment) until
   ``reset``. ``pop_batch`` then returns the chains parsed before the violation, and
   every later call does nothing.
4. ``state()``/``restore()`` follow ``devmodels._state``: plain frozen data; ``restore``
   validates everything (indices, in-flight ids and their consistency) before applying,
   and works mid-flight. It accepts every state ``state()`` can produce, including the
   shapes rule 2 lets a guest leave behind (a size of 0, positions past a shrunken
   size), because a VMM must be able to snapshot whatever a guest did: the restored
   queue then breaks on first use exactly as the original would. Chains popped before a ``reset``/``restore`` cannot be pushed
   afterwards (``UsageError``); push their head ids instead if the device kept them.
5. No lost wakeups (``_ring_py`` rules 7 and 8): ``pop_batch`` returns fewer chains than
   asked only after it published ``avail_event`` and found the ring still empty;
   ``notification_owed`` and ``has_available`` let a serving loop catch up, later, with a
   driver whose suppression stores became visible late (a guest that drops its memory
   barriers): a call the driver asked for after the push decided, buffers it made
   available without a notification.
6. A transport that keeps state outside the ring (vhost-user inflight tracking, dirty
   logging) sets ``observer`` (a ``QueueObserver``): it sees every chain popped, every
   push before it is published (``pushing``) and after (``pushed``, with whether the used
   position moved), and every rewind. ``reread_chain``/``reread_buffer`` parse again a
   chain that a previous device instance took and left in flight, for it to be
   resubmitted. An observer may ask for one used entry per publication (``single_push``).
   With no observer nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from devmodels import GuestError, GuestMemory, SnapshotError, UsageError
from devmodels.snapshot import check_bool, check_int, check_type, check_version
from devmodels.trace import tracepoint

from ..defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_INDIRECT_DESC
from . import ring as _ring
from .chain import Chain
from .defs import VIRTQ_MAX_SIZE
from .errors import QueueSizeError, RestoredBrokenError

__all__ = ["Virtqueue", "VirtqueueState", "QueueObserver"]

_tp_broken = tracepoint("virtio.queue.broken")

_STATE_VERSION = 1
_U64 = (1 << 64) - 1
_MAX_BUDGET = 1 << 30  # any budget above the ring size behaves the same; keeps it a C int


@dataclass(frozen=True)
class VirtqueueState:
    """Snapshot of one virtqueue (CONVENTIONS: snapshots).

    Split rings use ``next_avail``/``next_used`` as the free-running 16-bit indices and
    leave the wrap counters ``True`` and ``inflight`` empty. Packed rings use them as
    positions in ``[0, size)`` with wrap counters, and ``inflight`` lists
    ``(buffer id, descriptors)`` of the buffers the device holds. ``in_order_next`` is
    the table index the next split chain must start at under VIRTIO_F_IN_ORDER.
    ``broken`` is the reason text of a broken queue, else ``None``.
    """

    version: int
    packed: bool
    max_size: int
    size: int
    ready: bool
    desc_addr: int
    driver_addr: int
    device_addr: int
    event_idx: bool
    in_order: bool
    indirect: bool
    notify: bool
    next_avail: int
    avail_wrap: bool
    next_used: int
    used_wrap: bool
    in_order_next: int
    inflight: tuple[tuple[int, int], ...]
    broken: str | None


class QueueObserver(Protocol):
    """What a transport that keeps state outside the ring is told (rule 6). Calls happen on
    the thread that pops and pushes; an observer never raises for guest values."""

    @property
    def single_push(self) -> bool:
        """Publish one used entry at a time: ``push_batch`` of several entries becomes one
        push per entry (each told ``pushing``/``pushed``), and notifies if any of them asks.
        An entry refused then leaves the ones before it published."""
        ...

    def popped(self, queue: Virtqueue, chains: Sequence[Chain], position: int, wrap: bool) -> None:
        """``chains`` were popped, in ring order, starting at ``position`` (split: the
        available index; packed: the ring position, with its wrap counter)."""
        ...

    def pushing(self, queue: Virtqueue, used: Sequence[tuple[Chain | int, int]]) -> None:
        """``used`` is about to be written and published (nothing is visible yet)."""
        ...

    def pushed(self, queue: Virtqueue, used: Sequence[tuple[Chain | int, int]], published: bool) -> None:
        """The push of ``used`` returned; ``published``: the used position moved (else it
        wrote nothing: the queue was not ready, broke, or refused the entries)."""
        ...

    def rewound(self, queue: Virtqueue, chains: Sequence[Chain]) -> None:
        """``chains`` were given back: they will be popped again."""
        ...


class Virtqueue:
    """A split or packed virtqueue (VIRTIO 1.2 §2.6–§2.8).

    A device drains it with ``pop_batch`` until it returns fewer chains than asked, hands
    results back with ``push_batch`` (and notifies when that returns ``True``), and, if it
    had suppressed notifications, calls ``enable_notification`` and pops again when that
    returns ``True``.

    Args:
        max_size: the largest size the device offers (1..32768).
        packed: use the packed layout (VIRTIO_F_RING_PACKED negotiated).
        ring: the ring implementation class (``RingC``/``RingPy``); default: the one
            ``virtio.queue.ring`` selected.
        max_segments: the most descriptors a chain may have, indirect ones included
            (§2.7.4.1, §2.8.18: the device MAY limit them; a device advertising a limit
            such as virtio-blk ``seg_max`` sets it to match). The queue size is always a
            limit too. The default, 1024, is QEMU's ``VIRTQUEUE_MAX_SIZE``: it keeps one
            ``pop_batch`` of a 32768-entry queue whose chains share one huge indirect
            table from walking (and copying) 2**30 descriptors.
        name: for trace events.

    Raises:
        UsageError: a bad ``max_size``, ``ring`` or ``max_segments``.
    """

    def __init__(
        self, max_size: int, *, packed: bool = False, ring: Any = None, max_segments: int = 1024, name: str = ""
    ) -> None:
        if not _is_int(max_size) or not 1 <= max_size <= VIRTQ_MAX_SIZE:
            raise UsageError(f"max_size must be 1..{VIRTQ_MAX_SIZE}, got {max_size!r}")
        if not _is_int(max_segments) or not 1 <= max_segments <= VIRTQ_MAX_SIZE:
            raise UsageError(f"max_segments must be 1..{VIRTQ_MAX_SIZE}, got {max_segments!r}")
        if ring is None:
            ring = _ring.Ring
        if ring not in _ring.IMPLEMENTATIONS.values():
            raise UsageError(f"ring must be one of {sorted(_ring.IMPLEMENTATIONS)} implementations, got {ring!r}")
        self._ring = ring(max_size)
        self._ring.packed = bool(packed)
        self._ring.max_segments = max_segments
        self._ring.mark_signalled()
        self.name = name
        self.observer: QueueObserver | None = None
        """Told of pops, pushes and rewinds (rule 6); ``None`` by default."""

    def __repr__(self) -> str:
        layout = "packed" if self.packed else "split"
        state = "broken" if self.broken else ("ready" if self.ready else "disabled")
        return (
            f"Virtqueue({self.name or '?'}, {layout}, size={self.size}/{self.max_size}, {state}, "
            f"next_avail={self.next_avail}, next_used={self.next_used}, in_flight={self.in_flight}, "
            f"{self.implementation})"
        )

    # -- configuration (set by the transport) --------------------------------------------------

    @property
    def max_size(self) -> int:
        """The largest size the device offers."""
        return int(self._ring.max_size)

    @property
    def max_segments(self) -> int:
        """The most descriptors a chain may have (with the queue size as a further limit)."""
        return int(self._ring.max_segments)

    @property
    def packed(self) -> bool:
        """Whether this queue uses the packed layout (fixed at construction)."""
        return bool(self._ring.packed)

    @property
    def implementation(self) -> str:
        """``"cython"`` or ``"python"``: which ring code this queue runs."""
        return "cython" if type(self._ring) is _ring.RingC else "python"

    @property
    def size(self) -> int:
        """The queue size the driver chose (``queue_size``/``QueueNum``); ``max_size`` after reset."""
        return int(self._ring.size)

    @size.setter
    def size(self, value: int) -> None:
        value = _field("size", value, 0xFFFF)
        ring = self._ring
        if ring.packed and value != ring.size and ring.inflight_ids and ring.broken is None:
            # Rule 2: the in-flight table is indexed by buffer ids of the old size.
            ring.broken = QueueSizeError(value, int(ring.max_size), True, "queue size changed with buffers in flight")
            self._trace_broken("size")
        ring.size = value

    @property
    def desc_addr(self) -> int:
        """Descriptor Area: split descriptor table / packed descriptor ring."""
        return int(self._ring.desc_addr)

    @desc_addr.setter
    def desc_addr(self, value: int) -> None:
        self._ring.desc_addr = _field("desc_addr", value, _U64)

    @property
    def driver_addr(self) -> int:
        """Driver Area: split available ring / packed driver event suppression."""
        return int(self._ring.driver_addr)

    @driver_addr.setter
    def driver_addr(self, value: int) -> None:
        self._ring.driver_addr = _field("driver_addr", value, _U64)

    @property
    def device_addr(self) -> int:
        """Device Area: split used ring / packed device event suppression."""
        return int(self._ring.device_addr)

    @device_addr.setter
    def device_addr(self, value: int) -> None:
        self._ring.device_addr = _field("device_addr", value, _U64)

    @property
    def ready(self) -> bool:
        """Whether the driver enabled the queue; a queue that is not ready does nothing."""
        return bool(self._ring.ready)

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ring.ready = bool(value)

    enabled = ready

    @property
    def event_idx(self) -> bool:
        """VIRTIO_F_EVENT_IDX negotiated: ``used_event``/``avail_event`` (or packed DESC events)."""
        return bool(self._ring.event_idx)

    @event_idx.setter
    def event_idx(self, value: bool) -> None:
        self._ring.event_idx = bool(value)

    @property
    def in_order(self) -> bool:
        """VIRTIO_F_IN_ORDER negotiated: the driver places and the device uses buffers in order."""
        return bool(self._ring.in_order)

    @in_order.setter
    def in_order(self, value: bool) -> None:
        self._ring.in_order = bool(value)

    @property
    def indirect(self) -> bool:
        """VIRTIO_F_INDIRECT_DESC negotiated. ``True`` after reset, so a transport that never
        sets it accepts indirect tables (as QEMU and rust-vmm do); set ``False`` to enforce
        §2.7.5.3.1 when the device did not offer the feature."""
        return bool(self._ring.indirect)

    @indirect.setter
    def indirect(self, value: bool) -> None:
        self._ring.indirect = bool(value)

    def set_features(self, features: int) -> None:
        """Set ``event_idx``, ``in_order`` and ``indirect`` from a negotiated feature mask."""
        features = _field("features", features, (1 << 128) - 1)
        self._ring.event_idx = bool(features >> VIRTIO_F_EVENT_IDX & 1)
        self._ring.in_order = bool(features >> VIRTIO_F_IN_ORDER & 1)
        self._ring.indirect = bool(features >> VIRTIO_F_INDIRECT_DESC & 1)

    # -- progress (read-only) ----------------------------------------------------------------

    @property
    def next_avail(self) -> int:
        """Split: the next available index to read; packed: the next ring position to read."""
        return int(self._ring.next_avail)

    @property
    def next_used(self) -> int:
        """Split: the used ``idx`` last published; packed: the next ring position to write."""
        return int(self._ring.next_used)

    @property
    def avail_wrap(self) -> bool:
        """Packed: the wrap counter expected of the next available descriptor (§2.8.1)."""
        return bool(self._ring.avail_wrap)

    @property
    def used_wrap(self) -> bool:
        """Packed: the Device Ring Wrap Counter (§2.8.1)."""
        return bool(self._ring.used_wrap)

    @property
    def in_flight(self) -> int:
        """Chains popped and not yet pushed."""
        ring = self._ring
        return int(ring.inflight_ids) if ring.packed else (ring.next_avail - ring.next_used) & 0xFFFF

    @property
    def notification_enabled(self) -> bool:
        """Whether the device currently asks for available-buffer notifications."""
        return bool(self._ring.notify)

    @property
    def broken(self) -> bool:
        """Sticky: the driver broke a ring rule; nothing happens until ``reset``."""
        return self._ring.broken is not None

    @property
    def broken_reason(self) -> GuestError | None:
        """The ``VirtqueueError`` that broke the queue, or ``None``."""
        reason = self._ring.broken
        return reason if isinstance(reason, GuestError) else None

    # -- operation ---------------------------------------------------------------------------

    def pop_batch(self, memory: GuestMemory, budget: int) -> list[Chain]:
        """Collect up to ``budget`` available chains, in ring order.

        Returns ``[]`` when the queue is not ready or broken. On a guest violation the
        queue breaks and the chains parsed before it are returned (rule 3). With
        EVENT_IDX and notifications enabled, ``avail_event`` (packed: the device event
        structure) is moved past what was consumed (side effect on guest memory).

        Raises:
            UsageError: ``budget`` is not a non-negative integer.
        """
        if not _is_int(budget) or budget < 0:
            raise UsageError(f"budget must be a non-negative integer, got {budget!r}")
        ring = self._ring
        was_broken = ring.broken is not None
        observer = self.observer
        position, wrap = int(ring.next_avail), bool(ring.avail_wrap)
        chains: list[Chain] = ring.pop(memory, min(budget, _MAX_BUDGET))
        if not was_broken and ring.broken is not None:
            self._trace_broken("pop")
        if observer is not None and chains:
            observer.popped(self, chains, position, wrap)
        return chains

    def push_batch(self, memory: GuestMemory, used: Sequence[tuple[Chain | int, int]]) -> bool:
        """Return used buffers: ``(chain or head id, bytes written)`` entries, in completion order.

        Writes the used entries (split) or used descriptors (packed), then publishes them.
        Returns whether the driver asked to be notified (§2.7.7.2, §2.8.10): the caller
        then sends the used buffer notification. With IN_ORDER, runs of chains written
        completely share one entry (§2.7.9, §2.8.8). Returns ``False`` and writes nothing
        when not ready or broken.

        Raises:
            UsageError: a malformed entry, an id not in flight, a chain from before a
                reset, a written length above the chain's writable bytes, or (IN_ORDER)
                chains out of pop order. Nothing is written then.
        """
        entries = used if isinstance(used, (list, tuple)) else list(used)
        ring = self._ring
        was_broken = ring.broken is not None
        observer = self.observer
        if observer is None:
            notify = bool(ring.push(memory, entries))
        elif observer.single_push and len(entries) > 1:
            notify = False
            for entry in entries:
                notify = self._observed_push(memory, [entry], observer) or notify
        else:
            notify = self._observed_push(memory, entries, observer)
        if not was_broken and ring.broken is not None:
            self._trace_broken("push")
        return notify

    def _observed_push(self, memory: GuestMemory, entries: Sequence[tuple[Chain | int, int]], observer: QueueObserver) -> bool:
        ring = self._ring
        before = (int(ring.next_used), bool(ring.used_wrap))
        observer.pushing(self, entries)
        try:
            return bool(ring.push(memory, entries))
        finally:
            observer.pushed(self, entries, (int(ring.next_used), bool(ring.used_wrap)) != before)

    def push(self, memory: GuestMemory, chain: Chain | int, written: int) -> bool:
        """``push_batch`` of one entry."""
        return self.push_batch(memory, [(chain, written)])

    def enable_notification(self, memory: GuestMemory) -> bool:
        """Ask the driver for available-buffer notifications again (§2.7.10, §2.8.10).

        Writes the used ring ``flags``/``avail_event`` or the packed device event
        structure. Returns ``True`` if buffers were already available: pop them, since
        the driver may have added them before it saw the change.
        """
        was_broken = self._ring.broken is not None
        pending = bool(self._ring.set_notification(memory, True))
        if not was_broken and self._ring.broken is not None:
            self._trace_broken("enable_notification")
        return pending

    def notification_owed(self, memory: GuestMemory) -> bool:
        """Whether the driver, reading its suppression fields now, wants a used buffer
        notification that no push since the last notification sent (rule 5).

        ``True`` counts the notification as sent: the caller sends it. Reads guest memory
        only; a ring violation breaks the queue (and returns ``False``).
        """
        was_broken = self._ring.broken is not None
        owed = bool(self._ring.notification_owed(memory))
        if not was_broken and self._ring.broken is not None:
            self._trace_broken("notification_owed")
        return owed

    def has_available(self, memory: GuestMemory) -> bool:
        """Whether buffers are available past the next one to pop (reads only, rule 5)."""
        was_broken = self._ring.broken is not None
        pending = bool(self._ring.has_available(memory))
        if not was_broken and self._ring.broken is not None:
            self._trace_broken("has_available")
        return pending

    def rewind(self, chains: Sequence[Chain]) -> bool:
        """Give back ``chains``: the last ones ``pop_batch`` returned, in pop order, none
        pushed. The queue reads them again as if they had never been popped (QEMU's
        ``virtqueue_rewind``): a device that stops without using buffers it took (a NIC
        with no frame for them) loses none. Returns ``False`` and changes nothing on a
        broken queue.

        Raises:
            UsageError: not chains of this queue since its last reset, or not the last
                ones popped, in order, all still in flight. Nothing changes then.
        """
        chains = list(chains)
        done = bool(self._ring.rewind(chains))
        if done and chains and self.observer is not None:
            self.observer.rewound(self, chains)
        return done

    def reread_chain(self, memory: GuestMemory, head: int) -> Chain | None:
        """Split queue: the chain at descriptor ``head``, parsed as ``pop_batch`` would but
        without moving any position (rule 6): one a previous device instance popped and did
        not use, to be resubmitted. ``None`` when the queue is not ready or broken, or the
        chain breaks it (rule 3). It can be pushed like any popped chain.

        Raises:
            UsageError: a packed queue, VIRTIO_F_IN_ORDER, or ``head`` not a 16-bit index.
        """
        _field("head", head, 0xFFFF)
        was_broken = self._ring.broken is not None
        chain = self._ring.reread_split(memory, head)
        if not was_broken and self._ring.broken is not None:
            self._trace_broken("reread")
        return chain

    def reread_buffer(self, memory: GuestMemory, descriptors: bytes) -> Chain | None:
        """Packed queue: the buffer whose descriptors were ``descriptors`` (16 bytes each,
        ``pvirtq_desc``) when a previous device instance took it, parsed as ``pop_batch``
        would (rule 6). The buffer must be in flight in the restored state with that many
        descriptors. ``None`` when the queue is not ready or broken, or the buffer breaks it.

        Raises:
            UsageError: a split queue, not 1..size descriptors, or a buffer id not in flight
                with that many descriptors.
        """
        if not isinstance(descriptors, bytes):
            raise UsageError(f"descriptors must be bytes, got {type(descriptors).__name__}")
        was_broken = self._ring.broken is not None
        chain = self._ring.reread_packed(memory, descriptors)
        if not was_broken and self._ring.broken is not None:
            self._trace_broken("reread")
        return chain

    def disable_notification(self, memory: GuestMemory) -> None:
        """Tell the driver not to notify (the device is polling); a hint the driver may ignore."""
        was_broken = self._ring.broken is not None
        self._ring.set_notification(memory, False)
        if not was_broken and self._ring.broken is not None:
            self._trace_broken("disable_notification")

    def reset(self) -> None:
        """Back to the reset state (§2.6.1): size ``max_size``, addresses 0, not ready,
        nothing in flight, not broken. Chains popped before cannot be pushed afterwards."""
        self._ring.reset()

    def _trace_broken(self, where: str) -> None:
        if _tp_broken.on:
            reason = self._ring.broken
            _tp_broken.emit(
                queue=self.name,
                where=where,
                kind=type(reason).__name__,
                section=getattr(reason, "section", None),
                reason=str(reason),
            )

    # -- snapshots ---------------------------------------------------------------------------

    def state(self) -> VirtqueueState:
        """Snapshot of the queue (plain data; shares nothing with the queue)."""
        ring = self._ring
        return VirtqueueState(
            version=_STATE_VERSION,
            packed=bool(ring.packed),
            max_size=int(ring.max_size),
            size=int(ring.size),
            ready=bool(ring.ready),
            desc_addr=int(ring.desc_addr),
            driver_addr=int(ring.driver_addr),
            device_addr=int(ring.device_addr),
            event_idx=bool(ring.event_idx),
            in_order=bool(ring.in_order),
            indirect=bool(ring.indirect),
            notify=bool(ring.notify),
            next_avail=int(ring.next_avail),
            avail_wrap=bool(ring.avail_wrap),
            next_used=int(ring.next_used),
            used_wrap=bool(ring.used_wrap),
            in_order_next=int(ring.in_order_next),
            inflight=tuple((i, int(n)) for i, n in enumerate(ring.inflight) if n),
            broken=None if ring.broken is None else str(ring.broken),
        )

    def restore(self, state: VirtqueueState) -> None:
        """Validate ``state`` completely, then apply it (all or nothing).

        Raises:
            SnapshotError: a field is inconsistent; the queue is unchanged.
        """
        check_type("state", state, VirtqueueState)
        check_version("version", state.version, _STATE_VERSION)
        if check_bool("packed", state.packed) != self.packed:
            raise SnapshotError("packed", f"this queue is {'packed' if self.packed else 'split'}")
        if check_int("max_size", state.max_size) != self.max_size:
            raise SnapshotError("max_size", f"this queue's maximum is {self.max_size}")
        size = check_int("size", state.size, 0, 0xFFFF)  # rule 2: whatever the setter took
        for field in ("desc_addr", "driver_addr", "device_addr"):
            check_int(field, getattr(state, field), 0, _U64)
        for field in ("ready", "event_idx", "in_order", "indirect", "notify", "avail_wrap", "used_wrap"):
            check_bool(field, getattr(state, field))
        check_type("inflight", state.inflight, tuple)
        broken = state.broken is not None
        if broken:
            check_type("broken", state.broken, str)
        if state.packed:
            table = self._check_packed_state(state, size, broken)
        else:
            self._check_split_state(state, size, self.max_size)
        # Everything validated: apply.
        ring = self._ring
        ring.reset()
        ring.size = size
        ring.desc_addr = state.desc_addr
        ring.driver_addr = state.driver_addr
        ring.device_addr = state.device_addr
        ring.ready = state.ready
        ring.event_idx = state.event_idx
        ring.in_order = state.in_order
        ring.indirect = state.indirect
        ring.notify = state.notify
        ring.next_avail = state.next_avail
        ring.avail_wrap = state.avail_wrap
        ring.next_used = state.next_used
        ring.used_wrap = state.used_wrap
        ring.in_order_next = state.in_order_next
        if state.packed:
            ring.set_inflight(table, state.inflight)
        ring.broken = None if state.broken is None else RestoredBrokenError(state.broken)
        ring.mark_signalled()

    @staticmethod
    def _check_split_state(state: VirtqueueState, size: int, max_size: int) -> None:
        next_avail = check_int("next_avail", state.next_avail, 0, 0xFFFF)
        next_used = check_int("next_used", state.next_used, 0, 0xFFFF)
        # Chains were popped under a valid size (at most the maximum); the size may have
        # shrunk since (rule 2).
        if (next_avail - next_used) & 0xFFFF > max_size:
            raise SnapshotError("next_avail", f"{next_avail} is more than {max_size} ahead of next_used {next_used}")
        if not (state.avail_wrap and state.used_wrap):
            raise SnapshotError("avail_wrap", "split rings have no wrap counters (must stay True)")
        check_int("in_order_next", state.in_order_next, 0, max_size - 1)
        if state.inflight:
            raise SnapshotError("inflight", "split rings keep no in-flight table")

    def _check_packed_state(self, state: VirtqueueState, size: int, broken: bool) -> int:
        """Validate the packed progress fields; return the in-flight table size to restore."""
        max_size = self.max_size
        # Positions advance modulo a size that was valid when they moved (rule 2).
        next_avail = check_int("next_avail", state.next_avail, 0, max_size - 1)
        next_used = check_int("next_used", state.next_used, 0, max_size - 1)
        check_int("in_order_next", state.in_order_next, 0, 0)
        if not state.inflight and not broken:
            # Everything taken was returned: both positions and laps agree, whatever the
            # size became since; the ring re-sizes its empty table on first use.
            if (next_avail, state.avail_wrap) != (next_used, state.used_wrap):
                raise SnapshotError("inflight", "nothing in flight but the available and used positions differ")
            return 0
        # A broken queue is never read again (until reset), and may have broken because
        # the size changed under its buffers: check only what keeps the table in bounds.
        table = max_size if broken else size
        if not broken and not 1 <= size <= max_size:
            raise SnapshotError("size", f"{size} cannot hold buffers in flight (maximum {max_size})")
        seen: set[int] = set()
        total = 0
        for i, pair in enumerate(state.inflight):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise SnapshotError(f"inflight[{i}]", "expected a (buffer id, descriptors) pair")
            buffer_id = check_int(f"inflight[{i}][0]", pair[0], 0, table - 1)
            total += check_int(f"inflight[{i}][1]", pair[1], 1, table)
            if buffer_id in seen:
                raise SnapshotError(f"inflight[{i}][0]", f"buffer id {buffer_id} listed twice")
            seen.add(buffer_id)
        if broken:
            return table
        check_int("next_avail", next_avail, 0, size - 1)
        check_int("next_used", next_used, 0, size - 1)
        # The descriptors between the used and available positions are exactly those of
        # the buffers in flight: positions count modulo 2 * size with the lap parity.
        avail = next_avail + (0 if state.avail_wrap else size)
        used = next_used + (0 if state.used_wrap else size)
        span = (avail - used) % (2 * size)
        if span != total or total > size:
            raise SnapshotError("inflight", f"{total} descriptors in flight but the positions span {span}")
        return table


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(name: str, value: object, limit: int) -> int:
    if not _is_int(value) or not 0 <= value <= limit:  # type: ignore[operator]
        raise UsageError(f"{name} must be an integer in 0..{limit:#x}, got {value!r}")
    return value  # type: ignore[return-value]
