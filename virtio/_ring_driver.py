"""The ring simulators of ``virtio.testing`` (its rules 1–3): the driver side of split and
packed virtqueues, and the malformed rings a device must detect. Import them from
``virtio.testing``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from devmodels import GuestMemory, UsageError
from devmodels.testing import DeviceProtocolError

from .queue.defs import (
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
)

__all__ = ["RingLayout", "UsedBuffer", "SplitDriver", "PackedDriver", "RingDriver", "make_driver", "MALFORMED",
           "malform", "Segment"]

Segment = tuple[int, int]


@dataclass(frozen=True)
class RingLayout:
    """Where one queue's three areas live (§2.7 / §2.8.10.1 sizes and alignments)."""

    size: int
    packed: bool
    desc_addr: int
    driver_addr: int
    device_addr: int
    end: int

    @classmethod
    def at(cls, base: int, size: int, packed: bool) -> RingLayout:
        """Lay a ring out from ``base`` (rounded up to 16): descriptors, driver area, device area."""
        desc = (base + 15) & ~15
        if packed:
            driver = desc + 16 * size
            device = driver + 4
            return cls(size, True, desc, driver, device, device + 4)
        driver = desc + 16 * size
        device = (driver + 6 + 2 * size + 3) & ~3
        return cls(size, False, desc, driver, device, device + 6 + 8 * size)


@dataclass
class UsedBuffer:
    """One buffer the device returned."""

    id: int
    written: int
    token: Any
    readable: list[Segment]
    writable: list[Segment]

    def read(self, memory: GuestMemory) -> bytes:
        """The first ``written`` bytes of the device-writable segments."""
        out = bytearray()
        left = self.written
        for gpa, length in self.writable:
            take = min(left, length)
            out += memory.read(gpa, take)
            left -= take
        return bytes(out)


@dataclass
class _Outstanding:
    id: int
    token: Any
    n_desc: int
    descs: list[int]
    readable: list[Segment]
    writable: list[Segment] = field(default_factory=list)

    @property
    def writable_len(self) -> int:
        return sum(length for _, length in self.writable)


class _Driver:
    """What split and packed simulators share: the data arena and the queue wiring."""

    packed = False

    def __init__(
        self,
        memory: GuestMemory,
        size: int,
        *,
        base: int = 0x1000,
        data_base: int | None = None,
        data_size: int = 1 << 20,
        event_idx: bool = False,
        in_order: bool = False,
    ) -> None:
        if not 1 <= size <= 32768:
            raise UsageError(f"queue size must be 1..32768, got {size}")
        self.memory = memory
        self.size = size
        self.layout = RingLayout.at(base, size, self.packed)
        self.event_idx = event_idx
        self.in_order = in_order
        self.data_base = (self.layout.end + 4095) & ~4095 if data_base is None else data_base
        self.data_end = self.data_base + data_size
        self._next_data = self.data_base
        self.outstanding: dict[int, _Outstanding] = {}
        self._fifo: deque[int] = deque()
        self.memory.fill(self.layout.desc_addr, self.layout.end - self.layout.desc_addr)

    def configure(self, queue: Any) -> None:
        """Program ``queue`` (a ``Virtqueue``) with this layout and features, and enable it."""
        queue.size = self.size
        queue.desc_addr = self.layout.desc_addr
        queue.driver_addr = self.layout.driver_addr
        queue.device_addr = self.layout.device_addr
        queue.event_idx = self.event_idx
        queue.in_order = self.in_order
        queue.ready = True

    def alloc(self, length: int, align: int = 16) -> int:
        """Reserve ``length`` bytes of the data arena (wraps to the start when nothing is in flight).

        Raises:
            UsageError: the arena is full.
        """
        gpa = (self._next_data + align - 1) & ~(align - 1)
        if gpa + length > self.data_end:
            if self.outstanding:
                raise UsageError("driver data arena is full; reap used buffers first")
            gpa = self.data_base
            if gpa + length > self.data_end:
                raise UsageError(f"{length} bytes do not fit the data arena")
        self._next_data = gpa + length
        return gpa

    def _segments(self, readable: Sequence[Segment | bytes], writable: Sequence[Segment | int]) -> list[tuple[int, int, bool]]:
        out: list[tuple[int, int, bool]] = []
        for item in readable:
            if isinstance(item, (bytes, bytearray)):
                gpa = self.alloc(len(item))
                self.memory.write(gpa, item)
                out.append((gpa, len(item), False))
            else:
                out.append((item[0], item[1], False))
        for space in writable:
            if isinstance(space, int):
                out.append((self.alloc(space), space, True))
            else:
                out.append((space[0], space[1], True))
        if not out:
            raise UsageError("a buffer needs at least one segment")
        return out

    def _indirect_table(self, segs: list[tuple[int, int, bool]]) -> int:
        # §2.7.5.3: split entries chain with NEXT through j + 1; §2.8.7: packed entries are
        # sequential pvirtq_desc with only WRITE set.
        table = self.alloc(16 * len(segs))
        for j, (gpa, length, write) in enumerate(segs):
            kind = VIRTQ_DESC_F_WRITE if write else 0
            if self.packed:
                self.memory.write(table + 16 * j, _pdesc(gpa, length, 0, kind))
            else:
                more = j + 1 < len(segs)
                flags = kind | (VIRTQ_DESC_F_NEXT if more else 0)
                self.memory.write(table + 16 * j, _desc(gpa, length, flags, j + 1 if more else 0))
        return table

    def _retire(self, ids: list[int], written: int) -> list[UsedBuffer]:
        out = []
        for k, buffer_id in enumerate(ids):
            info = self.outstanding.pop(buffer_id, None)
            if info is None:
                raise DeviceProtocolError(f"used id {buffer_id} is not outstanding")
            amount = written if k == len(ids) - 1 else info.writable_len
            if amount > info.writable_len:
                raise DeviceProtocolError(f"used len {amount} exceeds buffer {buffer_id}'s {info.writable_len} writable bytes")
            self._free(info)
            out.append(UsedBuffer(buffer_id, amount, info.token, info.readable, info.writable))
        return out

    def _batch(self, buffer_id: int) -> list[int]:
        """IN_ORDER: the outstanding buffers up to and including ``buffer_id`` (§2.7.9, §2.8.8)."""
        if not self.in_order:
            return [buffer_id]
        if buffer_id not in self._fifo:
            raise DeviceProtocolError(f"used id {buffer_id} is not outstanding")
        batch = []
        while True:
            head = self._fifo.popleft()
            batch.append(head)
            if head == buffer_id:
                return batch

    def _free(self, info: _Outstanding) -> None:
        raise NotImplementedError


