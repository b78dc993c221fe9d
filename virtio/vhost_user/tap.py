"""What the session keeps beside one running ring: inflight tracking and dirty logging.

A ``VringTap`` is the ``QueueObserver`` (``virtio.queue`` rule 6) of one ring while it runs.
It sees every chain the device takes and every used entry it returns, and keeps:

- the inflight region (``inflight_split`` / ``inflight_packed``), when the front-end
  shared an inflight buffer (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD);
- the dirty log (``dirty_log``), while the front-end migrates (VHOST_F_LOG_ALL or the
  ring's VHOST_VRING_F_LOG with a log from SET_LOG_BASE).

Rules:

1. Nothing here raises for guest values: chains and positions come from the ring, which
   checked them; a descriptor copy that cannot be read stops inflight tracking for the
   ring (its region is invalidated, ``inflight_packed`` rule 4).
2. Logging happens after the writes it covers: the writable segments of each chain and
   the ring areas the device writes (split: the used ring, at ``log_guest_addr``; packed:
   the descriptor ring where used descriptors go, and the device event area) are marked
   once the push returned with the used position moved (``dirty_log`` rule 3).
   ``log_rings`` marks the ring areas again; the session calls it when the ring stops.
3. Packed inflight tracking needs one used descriptor per publication
   (``inflight_packed`` rule 2): ``single_push`` asks the queue for that.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from devmodels import GuestMemory, GuestMemoryError

from ..queue import Chain, Virtqueue
from .dirty_log import DirtyLog
from .inflight_packed import PackedInflight
from .inflight_split import SplitInflight

__all__ = ["VringTap"]

_log = logging.getLogger("devmodels.vhost_user")


def _ids(used: Sequence[tuple[Chain | int, int]]) -> list[int]:
    return [item if isinstance(item, int) else int(item.head) for item, _written in used]


class VringTap:
    """The observer of one running ring (rules 1–3).

    Args:
        memory: guest RAM (packed descriptor copies are read from it).
        packed: the ring's layout.
        size: the ring's size.
        desc_addr: guest address of the descriptor area.
        device_addr: guest address of the device area (split used ring, packed device
            event suppression).
        log_areas: ``(gpa, length)`` of what the device writes besides buffers (rule 2).
    """

    def __init__(self, memory: GuestMemory, *, packed: bool, size: int, desc_addr: int, device_addr: int,
                 log_areas: Sequence[tuple[int, int]] = ()) -> None:
        self.memory = memory
        self.packed = packed
        self.size = size
        self.desc_addr = desc_addr
        self.device_addr = device_addr
        self.log_areas = tuple(log_areas)
        self.inflight: SplitInflight | PackedInflight | None = None
        self.log: DirtyLog | None = None
        """Set while the front-end migrates (the session decides)."""

    @property
    def single_push(self) -> bool:
        """Rule 3."""
        return isinstance(self.inflight, PackedInflight) and self.inflight.broken is None

    # -- QueueObserver ---------------------------------------------------------------------

    def popped(self, queue: Virtqueue, chains: Sequence[Chain], position: int, wrap: bool) -> None:
        """Record the chains taken (inflight)."""
        tracker = self.inflight
        if tracker is None:
            return
        if isinstance(tracker, SplitInflight):
            tracker.popped([int(chain.head) for chain in chains])
            return
        if tracker.broken is not None:
            return
        copies = []
        for chain in chains:
            count = int(chain.n_desc)
            try:
                copies.append(self._ring_descriptors(position, count))
            except GuestMemoryError as exc:  # the ring was readable a moment ago: rule 1
                _log.warning("vhost-user: cannot copy descriptors for inflight tracking: %s", exc)
                tracker._break(f"descriptor copy failed: {exc}")
                return
            position = (position + count) % self.size
        tracker.popped(copies)

    def _ring_descriptors(self, position: int, count: int) -> bytes:
        first = min(count, self.size - position)
        data = self.memory.read(self.desc_addr + 16 * position, 16 * first)
        if first < count:
            data += self.memory.read(self.desc_addr, 16 * (count - first))
        return data

    def pushing(self, queue: Virtqueue, used: Sequence[tuple[Chain | int, int]]) -> None:
        """Link the returned buffers (inflight), before they are published."""
        if self.inflight is not None:
            self.inflight.pushing(_ids(used))

    def pushed(self, queue: Virtqueue, used: Sequence[tuple[Chain | int, int]], published: bool) -> None:
        """Clear the returned buffers (inflight) and log what was written (rule 2)."""
        tracker = self.inflight
        if isinstance(tracker, SplitInflight):
            tracker.pushed(published, int(queue.next_used))
        elif tracker is not None:
            tracker.pushed(published, int(queue.next_used), bool(queue.used_wrap))
        log = self.log
        if log is None or not published:
            return
        ranges: list[tuple[int, int]] = []
        for item, _written in used:
            writable = getattr(item, "writable", None)
            if writable is not None:
                ranges.extend(writable)
        ranges.extend(self.log_areas)
        log.mark_ranges(ranges)

    def rewound(self, queue: Virtqueue, chains: Sequence[Chain]) -> None:
        """The chains will be taken again: no longer in flight."""
        if self.inflight is not None:
            self.inflight.rewound([int(chain.head) for chain in chains])

    def log_rings(self) -> None:
        """Mark the ring areas the device writes (rule 2)."""
        if self.log is not None:
            self.log.mark_ranges(self.log_areas)
