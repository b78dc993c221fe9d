"""Inflight tracking of one split virtqueue (vhost-user.rst § Inflight I/O tracking,
``QueueRegionSplit``).

The region has one ``DescStateSplit`` per descriptor-table entry; only head entries are
used. The protocol document's steps, which this module follows:

- taking a chain with head ``i``: ``desc[i].counter`` = the next count, then
  ``desc[i].inflight`` = 1;
- returning a batch: each head ``i`` is linked into the last-batch list (``desc[i].next`` =
  ``last_batch_head``, ``last_batch_head`` = ``i``) *before* the used index moves; after it
  moved, each head's ``inflight`` = 0, then ``used_idx`` = the used ring's index;
- reconnecting: if ``used_idx`` differs from the used ring's index, the batch was
  published but not cleared: its ``used idx - used_idx`` heads are cleared from the list;
  then the heads still in flight are resubmitted in counter order, and the ring's next
  available index is the used index plus their number.

Rules:

1. Stores to the region follow the order above, each a single aligned store, so a back-end
   killed between any two leaves a region ``recover`` reads right (``inflight`` rule 3).
2. ``recover`` trusts nothing: version, size, every index and flag is checked, the batch
   walk is bounded; a region that does not hold together raises ``InflightError`` (the
   caller starts the queue afresh, resubmitting nothing).
3. A push the ring did not publish (``pushed(published=False)``) leaves the used index
   where it was, so the list it linked is ignored by ``recover``; the heads stay in flight.
4. Every head is bounded by the queue size before it indexes the region; a tracker never
   raises on a value the guest or the front-end controls, other than in ``recover``.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence

from .defs import VHOST_USER_INFLIGHT_VERSION
from .inflight import SPLIT_DESC, SPLIT_HEADER, InflightError, Recovery

__all__ = ["SplitInflight"]

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
# Header fields (offsets in the region).
_FEATURES, _VERSION, _DESC_NUM, _LAST_BATCH_HEAD, _USED_IDX = 0, 8, 10, 12, 14
# DescStateSplit fields (offsets in an entry).
_D_INFLIGHT, _D_NEXT, _D_COUNTER = 0, 6, 8


class SplitInflight:
    """The region of one split queue of ``size`` entries at ``base`` of ``mapping``.

    Args:
        mapping: the inflight buffer's mapping (``InflightBuffer.mapping``).
        base: where the queue's region starts in it.
        desc_num: entries in the region (the inflight description's queue size).
        size: the ring's size (at most ``desc_num``).
    """

    def __init__(self, mapping: mmap.mmap, base: int, desc_num: int, size: int) -> None:
        self._map = mapping
        self._base = base
        self.desc_num = desc_num
        self.size = min(size, desc_num)
        self.counter = 0
        self._batch: list[int] = []
        self.used_idx = 0

    @staticmethod
    def need(desc_num: int) -> int:
        """Bytes a region of ``desc_num`` entries takes."""
        return SPLIT_HEADER + SPLIT_DESC * desc_num

    # -- raw fields ------------------------------------------------------------------------

    def _h16(self, offset: int) -> int:
        return int(_U16.unpack_from(self._map, self._base + offset)[0])

    def _set_h16(self, offset: int, value: int) -> None:
        _U16.pack_into(self._map, self._base + offset, value & 0xFFFF)

    def _entry(self, i: int) -> int:
        return self._base + SPLIT_HEADER + SPLIT_DESC * i

    def inflight(self, i: int) -> int:
        """``desc[i].inflight`` (tests, diagnostics)."""
        return int(self._map[self._entry(i) + _D_INFLIGHT])

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def valid(self) -> bool:
        """The region was written by a tracker of this shape (``version`` 1, ``desc_num``)."""
        return self._h16(_VERSION) == VHOST_USER_INFLIGHT_VERSION and self._h16(_DESC_NUM) == self.desc_num

    def initialize(self, used_idx: int) -> None:
        """Start the region afresh at the used ring's index ``used_idx``: nothing in flight."""
        start = self._base
        self._map[start : start + SPLIT_HEADER + SPLIT_DESC * self.desc_num] = bytes(
            SPLIT_HEADER + SPLIT_DESC * self.desc_num)
        self._set_h16(_DESC_NUM, self.desc_num)
        self._set_h16(_USED_IDX, used_idx)
        self._set_h16(_VERSION, VHOST_USER_INFLIGHT_VERSION)  # last: the region is now valid
        self.used_idx = used_idx & 0xFFFF
        self.counter = 0

    def recover(self, used_idx: int) -> Recovery:
        """Read what a previous back-end left (rule 2) with the used ring at ``used_idx``;
        the region is left consistent with it.

        Raises:
            InflightError: the region does not hold together.
        """
        if not self.valid:
            raise InflightError("the region was never initialized for this queue size")
        used_idx &= 0xFFFF
        recorded = self._h16(_USED_IDX)
        if recorded != used_idx:
            # A published batch whose heads were not cleared yet.
            batch = (used_idx - recorded) & 0xFFFF
            if batch > self.size:
                raise InflightError(f"used index {used_idx} is {batch} past the recorded {recorded}")
            head = self._h16(_LAST_BATCH_HEAD)
            for _ in range(batch):
                if head >= self.size:
                    raise InflightError(f"last-batch list reaches head {head} (queue size {self.size})")
                self._map[self._entry(head) + _D_INFLIGHT] = 0
                head = int(_U16.unpack_from(self._map, self._entry(head) + _D_NEXT)[0])
            self._set_h16(_USED_IDX, used_idx)
        heads: list[tuple[int, int]] = []
        for i in range(self.desc_num):
            flag = self._map[self._entry(i) + _D_INFLIGHT]
            if flag == 0:
                continue
            if flag != 1 or i >= self.size:
                raise InflightError(f"entry {i} has inflight {flag} (queue size {self.size})")
            heads.append((int(_U64.unpack_from(self._map, self._entry(i) + _D_COUNTER)[0]), i))
        if len(heads) > self.size:
            raise InflightError(f"{len(heads)} heads in flight in a queue of {self.size}")
        heads.sort()
        self.used_idx = used_idx
        self.counter = heads[-1][0] + 1 if heads else 0
        return Recovery(used=used_idx, resubmit=tuple(i for _, i in heads))

    # -- tracking (rule 1) -----------------------------------------------------------------

    def popped(self, heads: Sequence[int]) -> None:
        """Chains with these heads were taken from the ring."""
        for head in heads:
            if 0 <= head < self.size:
                entry = self._entry(head)
                _U64.pack_into(self._map, entry + _D_COUNTER, self.counter & 0xFFFF_FFFF_FFFF_FFFF)
                self.counter += 1
                self._map[entry + _D_INFLIGHT] = 1

    def pushing(self, heads: Sequence[int]) -> None:
        """These heads are about to be returned in one used-index update."""
        last = self._h16(_LAST_BATCH_HEAD)
        batch = []
        for head in heads:
            if 0 <= head < self.size:
                _U16.pack_into(self._map, self._entry(head) + _D_NEXT, last)
                last = head
                batch.append(head)
        self._set_h16(_LAST_BATCH_HEAD, last)
        self._batch = batch

    def pushed(self, published: bool, used_idx: int) -> None:
        """The push of the last ``pushing`` returned; ``published``: the used index moved,
        to ``used_idx`` (rule 3)."""
        batch, self._batch = self._batch, []
        if not published:
            return
        for head in batch:
            self._map[self._entry(head) + _D_INFLIGHT] = 0
        self.used_idx = used_idx & 0xFFFF
        self._set_h16(_USED_IDX, self.used_idx)

    def rewound(self, heads: Sequence[int]) -> None:
        """These chains were given back to the ring: no longer in flight."""
        for head in heads:
            if 0 <= head < self.size:
                self._map[self._entry(head) + _D_INFLIGHT] = 0
