"""Inflight tracking of one packed virtqueue (vhost-user.rst § Inflight I/O tracking,
``QueueRegionPacked``).

A packed ring's slots are rewritten with used descriptors as buffers complete, out of
order, so a buffer in flight cannot be read again from the ring: the region keeps a copy of
every descriptor taken, in ``DescStatePacked`` entries drawn from a free list. The protocol
document's steps, which this module follows:

- taking a buffer: its head entry (``old_free_head``) gets ``num`` = 0, ``counter`` = the
  next count, ``inflight`` = 1; each descriptor is copied into the entry at ``free_head``
  (``num`` += 1, ``last`` = that entry for the last one) and ``free_head`` follows ``next``;
  after the last, ``old_free_head`` = ``free_head``;
- returning a buffer with head entry ``e``: ``desc[e.last].next`` = ``free_head``,
  ``free_head`` = ``e``; ``used_idx``/``used_wrap_counter`` advance by its ``num``; the ring
  publishes the used descriptor; then ``e.inflight`` = 0 and the ``old_*`` fields take the
  new values;
- reconnecting: if ``used_idx`` differs from ``old_used_idx``, the descriptor at
  ``old_used_idx`` tells whether the used descriptor was published (its flags are no
  longer "available" for ``old_used_wrap_counter``): if so the new values are kept, else
  rolled back; entries on the free list are not in flight; the remaining heads are
  resubmitted in counter order from their copies.

Rules:

1. Stores follow the order above, each a single aligned store (``inflight`` rule 3).
2. One buffer per published update: the recovery test reads one descriptor, so a batch
   of used descriptors published one after the other could be half visible. The observer
   that drives this tracker asks the queue for one push per entry (``single_push``).
3. ``recover`` trusts nothing: header fields, every index, every list walk (bounded,
   cycles and shared entries refused), the counts against the ring size; a region that
   does not hold together raises ``InflightError`` (the queue starts afresh).
4. An inconsistency while tracking (the free list runs out, an unknown buffer id comes
   back: host bugs, not guest input) stops tracking for the queue and invalidates the
   region (``broken``), so that no later back-end resubmits from it.
5. The front-end maps the same buffer and may rewrite it at any time: while tracking, the
   tracker keeps each buffer's head entry, last entry and count, and the committed
   (``old_*``) position, in its own memory and stores them to the region, never reading
   them back; the only index it reads from the region, a free entry's ``next``, is bounded
   by ``desc_num`` before use. So nothing the front-end writes there makes a tracker raise
   or store outside the queue's region (at worst the front-end spoils its own record).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Sequence

from devmodels.trace import tracepoint

from .defs import VHOST_USER_INFLIGHT_VERSION
from .inflight import PACKED_DESC, PACKED_HEADER, InflightError, Recovery

__all__ = ["PackedInflight"]

_tp = tracepoint("vhost_user.inflight")

_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_PDESC = struct.Struct("<QIHH")  # pvirtq_desc: addr, len, id, flags
_COPY = struct.Struct("<HHIQ")  # DescStatePacked from offset 16: id, flags, len, addr
# Header fields.
_VERSION, _DESC_NUM, _FREE_HEAD, _OLD_FREE_HEAD, _USED_IDX, _OLD_USED_IDX = 8, 10, 12, 14, 16, 18
_USED_WRAP, _OLD_USED_WRAP = 20, 21
# DescStatePacked fields.
_D_INFLIGHT, _D_NEXT, _D_LAST, _D_NUM, _D_COUNTER, _D_COPY = 0, 2, 4, 6, 8, 16
_F_AVAIL = 1 << 7
_F_USED = 1 << 15


class PackedInflight:
    """The region of one packed queue at ``base`` of ``mapping``.

    Args:
        mapping: the inflight buffer's mapping.
        base: where the queue's region starts in it.
        desc_num: entries in the region (the inflight description's queue size).
        size: the ring's size (at most ``desc_num``).
    """

    single_push = True  # rule 2

    def __init__(self, mapping: mmap.mmap, base: int, desc_num: int, size: int) -> None:
        self._map = mapping
        self._base = base
        self.desc_num = desc_num
        self.size = min(size, desc_num)
        self.counter = 0
        self.free_head = 0
        self.used_idx = 0
        self.used_wrap = True
        # Rule 5: buffer id -> (head entry, last entry, descriptors), and the committed
        # free head and used position, kept here; the region only receives them.
        self._slot_of: dict[int, tuple[int, int, int]] = {}
        self._old: tuple[int, int, bool] = (0, 0, True)
        self._batch: list[tuple[int, int]] = []  # (buffer id, head entry) being returned
        self.broken: str | None = None

    @staticmethod
    def need(desc_num: int) -> int:
        """Bytes a region of ``desc_num`` entries takes."""
        return PACKED_HEADER + PACKED_DESC * desc_num

    # -- raw fields ------------------------------------------------------------------------

    def _h16(self, offset: int) -> int:
        return int(_U16.unpack_from(self._map, self._base + offset)[0])

    def _set_h16(self, offset: int, value: int) -> None:
        _U16.pack_into(self._map, self._base + offset, value & 0xFFFF)

    def _h8(self, offset: int) -> int:
        return int(self._map[self._base + offset])

    def _entry(self, i: int) -> int:
        return self._base + PACKED_HEADER + PACKED_DESC * i

    def _e16(self, i: int, field: int) -> int:
        return int(_U16.unpack_from(self._map, self._entry(i) + field)[0])

    def _set_e16(self, i: int, field: int, value: int) -> None:
        _U16.pack_into(self._map, self._entry(i) + field, value & 0xFFFF)

    def inflight(self, i: int) -> int:
        """``desc[i].inflight`` (tests, diagnostics)."""
        return int(self._map[self._entry(i) + _D_INFLIGHT])

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def valid(self) -> bool:
        """The region was written by a tracker of this shape (``version`` 1, ``desc_num``)."""
        return self._h16(_VERSION) == VHOST_USER_INFLIGHT_VERSION and self._h16(_DESC_NUM) == self.desc_num

    def initialize(self, used: int, used_wrap: bool) -> None:
        """Start the region afresh with the device's used position at ``used``/``used_wrap``."""
        start = self._base
        self._map[start : start + self.need(self.desc_num)] = bytes(self.need(self.desc_num))
        for i in range(self.desc_num):
            self._set_e16(i, _D_NEXT, i + 1)  # the free list: every entry, in order
        self._set_h16(_DESC_NUM, self.desc_num)
        for field in (_USED_IDX, _OLD_USED_IDX):
            self._set_h16(field, used)
        for field in (_USED_WRAP, _OLD_USED_WRAP):
            self._map[start + field] = int(used_wrap)
        self._set_h16(_VERSION, VHOST_USER_INFLIGHT_VERSION)  # last: the region is now valid
        self.free_head, self.used_idx, self.used_wrap = 0, used, used_wrap
        self._old = (0, used, used_wrap)
        self.counter = 0
        self._slot_of.clear()
        self.broken = None

    def _break(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
            self._set_h16(_VERSION, 0)  # rule 4: never resubmitted from
            if _tp.on:
                _tp.emit(event="stopped", reason=reason)

    def recover(self, read_flags: Callable[[int], int]) -> Recovery:
        """Read what a previous back-end left (rule 3); ``read_flags(position)`` reads the
        flags of a descriptor of the ring. The region is left consistent.

        Raises:
            InflightError: the region does not hold together.
        """
        if not self.valid:
            raise InflightError("the region was never initialized for this queue size")
        size, num = self.size, self.desc_num
        for field in (_FREE_HEAD, _OLD_FREE_HEAD):
            if self._h16(field) > num:
                raise InflightError(f"free list head {self._h16(field)} (entries {num})")
        for field in (_USED_IDX, _OLD_USED_IDX):
            if self._h16(field) >= size:
                raise InflightError(f"used position {self._h16(field)} (queue size {size})")
        for field in (_USED_WRAP, _OLD_USED_WRAP):
            if self._h8(field) > 1:
                raise InflightError(f"wrap counter {self._h8(field)}")
        old = (self._h16(_OLD_USED_IDX), self._h8(_OLD_USED_WRAP))
        if (self._h16(_USED_IDX), self._h8(_USED_WRAP)) != old:
            flags = read_flags(old[0])
            wrap = bool(old[1])
            still_available = bool(flags & _F_AVAIL) == wrap and bool(flags & _F_USED) != wrap
            if not still_available:  # the used descriptor was published: commit
                self._set_h16(_OLD_FREE_HEAD, self._h16(_FREE_HEAD))
                self._set_h16(_OLD_USED_IDX, self._h16(_USED_IDX))
                self._map[self._base + _OLD_USED_WRAP] = self._h8(_USED_WRAP)
        # Roll back whatever was in progress.
        free_head, used, used_wrap = self._h16(_OLD_FREE_HEAD), self._h16(_OLD_USED_IDX), self._h8(_OLD_USED_WRAP)
        self._set_h16(_FREE_HEAD, free_head)
        self._set_h16(_USED_IDX, used)
        self._map[self._base + _USED_WRAP] = used_wrap
        taken: set[int] = set()
        slot = free_head
        while slot != num:
            if slot > num or slot in taken:
                raise InflightError(f"free list reaches entry {slot} twice or out of range")
            taken.add(slot)
            self._map[self._entry(slot) + _D_INFLIGHT] = 0
            slot = self._e16(slot, _D_NEXT)
        found: list[tuple[int, int, bytes, int, int, int]] = []
        total = 0
        for head in range(num):
            flag = self._map[self._entry(head) + _D_INFLIGHT]
            if flag == 0:
                continue
            if flag != 1 or head in taken:
                raise InflightError(f"entry {head} has inflight {flag}")
            count = self._e16(head, _D_NUM)
            if not 1 <= count <= size:
                raise InflightError(f"entry {head} holds {count} descriptors (queue size {size})")
            copies = []
            slot = head
            for k in range(count):
                if slot >= num or slot in taken:
                    raise InflightError(f"buffer at entry {head} reaches entry {slot} twice or out of range")
                taken.add(slot)
                buffer_id, flags, length, addr = _COPY.unpack_from(self._map, self._entry(slot) + _D_COPY)
                copies.append(_PDESC.pack(addr, length, buffer_id, flags))
                if k + 1 < count:
                    slot = self._e16(slot, _D_NEXT)
            if self._e16(head, _D_LAST) != slot:
                raise InflightError(f"buffer at entry {head} ends at {slot}, not at its last {self._e16(head, _D_LAST)}")
            total += count
            counter = int(_U64.unpack_from(self._map, self._entry(head) + _D_COUNTER)[0])
            found.append((counter, head, b"".join(copies), count, buffer_id, slot))
        if total > size:
            raise InflightError(f"{total} descriptors in flight in a queue of {size}")
        ids = [f[4] for f in found]
        if len(set(ids)) != len(ids) or any(i >= size for i in ids):
            raise InflightError(f"buffer ids in flight {sorted(ids)} repeat or exceed the queue size {size}")
        found.sort()
        self.free_head, self.used_idx, self.used_wrap = free_head, used, bool(used_wrap)
        self._old = (free_head, used, bool(used_wrap))
        self.counter = found[-1][0] + 1 if found else 0
        self._slot_of = {f[4]: (f[1], f[5], f[3]) for f in found}
        self.broken = None
        return Recovery(used=used, used_wrap=bool(used_wrap), resubmit=tuple(f[2] for f in found),
                        counts=tuple(f[3] for f in found), ids=tuple(f[4] for f in found))

    # -- tracking (rules 1, 4) ---------------------------------------------------------------

    def popped(self, buffers: Sequence[bytes]) -> None:
        """Buffers were taken from the ring; each is its descriptors as they were in the
        ring (16 bytes each, ``pvirtq_desc``), its buffer id in the last."""
        if self.broken is not None:
            return
        mapping, num = self._map, self.desc_num
        for descs in buffers:
            count = len(descs) // 16
            head = self.free_head
            if head >= num:
                self._break("free list exhausted")
                return
            entry = self._entry(head)
            self._set_e16(head, _D_NUM, 0)
            _U64.pack_into(mapping, entry + _D_COUNTER, self.counter & 0xFFFF_FFFF_FFFF_FFFF)
            self.counter += 1
            mapping[entry + _D_INFLIGHT] = 1
            buffer_id = 0
            slot = head
            for k in range(count):
                slot = self.free_head
                if slot >= num:
                    self._break("free list exhausted")
                    return
                addr, length, buffer_id, flags = _PDESC.unpack_from(descs, 16 * k)
                if k + 1 == count:
                    self._set_e16(head, _D_LAST, slot)
                self._set_e16(head, _D_NUM, k + 1)
                _COPY.pack_into(mapping, self._entry(slot) + _D_COPY, buffer_id, flags, length, addr)
                self.free_head = self._e16(slot, _D_NEXT)  # bounded above before use (rule 5)
                self._set_h16(_FREE_HEAD, self.free_head)
            self._set_h16(_OLD_FREE_HEAD, self.free_head)
            self._old = (self.free_head, self._old[1], self._old[2])
            self._slot_of[buffer_id] = (head, slot, count)

    def pushing(self, ids: Sequence[int]) -> None:
        """These buffers are about to be returned (rule 2: one per publication)."""
        if self.broken is not None:
            return
        batch = []
        for buffer_id in ids:
            taken = self._slot_of.get(buffer_id)
            if taken is None:
                self._break(f"buffer {buffer_id} returned but not taken")
                return
            head, last, count = taken
            self._set_e16(last, _D_NEXT, self.free_head)
            self.free_head = head
            self._set_h16(_FREE_HEAD, head)
            self.used_idx += count
            while self.used_idx >= self.size:
                self.used_idx -= self.size
                self.used_wrap = not self.used_wrap
            batch.append((buffer_id, head))
        self._set_h16(_USED_IDX, self.used_idx)
        self._map[self._base + _USED_WRAP] = int(self.used_wrap)
        self._batch = batch

    def pushed(self, published: bool, used: int, used_wrap: bool) -> None:
        """The push returned; ``published``: the ring's used position moved, to
        ``used``/``used_wrap``."""
        batch, self._batch = self._batch, []
        if self.broken is not None:
            return
        if not published:
            # Nothing visible: the buffers stay in flight; undo the list and position.
            self.free_head, self.used_idx, self.used_wrap = self._old
            self._set_h16(_FREE_HEAD, self.free_head)
            self._set_h16(_USED_IDX, self.used_idx)
            self._map[self._base + _USED_WRAP] = int(self.used_wrap)
            return
        if (used, used_wrap) != (self.used_idx, self.used_wrap):
            self._break(f"ring used position {used}/{used_wrap} is not the tracked {self.used_idx}/{self.used_wrap}")
            return
        for buffer_id, head in batch:
            self._map[self._entry(head) + _D_INFLIGHT] = 0
            self._slot_of.pop(buffer_id, None)
        self._set_h16(_OLD_FREE_HEAD, self.free_head)
        self._set_h16(_OLD_USED_IDX, self.used_idx)
        self._map[self._base + _OLD_USED_WRAP] = int(self.used_wrap)
        self._old = (self.free_head, self.used_idx, self.used_wrap)

    def rewound(self, ids: Sequence[int]) -> None:
        """These buffers were given back to the ring (they will be taken again)."""
        if self.broken is not None:
            return
        for buffer_id in ids:
            taken = self._slot_of.pop(buffer_id, None)
            if taken is None:
                self._break(f"buffer {buffer_id} given back but not taken")
                return
            head, last, _count = taken
            self._set_e16(last, _D_NEXT, self.free_head)
            self.free_head = head
            self._set_h16(_FREE_HEAD, head)
            self._set_h16(_OLD_FREE_HEAD, head)
            self._old = (head, self._old[1], self._old[2])
            self._map[self._entry(head) + _D_INFLIGHT] = 0
