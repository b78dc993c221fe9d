# cython: boundscheck=False, wraparound=False, initializedcheck=False, annotation_typing=False
# cython: warn.unreachable=False
"""Descriptor-ring walking for split and packed virtqueues (VIRTIO 1.2 §2.7, §2.8).

This file is the pure-Python reference (``_ring_py``) and, through the symlink
``_ring_c.py`` typed by ``_ring_c.pxd``, the Cython fast path: one source compiled in
Cython's pure-Python mode (aiohttp ``reader_c.pxd``), so the two cannot drift (CONVENTIONS: cython-twin).

Rules:

1. All reads and writes of guest ring memory happen here; no device-specific logic.
2. Ring memory is reached through windows that ``_windows.map_window`` resolves from the
   ``GuestMemory`` regions once per call: the ``(buffer, offset)`` of a range wholly
   inside one region. Nothing is kept across calls (CONVENTIONS: guest-memory; the one allowed exception).
3. Every guest value is checked before it becomes an offset: indices against their
   table, positions against the window ``map_window`` checked. Compiled, the loads have
   no other bounds checks, so a missing check here is a memory-safety bug; interpreted,
   the same mistake raises ``struct.error``, which the differential tests would report.
4. A guest violation raises a ``VirtqueueError`` inside. ``pop``/``push``/
   ``set_notification`` catch it, keep it in ``broken`` and keep what was done before it
   (``pop`` returns the chains parsed before the bad one). Broken is sticky until
   ``reset``. Host misuse raises ``UsageError`` before anything is written.
5. Fixed-width arithmetic is explicit: ``_wrap16`` for split indices; packed positions
   stay in ``[0, size)`` beside a wrap counter.
6. Only the memory primitives (``_ld*``, ``_st*``, ``_rptr``/``_wptr``/``_hptr``,
   ``_copy``, ``_fence``) exist twice: interpreted below under ``if not cython.compiled``,
   compiled as the ``cdef inline`` functions of ``_ring_c.pxd``. Everything else is one
   code path for both.
7. No lost wakeup on the available side (§2.7.10, §2.8.14): a pop that publishes
   ``avail_event`` (or the device event structure) fences and looks at the ring once more
   before it returns fewer chains than asked; buffers the driver made available while it
   could not yet see the new event are popped in the same call (the driver, comparing
   against the old event, did not notify). A pop that returns fewer chains than its budget
   has left the ring empty *after* its last publication.
8. No lost wakeup on the used side: ``signalled`` is the used position of the last
   notification the ring asked for. ``notification_owed`` reads the driver's suppression
   again later and asks for a notification the driver wants for a used entry published
   since then: a driver whose store of ``used_event`` passed its load of the used index
   (a guest that drops memory barriers) still gets its interrupt. ``signalled`` stays
   within one queue size of the used position, the most the driver can lag behind.
"""

from __future__ import annotations

import struct
from array import array
from typing import TYPE_CHECKING

try:
    import cython
except ImportError:  # Cython is a build tool; without it this module only runs interpreted.
    from . import _cython_shim as cython

from devmodels import GuestError, GuestMemoryError, UsageError

from ._windows import detach as _detach
from ._windows import map_area as _map_area
from ._windows import map_window as _map
from .defs import (
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_MAX_CHAIN_BYTES,
    VIRTQ_MAX_SIZE,
    VIRTQ_USED_F_NO_NOTIFY,
)
from . import errors as err

__all__ = ["Chain", "Ring", "COMPILED"]

COMPILED: bool = cython.compiled
"""Whether this module is the compiled twin (the selector refuses an uncompiled ``_ring_c``)."""

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DESC = struct.Struct("<QIHH")  # virtq_desc (addr, len, flags, next) and pvirtq_desc (addr, len, id, flags)
_SEG = struct.Struct("<QI")  # one stored segment: gpa, length
_STAGE = struct.Struct("<III")  # one staged used entry: id, written, complete
_SEG_SIZE = 12
_GENERATION = 0  # bumped by every Ring.reset (see there)


# -- memory primitives (rule 6) -------------------------------------------------------------
# A window is a memoryview here (loads use ``struct``); compiled, it is a raw pointer taken
# from a typed memoryview the caller keeps alive for the call (rule 2), and these functions
# are the ``cdef inline`` ones of the same names in _ring_c.pxd.

if not cython.compiled:

    def _rptr(view, off):
        return memoryview(view)[off:]

    _wptr = _rptr

    def _hptr(view):
        return view

    def _copy(p, start, stop):
        return bytes(p[start:stop])

    def _ld16(p, off):
        return _U16.unpack_from(p, off)[0]

    def _ld32(p, off):
        return _U32.unpack_from(p, off)[0]

    def _ld64(p, off):
        return _U64.unpack_from(p, off)[0]

    def _ld_desc(p, off):
        """One descriptor: split ``(addr, len, flags, next)``, packed ``(addr, len, id, flags)``."""
        return _DESC.unpack_from(p, off)

    def _ld_stage(p, off):
        """A staged used entry: ``(id, written, complete)``."""
        return _STAGE.unpack_from(p, off)

    def _st16(p, off, value):
        _U16.pack_into(p, off, value)

    def _st32(p, off, value):
        _U32.pack_into(p, off, value)

    def _st_stage(p, off, buffer_id, length, complete):
        _STAGE.pack_into(p, off, buffer_id, length, complete)

    def _st_seg(p, off, gpa, length):
        _SEG.pack_into(p, off, gpa, length)

    def _fence():
        """Order ring accesses against a driver on another CPU (interpreted, they already are)."""