class SplitDriver(_Driver):
    """The driver side of a split virtqueue (§2.7)."""

    packed = False

    def __init__(self, memory: GuestMemory, size: int, **kwargs: Any) -> None:
        if size & (size - 1):
            raise UsageError(f"split queue size must be a power of two, got {size}")
        super().__init__(memory, size, **kwargs)
        self.free: deque[int] = deque(range(size))
        self.avail_idx = 0  # shadow: entries added
        self.published = 0  # the idx the device can see
        self.last_used = 0

    def add(
        self,
        readable: Sequence[Segment | bytes] = (),
        writable: Sequence[Segment | int] = (),
        *,
        indirect: bool = False,
        token: Any = None,
    ) -> int:
        """Place one buffer (bytes are copied into the arena, ints allocate writable space).

        Returns the head index. Nothing is visible to the device before ``kick``.

        Raises:
            UsageError: not enough free descriptors.
        """
        segs = self._segments(readable, writable)
        need = 1 if indirect else len(segs)
        if need > len(self.free):
            raise UsageError(f"{need} descriptors needed, {len(self.free)} free")
        descs = [self.free.popleft() for _ in range(need)]
        base = self.layout.desc_addr
        if indirect:
            table = self._indirect_table(segs)
            self.memory.write(base + 16 * descs[0], _desc(table, 16 * len(segs), VIRTQ_DESC_F_INDIRECT, 0))
        else:
            for k, (gpa, length, write) in enumerate(segs):
                more = k + 1 < len(segs)
                flags = (VIRTQ_DESC_F_WRITE if write else 0) | (VIRTQ_DESC_F_NEXT if more else 0)
                self.memory.write(base + 16 * descs[k], _desc(gpa, length, flags, descs[k + 1] if more else 0))
        head = descs[0]
        slot = self.avail_idx % self.size
        self.memory.store_u16(self.layout.driver_addr + 4 + 2 * slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.outstanding[head] = _Outstanding(
            head, token, need, descs, [(g, n) for g, n, w in segs if not w], [(g, n) for g, n, w in segs if w]
        )
        self._fifo.append(head)
        return head

    def kick(self) -> bool:
        """Publish the added buffers (avail ``idx``); return whether to notify the device (§2.7.10)."""
        old, new = self.published, self.avail_idx
        self.memory.store_u16(self.layout.driver_addr + 2, new)
        self.published = new
        if self.event_idx:
            avail_event = self.memory.load_u16(self.layout.device_addr + 4 + 8 * self.size)
            return ((new - avail_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self.memory.load_u16(self.layout.device_addr) & VIRTQ_USED_F_NO_NOTIFY

    def reap(self) -> list[UsedBuffer]:
        """Collect the buffers the device used, in used-ring order (§2.7.14)."""
        out: list[UsedBuffer] = []
        used_idx = self.memory.load_u16(self.layout.device_addr + 2)
        while self.last_used != used_idx:
            slot = self.last_used % self.size
            entry = self.layout.device_addr + 4 + 8 * slot
            buffer_id, written = self.memory.load_u32(entry), self.memory.load_u32(entry + 4)
            batch = self._batch(buffer_id)
            if len(batch) > ((used_idx - self.last_used) & 0xFFFF):
                raise DeviceProtocolError(f"used idx {used_idx} does not cover the batch ending at {buffer_id}")
            if not self.in_order:
                if buffer_id in self._fifo:
                    self._fifo.remove(buffer_id)
            out += self._retire(batch, written)
            self.last_used = (self.last_used + len(batch)) & 0xFFFF
        return out

    def _free(self, info: _Outstanding) -> None:
        self.free.extend(info.descs)

    def set_interrupts(self, enable: bool, used_event: int | None = None) -> None:
        """Used-buffer notification suppression (§2.7.7): flags, or ``used_event`` with EVENT_IDX."""
        if self.event_idx:
            event = self.last_used if used_event is None else used_event
            self.memory.store_u16(self.layout.driver_addr + 4 + 2 * self.size, event if enable else (self.last_used - 1) & 0xFFFF)
        else:
            self.memory.store_u16(self.layout.driver_addr, 0 if enable else VIRTQ_AVAIL_F_NO_INTERRUPT)

    # -- raw access for malformed rings (``virtio.testing`` rule 3) ---------------------------

    def raw_desc(self, index: int, addr: int, length: int, flags: int, next_: int) -> None:
        """Write descriptor ``index`` of the table as given."""
        self.memory.write(self.layout.desc_addr + 16 * index, _desc(addr, length, flags, next_))

    def raw_publish(self, heads: Sequence[int], idx: int | None = None) -> None:
        """Put ``heads`` in the available ring and set ``idx`` (default: past them)."""
        for head in heads:
            self.memory.store_u16(self.layout.driver_addr + 4 + 2 * (self.avail_idx % self.size), head)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.published = self.avail_idx if idx is None else idx
        self.memory.store_u16(self.layout.driver_addr + 2, self.published)


class PackedDriver(_Driver):
    """The driver side of a packed virtqueue (§2.8)."""

    packed = True

    def __init__(self, memory: GuestMemory, size: int, **kwargs: Any) -> None:
        super().__init__(memory, size, **kwargs)
        self.free_ids: deque[int] = deque(range(size))
        self.free_descs = size
        self.next_avail = 0
        self.avail_wrap = True  # §2.8.1: starts at 1
        self.next_used = 0
        self.used_wrap = True
        self._pending: list[tuple[int, int]] = []  # (ring position, flags) of unexposed first descriptors
        self._kicked = (0, True)

    def _flags(self, wrap: bool) -> int:
        # §2.8.1: AVAIL matches the Driver Ring Wrap Counter, USED is its inverse.
        return VIRTQ_DESC_F_AVAIL if wrap else VIRTQ_DESC_F_USED

    def add(
        self,
        readable: Sequence[Segment | bytes] = (),
        writable: Sequence[Segment | int] = (),
        *,
        indirect: bool = False,
        token: Any = None,
    ) -> int:
        """Place one buffer; returns its buffer id. Nothing is visible to the device before ``kick``.

        Raises:
            UsageError: not enough free descriptors or buffer ids.
        """
        segs = self._segments(readable, writable)
        need = 1 if indirect else len(segs)
        if need > self.free_descs or not self.free_ids:
            raise UsageError(f"{need} descriptors needed, {self.free_descs} free")
        buffer_id = self.free_ids.popleft()
        if indirect:
            table = self._indirect_table(segs)
            ring_segs = [(table, 16 * len(segs), VIRTQ_DESC_F_INDIRECT)]
        else:
            ring_segs = [(g, n, VIRTQ_DESC_F_WRITE if w else 0) for g, n, w in segs]
        positions = []
        for k, (gpa, length, kind) in enumerate(ring_segs):
            pos = self.next_avail
            flags = kind | self._flags(self.avail_wrap) | (VIRTQ_DESC_F_NEXT if k + 1 < len(ring_segs) else 0)
            gpa_desc = self.layout.desc_addr + 16 * pos
            self.memory.write(gpa_desc, _pdesc(gpa, length, buffer_id, flags if k else 0))
            if k == 0:
                # §2.8.21.1: the first descriptor is exposed last, after the rest of the list.
                self._pending.append((pos, flags))
            positions.append(pos)
            self.next_avail += 1
            if self.next_avail == self.size:
                self.next_avail = 0
                self.avail_wrap = not self.avail_wrap
        self.free_descs -= need
        self.outstanding[buffer_id] = _Outstanding(
            buffer_id, token, need, positions, [(g, n) for g, n, w in segs if not w], [(g, n) for g, n, w in segs if w]
        )
        self._fifo.append(buffer_id)
        return buffer_id

    def kick(self) -> bool:
        """Expose the added buffers; return whether to notify the device (§2.8.10, §2.8.21.2)."""
        for pos, flags in self._pending:
            self.memory.store_u16(self.layout.desc_addr + 16 * pos + 14, flags)
        self._pending.clear()
        old_pos, old_wrap = self._kicked
        self._kicked = (self.next_avail, self.avail_wrap)
        event_flags = self.memory.load_u16(self.layout.device_addr + 2) & 3
        if event_flags == RING_EVENT_FLAGS_DISABLE:
            return False
        if event_flags != RING_EVENT_FLAGS_DESC or not self.event_idx:
            return True
        off_wrap = self.memory.load_u16(self.layout.device_addr)
        span = 2 * self.size
        old = old_pos + (0 if old_wrap else self.size)
        new = self.next_avail + (0 if self.avail_wrap else self.size)
        event = (off_wrap & 0x7FFF) + (0 if off_wrap >> 15 else self.size)
        return (event - old) % span < (new - old) % span

    def reap(self) -> list[UsedBuffer]:
        """Collect the used buffers, skipping over each list (and IN_ORDER batch) (§2.8.22)."""
        out: list[UsedBuffer] = []
        while self.outstanding:
            gpa = self.layout.desc_addr + 16 * self.next_used
            flags = self.memory.load_u16(gpa + 14)
            used = bool(flags & VIRTQ_DESC_F_USED)
            if bool(flags & VIRTQ_DESC_F_AVAIL) != used or used != self.used_wrap:
                break
            buffer_id, written = self.memory.load_u16(gpa + 12), self.memory.load_u32(gpa + 8)
            batch = self._batch(buffer_id)
            if not self.in_order and buffer_id in self._fifo:
                self._fifo.remove(buffer_id)
            skip = sum(self.outstanding[i].n_desc for i in batch if i in self.outstanding)
            out += self._retire(batch, written)
            self.next_used += skip
            if self.next_used >= self.size:
                self.next_used -= self.size
                self.used_wrap = not self.used_wrap
        return out

    def _free(self, info: _Outstanding) -> None:
        self.free_descs += info.n_desc
        self.free_ids.append(info.id)

    def set_interrupts(self, enable: bool, at: tuple[int, bool] | None = None) -> None:
        """Driver event suppression (§2.8.10): enable, disable, or (EVENT_IDX) a descriptor event."""
        area = self.layout.driver_addr
        if not enable:
            self.memory.store_u16(area + 2, RING_EVENT_FLAGS_DISABLE)
        elif self.event_idx:
            pos, wrap = at if at is not None else (self.next_used, self.used_wrap)
            self.memory.store_u16(area, pos | (wrap << 15))
            self.memory.store_u16(area + 2, RING_EVENT_FLAGS_DESC)
        else:
            self.memory.store_u16(area + 2, RING_EVENT_FLAGS_ENABLE)

    # -- raw access for malformed rings (``virtio.testing`` rule 3) ---------------------------

    def avail_flags(self, wrap: bool | None = None) -> int:
        """AVAIL/USED bits that make a descriptor available for wrap counter ``wrap`` (default: current)."""
        return self._flags(self.avail_wrap if wrap is None else wrap)

    def raw_desc(self, pos: int, addr: int, length: int, buffer_id: int, flags: int) -> None:
        """Write ring position ``pos`` as given (flags included: visible at once)."""
        self.memory.write(self.layout.desc_addr + 16 * pos, _pdesc(addr, length, buffer_id, flags))


def make_driver(memory: GuestMemory, size: int, *, packed: bool = False, **kwargs: Any) -> SplitDriver | PackedDriver:
    """A ``SplitDriver`` or ``PackedDriver`` (same keyword arguments)."""
    return PackedDriver(memory, size, **kwargs) if packed else SplitDriver(memory, size, **kwargs)


MALFORMED: dict[bool, tuple[str, ...]] = {
    False: ("loop", "next_out_of_range", "avail_jump", "indirect_length", "indirect_outside_ram",
            "indirect_foreign"),
    True: ("buffer_id", "list_too_long", "indirect_length", "indirect_outside_ram", "indirect_foreign"),
}
"""The malformed rings ``malform`` builds, for split (``False``) and packed (``True``) rings."""

_OUTSIDE_RAM = 0x7_0000_0000


def malform(driver: SplitDriver | PackedDriver, kind: str, *, foreign: int = _OUTSIDE_RAM) -> None:
    """Make the next available buffer of ``driver``'s ring malformed, as ``kind`` says, and
    publish it (``virtio.testing`` rule 3). Kinds (``MALFORMED``):

    - split: a descriptor ``loop`` (§2.7.5.2), ``next_out_of_range``, an ``avail_jump`` of
      more than the queue size (§2.7.6.1);
    - packed: a ``buffer_id`` out of range (§2.8.6), a ``list_too_long`` for the ring
      (§2.8.17);
    - both: an indirect table of a bad length (``indirect_length``, §2.7.5.3, §2.8.7),
      outside RAM (``indirect_outside_ram``), or at ``foreign`` (``indirect_foreign``: say,
      the address of a BAR).

    Raises:
        UsageError: an unknown kind for this layout.
    """
    if kind not in MALFORMED[driver.packed]:
        raise UsageError(f"{kind!r} is not one of {MALFORMED[driver.packed]}")
    data = driver.alloc(64)
    target = {"indirect_outside_ram": _OUTSIDE_RAM, "indirect_foreign": foreign}.get(kind, data)
    length = 17 if kind == "indirect_length" else 32
    if isinstance(driver, PackedDriver):
        avail = driver.avail_flags()
        pos = driver.next_avail
        if kind == "buffer_id":
            driver.raw_desc(pos, data, 16, driver.size + 1, avail)
        elif kind == "list_too_long":
            for k in range(driver.size):  # NEXT all the way round, each with valid AVAIL/USED bits
                flags = driver.avail_flags(driver.avail_wrap == (pos + k < driver.size))
                driver.raw_desc((pos + k) % driver.size, data, 16, 0, flags | VIRTQ_DESC_F_NEXT)
        else:
            driver.raw_desc(pos, target, length, 0, avail | VIRTQ_DESC_F_INDIRECT)
        return
    head = driver.free[0] if driver.free else 0
    if kind == "loop":
        other = (head + 1) % driver.size
        driver.raw_desc(head, data, 16, VIRTQ_DESC_F_NEXT, other)
        driver.raw_desc(other, data, 16, VIRTQ_DESC_F_NEXT, head)
    elif kind == "next_out_of_range":
        driver.raw_desc(head, data, 16, VIRTQ_DESC_F_NEXT, driver.size + 3)
    elif kind != "avail_jump":
        driver.raw_desc(head, target, length, VIRTQ_DESC_F_INDIRECT, 0)
    if kind == "avail_jump":
        driver.raw_publish([head], idx=(driver.last_used + driver.size + 5) & 0xFFFF)
    else:
        driver.raw_publish([head])


def _desc(addr: int, length: int, flags: int, next_: int) -> bytes:
    return (
        (addr & (1 << 64) - 1).to_bytes(8, "little")
        + (length & 0xFFFF_FFFF).to_bytes(4, "little")
        + (flags & 0xFFFF).to_bytes(2, "little")
        + (next_ & 0xFFFF).to_bytes(2, "little")
    )


def _pdesc(addr: int, length: int, buffer_id: int, flags: int) -> bytes:
    # struct pvirtq_desc {le64 addr; le32 len; le16 id; le16 flags;} (§2.8.13)
    return _desc(addr, length, buffer_id, flags)


RingDriver = SplitDriver | PackedDriver
"""Either ring simulator."""