def _wrap16(value):
    """``value`` modulo 2**16, the arithmetic of the split ring's free-running indices (CONVENTIONS: fixed-width)."""
    return value & 0xFFFF


def _avail(flags, wrap):
    """§2.8.1: available iff AVAIL matches the wrap counter and USED does not."""
    return ((flags & VIRTQ_DESC_F_AVAIL) != 0) == wrap and ((flags & VIRTQ_DESC_F_USED) != 0) != wrap


def _entry(used, i):
    """``used[i]`` as ``(item, written)``; anything else is host misuse."""
    entry = used[i]
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
        raise UsageError(f"used entries are (chain or id, written) pairs, got {entry!r}")
    return entry


# -- chains -------------------------------------------------------------------------------


class Chain:
    """One available descriptor chain (split) or list (packed), as the device popped it.

    Attributes:
        head: split: the head descriptor index; packed: the buffer id. A used entry
            returns it.
        n_desc: descriptors it occupies in the ring (an indirect table counts as one).
        n_readable, n_writable: how many device-readable / device-writable segments.
        readable_len, writable_len: their total lengths in bytes.

    Segments are copied at pop time (12 packed bytes each) and decoded on access, so the
    driver cannot change them later and popping creates no object per descriptor.
    """

    if TYPE_CHECKING:  # the fields (declared for Cython in _ring_c.pxd)
        head: int
        n_desc: int
        n_readable: int
        n_writable: int
        readable_len: int
        writable_len: int
        _segs: bytes
        _pos: int
        _generation: int

    def __init__(self):
        raise TypeError("chains are created by Virtqueue.pop_batch")

    @property
    def readable(self):
        """Device-readable ``(gpa, length)`` segments, in chain order."""
        return self._pairs(0, self.n_readable)

    @property
    def writable(self):
        """Device-writable ``(gpa, length)`` segments, in chain order."""
        return self._pairs(self.n_readable, self.n_readable + self.n_writable)

    def _pairs(self, first, stop):
        p = self._segs
        out: list[tuple[int, int]] = []
        for i in range(first, stop):
            out.append((_ld64(p, _SEG_SIZE * i), _ld32(p, _SEG_SIZE * i + 8)))
        return out

    def to_tuple(self):
        """``(head, n_desc, readable, writable)`` as plain tuples, for comparisons."""
        return (self.head, self.n_desc, tuple(self.readable), tuple(self.writable))

    def __repr__(self):
        return f"Chain(head={self.head}, n_desc={self.n_desc}, readable={self.readable!r}, writable={self.writable!r})"


# -- the ring -------------------------------------------------------------------------------


class Ring:
    """The device side of one virtqueue ring, split or packed (``packed`` selects).

    ``Virtqueue`` wraps it and validates what the host sets. Args: ``max_size`` (1..32768).
    """

    def __init__(self, max_size):
        self.max_size = max_size
        self.max_segments = VIRTQ_MAX_SIZE
        self.packed = False
        self._scratch = bytearray()
        self._tview = None
        self._tbase = 0
        self._tend = 0
        self.reset()

    def reset(self):
        """Back to the initial state (§2.6.1.1.1): nothing available, nothing in flight."""
        self.size = self.max_size
        self.desc_addr = 0
        self.driver_addr = 0
        self.device_addr = 0
        self.ready = False
        self.event_idx = False
        self.in_order = False
        self.indirect = True
        self.notify = True
        self.next_avail = 0
        self.next_used = 0
        self.avail_wrap = True  # §2.8.1: both wrap counters start at 1
        self.used_wrap = True
        self.in_order_next = 0
        self.set_inflight(0, ())
        self.broken = None
        self.signalled = 0x8000 if self.packed else 0  # rule 8: position 0 (packed: wrap counter 1)
        # A process-wide counter: a chain's generation names its ring and that ring's
        # epoch at once, so chains need no reference to the ring.
        global _GENERATION
        _GENERATION += 1
        self.generation = _GENERATION
        return 0

    def set_inflight(self, size, pairs):
        """Packed ring: replace the in-flight table (``reset``/``restore``; pairs validated)."""
        self.inflight = array("H", bytes(2 * size))
        self._mark = bytearray(size)
        self.inflight_descs = 0
        self.inflight_ids = 0
        for buffer_id, count in pairs:
            self.inflight[buffer_id] = count
            self.inflight_descs += count
            self.inflight_ids += 1
        return 0

    def mark_signalled(self):
        """Count the used entries published so far as notified (``restore``, a new front-end)."""
        if self.packed:
            self.signalled = self.next_used | (self.used_wrap << 15)
        else:
            self.signalled = self.next_used
        return 0

    # -- entry points (rule 4) ---------------------------------------------------------------

    def pop(self, memory, budget):
        """Up to ``budget`` available chains; ``[]`` when not ready or broken."""
        out: list[Chain] = []
        if self.broken is not None or not self.ready or budget <= 0:
            return out
        try:
            if self.packed:
                self._pop_packed(memory, budget, out)
            else:
                self._pop_split(memory, budget, out)
        except GuestError as exc:
            self.broken = _detach(exc)
        finally:
            self._tview = None  # the indirect-table window lives for this call only (rule 2)
            self._tend = 0
        return out

    def push(self, memory, used):
        """Return ``(chain or head, written)`` entries; ``True`` if the driver wants a notification."""
        if not isinstance(used, list):
            used = list(used)
        if self.broken is not None or not self.ready or len(used) == 0:
            return False
        try:
            if self.packed:
                return self._push_packed(memory, used)
            return self._push_split(memory, used)
        except GuestError as exc:
            self.broken = _detach(exc)
        return False

    def set_notification(self, memory, enable):
        """Enable or suppress available-buffer notifications (§2.7.10, §2.8.10).

        Returns ``True`` when enabling finds buffers already available (pop again: the
        driver may have added them before it could see the change).
        """
        self.notify = enable
        if self.broken is not None or not self.ready:
            return False
        try:
            if self.packed:
                return self._notify_packed(memory, enable)
            return self._notify_split(memory, enable)
        except GuestError as exc:
            self.broken = _detach(exc)
        return False

    def notification_owed(self, memory):
        """Whether the driver now asks for a used buffer notification that the pushes since
        the last one did not send (rule 8); ``True`` counts it as sent: send it."""
        if self.broken is not None or not self.ready:
            return False
        try:
            if self.packed:
                return self._owed_packed(memory)
            return self._owed_split(memory)
        except GuestError as exc:
            self.broken = _detach(exc)
        return False

    def has_available(self, memory):
        """Whether the driver made buffers available past the next one to pop (reads only)."""
        if self.broken is not None or not self.ready:
            return False
        try:
            if self.packed:
                self._check_packed()
                dbuf, doff = _map_area(memory, self.desc_addr, 16 * self.size, False, "descriptor ring", True)
                dview = dbuf
                ring = _rptr(dview, doff)
                _fence()
                return _avail(_ld16(ring, 16 * self.next_avail + 14), self.avail_wrap)
            self._check_split()
            abuf, aoff = _map_area(memory, self.driver_addr, 6 + 2 * self.size, False, "available ring", False)
            aview = abuf
            avail = _rptr(aview, aoff)
            _fence()
            return _ld16(avail, 2) != self.next_avail
        except GuestError as exc:
            self.broken = _detach(exc)
        return False

    def rewind(self, chains):
        """Give back ``chains``, the last ones popped and not used, in pop order: the ring
        reads them again as if never popped (QEMU ``virtqueue_rewind``).

        Returns ``False`` (and changes nothing) on a broken ring.

        Raises:
            UsageError: an item is not a chain of this ring's epoch, or the chains are not
                the last ones popped, in order, all still in flight.
        """
        n = len(chains)
        for item in chains:
            if not isinstance(item, Chain):
                raise UsageError(f"rewind takes chains, got {type(item).__name__}")
        if self.broken is not None:
            return False
        if n == 0:
            return True
        first = chains[0]
        for i in range(n):
            chain = chains[i]
            if chain._generation != self.generation:
                raise UsageError(f"chain {chain.head} was popped from another queue or before a reset/restore")
        if self.packed:
            return self._rewind_packed(chains, n)
        if n > _wrap16(self.next_avail - self.next_used):
            raise UsageError(f"rewinding {n} chains but fewer are in flight")
        for i in range(n):
            chain = chains[i]
            if chain._pos != _wrap16(self.next_avail - n + i):
                raise UsageError(f"chain {chain.head} is not among the last {n} popped, in order")
        self.next_avail = _wrap16(self.next_avail - n)
        if self.in_order:
            self.in_order_next = first.head
        return True

    def reread_split(self, memory, head):
        """Split ring: the chain whose head descriptor is ``head``, parsed from the descriptor
        table exactly as ``pop`` parses one, positions unchanged. A chain a previous back-end
        took and did not use is still the driver's in flight, so its descriptors are as it
        made them available (vhost-user inflight resubmission). ``None`` when the ring is not
        ready, broken, or breaks on it (rule 4).

        Raises:
            UsageError: a packed ring, or VIRTIO_F_IN_ORDER (its chains follow pop order).
        """
        if self.packed or self.in_order:
            raise UsageError("reread_split takes a split ring without VIRTIO_F_IN_ORDER")
        if self.broken is not None or not self.ready:
            return None
        try:
            self._check_split()
            size = self.size
            if head >= size:
                raise err.DescriptorIndexError(head, size, "in-flight head", self.desc_addr)
            dbuf, doff = _map_area(memory, self.desc_addr, 16 * size, False, "descriptor table", False)
            dview = dbuf
            desc = _rptr(dview, doff)
            sview = self._scratch
            scratch = _wptr(sview, 0)
            return self._walk_split(memory, scratch, desc, head, self.desc_addr + 16 * head)
        except GuestError as exc:
            self.broken = _detach(exc)
        finally:
            self._tview = None
            self._tend = 0
        return None

    def reread_packed(self, memory, descs):
        """Packed ring: the buffer whose descriptors were ``descs`` when a previous back-end
        took it (16 bytes each, in ``pvirtq_desc`` layout), parsed as ``pop`` parses a list.
        Its ring slots may hold used descriptors since, so the copy is what is parsed
        (vhost-user inflight resubmission). The buffer must be in flight in the ring's table
        with as many descriptors (``set_inflight``). ``None`` when the ring is not ready,
        broken, or breaks on it (rule 4).

        Raises:
            UsageError: a split ring; ``descs`` not 1..size descriptors; the buffer id not
                in flight with that many descriptors.
        """
        if not self.packed:
            raise UsageError("reread_packed takes a packed ring")
        if self.broken is not None or not self.ready:
            return None
        n = len(descs) >> 4
        if n == 0 or len(descs) & 15 or n > self.size:
            raise UsageError(f"{len(descs)} bytes are not 1..{self.size} descriptors")
        try:
            self._check_packed()
            size = self.size
            view = descs
            p = _rptr(view, 0)
            sview = self._scratch
            scratch = _wptr(sview, 0)
            gpa = self.desc_addr
            self._begin()
            buffer_id = 0
            for k in range(n):
                addr, length, buffer_id, flags = _ld_desc(p, 16 * k)
                # §2.8.6: every descriptor but the last has NEXT; §2.8.19: INDIRECT alone.
                if ((flags & VIRTQ_DESC_F_NEXT) != 0) != (k + 1 < n):
                    raise err.PackedChainError(k, gpa)
                if flags & VIRTQ_DESC_F_INDIRECT:
                    if not self.indirect:
                        raise err.IndirectFeatureError(k, gpa)
                    if n > 1:
                        raise err.IndirectNextError(k, gpa, True)
                    self._walk_indirect(memory, scratch, addr, length, k, gpa, True)
                else:
                    self._add(scratch, addr, length, flags & VIRTQ_DESC_F_WRITE, k, gpa)
            if buffer_id >= size:
                raise err.BufferIdError(buffer_id, size, gpa)
            if buffer_id >= len(self.inflight) or self.inflight[buffer_id] != n:
                raise UsageError(f"buffer {buffer_id} is not in flight with {n} descriptors")
            return self._finish(scratch, buffer_id, n, self.next_avail)
        except GuestError as exc:
            self.broken = _detach(exc)
        finally:
            self._tview = None
            self._tend = 0
        return None

    def _rewind_packed(self, chains, n):
        size = self.size
        total = 0
        chain = chains[0]
        pos = chain._pos
        iview = self.inflight
        inflight = _hptr(iview)
        for i in range(n):
            chain = chains[i]
            if chain._pos != pos or chain.head >= len(self.inflight) or inflight[chain.head] != chain.n_desc:
                raise UsageError(f"buffer {chain.head} is not among the last {n} popped, in order, in flight")
            total += chain.n_desc
            pos += chain.n_desc
            if pos >= size:
                pos -= size
        if pos != self.next_avail or total > self.inflight_descs:
            raise UsageError(f"the {n} chains do not end at the next position to pop")
        for i in range(n):
            chain = chains[i]
            inflight[chain.head] = 0
        self.inflight_descs -= total
        self.inflight_ids -= n
        chain = chains[0]
        if chain._pos > self.next_avail or total == size:
            self.avail_wrap = not self.avail_wrap  # went back over position 0
        self.next_avail = chain._pos
        return True

    # -- split ring (§2.7) -------------------------------------------------------------------

    def _check_split(self):
        size = self.size
        # §2.7: Queue Size is a power of 2, at most 32768 (and at most what the device offers).
        if size == 0 or size > self.max_size or size & (size - 1) != 0:
            raise err.QueueSizeError(size, self.max_size, False)
        # §2.7.1: each part is aligned as the §2.7 table says.
        if self.desc_addr & 15:
            raise err.RingAddressError("descriptor table", self.desc_addr, 16 * size, "is not 16-byte aligned")
        if self.driver_addr & 1:
            raise err.RingAddressError("available ring", self.driver_addr, 6 + 2 * size, "is not 2-byte aligned")
        if self.device_addr & 3:
            raise err.RingAddressError("used ring", self.device_addr, 6 + 8 * size, "is not 4-byte aligned")
        self._size_scratch(size)
        return 0

    def _size_scratch(self, size):
        # A chain has at most Queue Size segments (_add checks before it stores), and a
        # push at most Queue Size entries: 12 * size bytes always suffice (rule 3).
        if len(self._scratch) < _SEG_SIZE * size:
            self._scratch = bytearray(_SEG_SIZE * size)
        return 0

    def _pop_split(self, memory, budget, out):
        self._check_split()
        size = self.size
        dbuf, doff = _map_area(memory, self.desc_addr, 16 * size, False, "descriptor table", False)
        abuf, aoff = _map_area(memory, self.driver_addr, 6 + 2 * size, False, "available ring", False)
        ubuf, uoff = _map_area(memory, self.device_addr, 6 + 8 * size, True, "used ring", False)
        dview = dbuf
        aview = abuf
        uview = ubuf
        desc = _rptr(dview, doff)
        avail = _rptr(aview, aoff)
        used = _wptr(uview, uoff)
        sview = self._scratch
        scratch = _wptr(sview, 0)
        popped = 0
        while True:
            avail_idx = _ld16(avail, 2)
            _fence()  # read idx before the entries it publishes
            # §2.7.6.1: idx never decreases, and no more than Queue Size chains can be
            # outstanding (each holds a descriptor); virtio-queue ``InvalidAvailRingIndex``.
            outstanding = _wrap16(avail_idx - self.next_used)
            inflight = _wrap16(self.next_avail - self.next_used)
            if outstanding > size or outstanding < inflight:
                raise err.AvailIndexError(avail_idx, self.next_avail, self.next_used, size)
            count = outstanding - inflight
            if count > budget - popped:
                count = budget - popped
            for _k in range(count):
                slot = self.next_avail & (size - 1)
                head = _ld16(avail, 4 + 2 * slot)
                out.append(self._walk_split(memory, scratch, desc, head, self.driver_addr + 4 + 2 * slot))
                self.next_avail = _wrap16(self.next_avail + 1)
            popped += count
            if not (self.event_idx and self.notify):
                return 0
            # §2.7.10: avail_event asks for a notification once the driver publishes past it.
            _st16(used, 4 + 8 * size, self.next_avail)
            if popped >= budget:
                return 0  # the caller comes back for the rest
            _fence()  # rule 7: publish avail_event, then look again
            if _ld16(avail, 2) == self.next_avail:
                return 0

    def _walk_split(self, memory, scratch, desc, head, slot_gpa):
        size = self.size
        if head >= size:
            raise err.DescriptorIndexError(head, size, "available ring head", slot_gpa)
        # §2.7.5: with VIRTIO_F_IN_ORDER the driver uses descriptors in ring order.
        if self.in_order and head != self.in_order_next:
            raise err.InOrderError(head, self.in_order_next, slot_gpa)
        self._begin()
        idx = head
        ndesc = 0
        while True:
            gpa = self.desc_addr + 16 * idx
            addr, length, flags, nxt = _ld_desc(desc, 16 * idx)
            ndesc += 1
            if flags & VIRTQ_DESC_F_INDIRECT:
                # §2.7.5.3.1: only with VIRTIO_F_INDIRECT_DESC, never together with NEXT.
                # §2.7.5.3.2: its WRITE flag is ignored; chained descriptors may precede it.
                if not self.indirect:
                    raise err.IndirectFeatureError(idx, gpa)
                if flags & VIRTQ_DESC_F_NEXT:
                    raise err.IndirectNextError(idx, gpa)
                self._walk_indirect(memory, scratch, addr, length, idx, gpa, False)
                break
            self._add(scratch, addr, length, flags & VIRTQ_DESC_F_WRITE, idx, gpa)
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            if nxt >= size:
                raise err.DescriptorIndexError(nxt, size, "next descriptor", gpa)
            # §2.7.5.2: with IN_ORDER, next is x + 1 (0 after the last table entry).
            if self.in_order and nxt != ((idx + 1) & (size - 1)):
                raise err.InOrderError(nxt, (idx + 1) & (size - 1), gpa)
            # §2.7.5.2: loops are forbidden; a walk longer than the table is one.
            if ndesc >= size:
                raise err.ChainLoopError(head, size, gpa)
            idx = nxt
        if self.in_order:
            self.in_order_next = (head + ndesc) & (size - 1)
        return self._finish(scratch, head, ndesc, self.next_avail)

    def _push_split(self, memory, used):
        self._check_split()
        size = self.size
        abuf, aoff = _map_area(memory, self.driver_addr, 6 + 2 * size, False, "available ring", False)
        ubuf, uoff = _map_area(memory, self.device_addr, 6 + 8 * size, True, "used ring", False)
        aview = abuf
        uview = ubuf
        sview = self._scratch
        avail = _rptr(aview, aoff)
        ring = _wptr(uview, uoff)
        staged = _wptr(sview, 0)
        n = len(used)
        if n > _wrap16(self.next_avail - self.next_used):
            raise UsageError(f"pushing {n} used entries but fewer chains are in flight")
        iview = self.inflight  # packed-only tables: empty here, never indexed
        mview = self._mark
        self._stage(used, n, staged, _hptr(iview), _wptr(mview, 0))
        old = self.next_used
        i = 0
        while i < n:
            last = self._run_end(staged, i, n)
            slot = self.next_used & (size - 1)
            # §2.7.8: virtq_used_elem {le32 id; le32 len}. §2.7.9: with IN_ORDER one entry
            # may stand for a batch, and idx then moves by the batch size.
            buffer_id, written, complete = _ld_stage(staged, _SEG_SIZE * last)
            _st32(ring, 4 + 8 * slot, buffer_id)
            _st32(ring, 8 + 8 * slot, written)
            self.next_used = _wrap16(self.next_used + (last - i + 1))
            i = last + 1
        _fence()  # §2.7.8.2: len (and id) before idx
        _st16(ring, 2, self.next_used)
        _fence()  # publish idx before reading the driver's suppression fields
        if self.event_idx:
            # §2.7.7.2: notify iff the used idx passed used_event in this batch.
            used_event = _ld16(avail, 4 + 2 * size)
            notify = _wrap16(self.next_used - used_event - 1) < _wrap16(self.next_used - old)
        else:
            # §2.7.7.2: without EVENT_IDX, flags 1 means "no notification" (only that bit).
            notify = not (_ld16(avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT)
        if notify:
            self.signalled = self.next_used
        elif _wrap16(self.next_used - self.signalled) > size:
            self.signalled = _wrap16(self.next_used - size)  # rule 8: the driver lags at most size
        return notify

    def _owed_split(self, memory):
        self._check_split()
        size = self.size
        since = _wrap16(self.next_used - self.signalled)
        if since == 0:
            return False
        if since > size:
            self.signalled = _wrap16(self.next_used - size)
            since = size
        abuf, aoff = _map_area(memory, self.driver_addr, 6 + 2 * size, False, "available ring", False)
        aview = abuf
        avail = _rptr(aview, aoff)
        _fence()
        if self.event_idx:
            # §2.7.7.2 over every entry published since the last notification.
            used_event = _ld16(avail, 4 + 2 * size)
            owed = _wrap16(self.next_used - used_event - 1) < since
        else:
            owed = not (_ld16(avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT)
        if owed:
            self.signalled = self.next_used
        return owed

    def _notify_split(self, memory, enable):
        self._check_split()
        size = self.size
        abuf, aoff = _map_area(memory, self.driver_addr, 6 + 2 * size, False, "available ring", False)
        ubuf, uoff = _map_area(memory, self.device_addr, 6 + 8 * size, True, "used ring", False)
        aview = abuf
        uview = ubuf
        avail = _rptr(aview, aoff)
        ring = _wptr(uview, uoff)
        if self.event_idx:
            # §2.7.10.2: with EVENT_IDX the device keeps flags 0 and moves avail_event.
            if enable:
                _st16(ring, 4 + 8 * size, self.next_avail)
        else:
            _st16(ring, 0, 0 if enable else VIRTQ_USED_F_NO_NOTIFY)
        _fence()  # the driver must see the change before we look for work it missed
        if enable:
            return _ld16(avail, 2) != self.next_avail
        return False

    # -- packed ring (§2.8) ------------------------------------------------------------------

    def _check_packed(self):
        size = self.size
        # §2.8: up to 2^15 entries, not necessarily a power of 2.
        if size == 0 or size > self.max_size or size > VIRTQ_MAX_SIZE:
            raise err.QueueSizeError(size, self.max_size, True)
        # §2.8.11 with the §2.8.10.1 table: 16 for the ring, 4 for each event structure.
        if self.desc_addr & 15:
            raise err.RingAddressError("descriptor ring", self.desc_addr, 16 * size, "is not 16-byte aligned", True)
        if self.driver_addr & 3:
            raise err.RingAddressError("driver event suppression", self.driver_addr, 4, "is not 4-byte aligned", True)
        if self.device_addr & 3:
            raise err.RingAddressError("device event suppression", self.device_addr, 4, "is not 4-byte aligned", True)
        # Positions from an earlier size must not index the ring (rule 3).
        if self.next_avail >= size or self.next_used >= size:
            raise err.QueueSizeError(size, self.max_size, True, "queue size changed under the ring positions")
        if len(self.inflight) != size:
            if self.inflight_ids:
                raise err.QueueSizeError(size, self.max_size, True, "queue size changed with buffers in flight")
            self.set_inflight(size, ())
        self._size_scratch(size)
        return 0

    def _pop_packed(self, memory, budget, out):
        self._check_packed()
        size = self.size
        dbuf, doff = _map_area(memory, self.desc_addr, 16 * size, False, "descriptor ring", True)
        _map_area(memory, self.driver_addr, 4, False, "driver event suppression", True)
        ebuf, eoff = _map_area(memory, self.device_addr, 4, True, "device event suppression", True)
        dview = dbuf
        eview = ebuf
        iview = self.inflight
        ring = _rptr(dview, doff)
        event = _wptr(eview, eoff)
        inflight = _hptr(iview)
        sview = self._scratch
        scratch = _wptr(sview, 0)
        count = 0
        while True:
            while count < budget:
                # §2.8.15: use a descriptor only once its AVAIL bit changed to our wrap counter.
                if not _avail(_ld16(ring, 16 * self.next_avail + 14), self.avail_wrap):
                    break
                _fence()  # read flags before the rest of the descriptors they publish
                out.append(self._walk_packed(memory, scratch, ring, inflight))
                count += 1
            if not (self.event_idx and self.notify):
                return 0
            # §2.8.14: ask for a notification when the next descriptor is made available.
            _st16(event, 0, self.next_avail | (self.avail_wrap << 15))
            _st16(event, 2, RING_EVENT_FLAGS_DESC)
            if count >= budget:
                return 0  # the caller comes back for the rest
            _fence()  # rule 7: publish the event, then look again
            if not _avail(_ld16(ring, 16 * self.next_avail + 14), self.avail_wrap):
                return 0

    def _walk_packed(self, memory, scratch, ring, inflight):
        size = self.size
        pos = self.next_avail
        start = pos
        wrap = self.avail_wrap
        free = size - self.inflight_descs
        self._begin()
        count = 0
        while True:
            gpa = self.desc_addr + 16 * pos
            if count >= free:
                # §2.8.17: a list no longer than the Queue Size, and only into free slots.
                if free == size:
                    raise err.ChainTooLongError(start, size, gpa, True)
                raise err.RingOverrunError(start, free, gpa)
            addr, length, buffer_id, flags = _ld_desc(ring, 16 * pos)
            # §2.8.6: every descriptor of a list carries correct AVAIL/USED bits.
            if count and not _avail(flags, wrap):
                raise err.PackedChainError(pos, gpa)
            count += 1
            if flags & VIRTQ_DESC_F_INDIRECT:
                # §2.8.19: only with VIRTIO_F_INDIRECT_DESC, and not in a NEXT list.
                if not self.indirect:
                    raise err.IndirectFeatureError(pos, gpa)
                if count > 1 or flags & VIRTQ_DESC_F_NEXT:
                    raise err.IndirectNextError(pos, gpa, True)
                self._walk_indirect(memory, scratch, addr, length, pos, gpa, True)
            else:
                self._add(scratch, addr, length, flags & VIRTQ_DESC_F_WRITE, pos, gpa)
            pos += 1
            if pos == size:
                pos = 0
                wrap = not wrap
            if not flags & VIRTQ_DESC_F_NEXT:
                break
        # §2.8.6: the buffer id is in the last descriptor of the list.
        if buffer_id >= size:
            raise err.BufferIdError(buffer_id, size, gpa)
        if inflight[buffer_id]:
            raise err.BufferIdInUseError(buffer_id, gpa)
        inflight[buffer_id] = count
        self.inflight_descs += count
        self.inflight_ids += 1
        self.next_avail = pos
        self.avail_wrap = wrap
        return self._finish(scratch, buffer_id, count, start)

    def _push_packed(self, memory, used):
        self._check_packed()
        size = self.size
        dbuf, doff = _map_area(memory, self.desc_addr, 16 * size, True, "descriptor ring", True)
        vbuf, voff = _map_area(memory, self.driver_addr, 4, False, "driver event suppression", True)
        dview = dbuf
        vview = vbuf
        iview = self.inflight
        mview = self._mark
        sview = self._scratch
        ring = _wptr(dview, doff)
        driver = _rptr(vview, voff)
        inflight = _hptr(iview)
        staged = _wptr(sview, 0)
        n = len(used)
        if n > self.inflight_ids:
            raise UsageError(f"pushing {n} used entries but only {self.inflight_ids} buffers are in flight")
        self._stage(used, n, staged, inflight, _wptr(mview, 0))
        old = self.next_used + (0 if self.used_wrap else size)
        i = 0
        while i < n:
            last = self._run_end(staged, i, n)
            skip = 0
            for j in range(i, last + 1):
                buffer_id = _ld32(staged, _SEG_SIZE * j)
                skip += inflight[buffer_id]
                inflight[buffer_id] = 0
            off = 16 * self.next_used
            buffer_id, written, complete = _ld_stage(staged, _SEG_SIZE * last)
            # §2.8.4: a used descriptor's len is what the device wrote; §2.8.3: WRITE says
            # it wrote something. §2.8.1: AVAIL and USED both equal our wrap counter,
            # stored last so the driver never sees a half-written descriptor.
            _st32(ring, off + 8, written)
            _st16(ring, off + 12, buffer_id)
            flags = VIRTQ_DESC_F_WRITE if written else 0
            if self.used_wrap:
                flags |= VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
            _fence()
            _st16(ring, off + 14, flags)
            # §2.8.6/§2.8.8: skip the rest of the list (of the in-order batch).
            self.inflight_descs -= skip
            self.inflight_ids -= last - i + 1
            self.next_used += skip
            if self.next_used >= size:
                self.next_used -= size
                self.used_wrap = not self.used_wrap
            i = last + 1
        _fence()  # publish the used descriptors before reading the driver's suppression
        notify = self._packed_wants(driver, size, old)
        new = self.next_used + (0 if self.used_wrap else size)
        if notify:
            self.signalled = self.next_used | (self.used_wrap << 15)
        else:
            self._clamp_signalled(size, new)
        return notify

    def _packed_wants(self, driver, size, old):
        """Whether the driver's suppression asks for a notification for the descriptors
        used from lap position ``old`` (in ``[0, 2 * size)``) to the current one."""
        event_flags = _ld16(driver, 2) & 3
        if event_flags == RING_EVENT_FLAGS_DISABLE:
            return False
        if event_flags != RING_EVENT_FLAGS_DESC or not self.event_idx:
            # ENABLE, the reserved 3, or DESC without EVENT_IDX (§2.8.10: only valid with
            # it): a spurious notification is harmless, a missing one hangs the driver.
            return True
        # §2.8.14: notify iff descriptor (off, wrap) was used in this batch. Positions count
        # modulo 2 * size with the lap parity from the wrap counter, like a split index.
        off_wrap = _ld16(driver, 0)
        if (off_wrap & 0x7FFF) >= size:
            return True
        new = self.next_used + (0 if self.used_wrap else size)
        event = (off_wrap & 0x7FFF) + (0 if off_wrap >> 15 else size)
        span = 2 * size
        return (event - old + span) % span < (new - old + span) % span

    def _signalled_lap(self, size):
        """``signalled`` as a lap position in ``[0, 2 * size)`` (rule 8)."""
        position = self.signalled & 0x7FFF
        if position >= size:  # from before a resize: nothing is owed from then
            self.signalled = self.next_used | (self.used_wrap << 15)
            position = self.next_used
        return position + (0 if self.signalled >> 15 else size)

    def _clamp_signalled(self, size, new):
        """Keep ``signalled`` within ``size`` descriptors of lap position ``new`` (rule 8)."""
        span = 2 * size
        if (new - self._signalled_lap(size) + span) % span > size:
            lap = (new - size + span) % span
            self.signalled = (lap - size) if lap >= size else (lap | 0x8000)
        return 0

    def _owed_packed(self, memory):
        self._check_packed()
        size = self.size
        vbuf, voff = _map_area(memory, self.driver_addr, 4, False, "driver event suppression", True)
        vview = vbuf
        driver = _rptr(vview, voff)
        new = self.next_used + (0 if self.used_wrap else size)
        self._clamp_signalled(size, new)
        old = self._signalled_lap(size)
        if old == new:
            return False
        _fence()
        owed = self._packed_wants(driver, size, old)
        if owed:
            self.signalled = self.next_used | (self.used_wrap << 15)
        return owed

    def _notify_packed(self, memory, enable):
        self._check_packed()
        size = self.size
        dbuf, doff = _map_area(memory, self.desc_addr, 16 * size, False, "descriptor ring", True)
        ebuf, eoff = _map_area(memory, self.device_addr, 4, True, "device event suppression", True)
        dview = dbuf
        eview = ebuf
        ring = _rptr(dview, doff)
        event = _wptr(eview, eoff)
        if not enable:
            _st16(event, 2, RING_EVENT_FLAGS_DISABLE)
        elif self.event_idx:
            _st16(event, 0, self.next_avail | (self.avail_wrap << 15))
            _st16(event, 2, RING_EVENT_FLAGS_DESC)
        else:
            _st16(event, 2, RING_EVENT_FLAGS_ENABLE)
        _fence()
        if enable:
            return _avail(_ld16(ring, 16 * self.next_avail + 14), self.avail_wrap)
        return False

    # -- shared pieces -----------------------------------------------------------------------

    def _walk_indirect(self, memory, scratch, table, length, index, gpa, packed):
        # §2.7.5.3 / §2.8.7: addr and len give the table: len / 16 descriptors.
        if length == 0 or length & 15:
            raise err.IndirectTableError(index, table, length, "is not a non-zero multiple of 16 bytes", packed)
        # Tables usually share a RAM region: the window of the last one serves the next
        # when the table lies wholly inside it (checked without overflowing 2**64).
        if not (self._tend and self._tbase <= table <= self._tend and length <= self._tend - table):
            try:
                tbuf, toff = _map(memory, table, length, False)
            except GuestMemoryError:
                raise err.IndirectTableError(index, table, length, "is not wholly inside one RAM region", packed) from None
            self._tview = tbuf
            self._tbase = table - toff
            self._tend = self._tbase + len(tbuf)
        tmem = _rptr(self._tview, table - self._tbase)
        entries = length >> 4
        if packed:
            # §2.8.7: entries follow one another; only WRITE is valid, the other flags and
            # the buffer id are reserved and ignored. _add bounds the walk by the queue size.
            for j in range(entries):
                addr, blen, ignored_id, flags = _ld_desc(tmem, 16 * j)
                self._add(scratch, addr, blen, flags & VIRTQ_DESC_F_WRITE, j, table + 16 * j)
            return 0
        j = 0
        steps = 0
        while True:
            addr, blen, flags, nxt = _ld_desc(tmem, 16 * j)
            steps += 1
            # §2.7.5.3.1: one table per descriptor, no INDIRECT inside it.
            if flags & VIRTQ_DESC_F_INDIRECT:
                raise err.NestedIndirectError(j, table + 16 * j)
            self._add(scratch, addr, blen, flags & VIRTQ_DESC_F_WRITE, j, table + 16 * j)
            if not flags & VIRTQ_DESC_F_NEXT:
                return 0
            if nxt >= entries:
                raise err.DescriptorIndexError(nxt, entries, "indirect next descriptor", table + 16 * j)
            # §2.7.5.3.1: with IN_ORDER, indirect descriptors are sequential.
            if self.in_order and nxt != j + 1:
                raise err.InOrderError(nxt, j + 1, table + 16 * j)
            if steps >= entries:
                raise err.ChainLoopError(j, entries, table + 16 * j)
            j = nxt

    def _begin(self):
        self._nread = 0
        self._nwrite = 0
        self._rlen = 0
        self._wlen = 0
        return 0

    def _add(self, scratch, addr, length, write, index, gpa):
        if write:
            self._nwrite += 1
            self._wlen += length
        elif self._nwrite:
            # §2.7.4.2 / §2.8.17: device-writable elements come after device-readable ones.
            raise err.DescriptorOrderError(index, gpa, self.packed)
        else:
            self._nread += 1
            self._rlen += length
        # §2.7.5.2: no chain of 2**32 bytes or more (a used len is 32 bits).
        if self._rlen + self._wlen > VIRTQ_MAX_CHAIN_BYTES:
            raise err.ChainBytesError(index, self._rlen + self._wlen, gpa)
        # §2.7.5.3.1 / §2.8.17: no chain longer than the Queue Size, indirect ones included;
        # §2.7.4.1 / §2.8.18: and the device MAY set a lower limit (max_segments).
        if self._nread + self._nwrite > self.size or self._nread + self._nwrite > self.max_segments:
            raise err.ChainTooLongError(index, min(self.size, self.max_segments), gpa, self.packed)
        _st_seg(scratch, _SEG_SIZE * (self._nread + self._nwrite - 1), addr, length)
        return 0

    def _finish(self, scratch, head, ndesc, pos):
        chain = Chain.__new__(Chain)
        chain.head = head
        chain.n_desc = ndesc
        chain.n_readable = self._nread
        chain.n_writable = self._nwrite
        chain.readable_len = self._rlen
        chain.writable_len = self._wlen
        chain._segs = _copy(scratch, 0, _SEG_SIZE * (self._nread + self._nwrite))
        chain._pos = pos
        chain._generation = self.generation
        return chain

    def _stage(self, used, n, staged, inflight, mark):
        """Validate every pushed entry (rule 4), staging ``(id, written, complete)`` for the writes.

        Packed: each id must be in flight, once (``mark``, cleared whatever happens).
        """
        size = self.size
        if n > size:  # also keeps the staging inside the scratch (rule 3)
            raise UsageError(f"pushing {n} used entries to a queue of size {size}")
        expected = self.next_used
        marked = 0
        try:
            for i in range(n):
                item, written = _entry(used, i)
                if not isinstance(written, int) or written < 0 or written > 0xFFFF_FFFF:
                    raise UsageError(f"written length must be 0..2**32-1, got {written!r}")
                length = written
                complete = False
                if isinstance(item, int):
                    if item < 0 or item >= size:
                        raise UsageError(f"used id {item} is not below the queue size {size}")
                    buffer_id = item
                elif isinstance(item, Chain):
                    chain = item
                    if chain._generation != self.generation:
                        raise UsageError(f"chain {chain.head} was popped from another queue or before a reset/restore")
                    if length > chain.writable_len:
                        raise UsageError(f"written length {length} exceeds the chain's {chain.writable_len} bytes")
                    buffer_id = chain.head
                    complete = length == chain.writable_len
                    if self.in_order and not self.packed and chain._pos != _wrap16(self.next_used + i):
                        raise UsageError(f"VIRTIO_F_IN_ORDER: chain {buffer_id} pushed out of pop order")
                else:
                    raise UsageError(f"expected a Chain or an int id, got {type(item).__name__}")
                _st_stage(staged, _SEG_SIZE * i, buffer_id, length, complete)
                if self.packed:
                    if not inflight[buffer_id] or mark[buffer_id]:
                        raise UsageError(f"buffer id {buffer_id} is not in flight")
                    mark[buffer_id] = 1
                    marked += 1
                    if self.in_order and not isinstance(item, int):
                        if chain._pos != expected:
                            raise UsageError(f"VIRTIO_F_IN_ORDER: buffer {buffer_id} pushed out of pop order")
                        expected = (expected + inflight[buffer_id]) % size
        finally:
            for i in range(marked):
                mark[_ld32(staged, _SEG_SIZE * i)] = 0
        return 0

    def _run_end(self, staged, i, n):
        """§2.7.9/§2.8.8: with IN_ORDER, a run of completely used chains shares the entry of its last."""
        last = i
        if self.in_order:
            while last + 1 < n and _ld32(staged, _SEG_SIZE * last + 8):
                last += 1
        return last
