"""``FaultyBlockBackend``: a ``BlockBackend`` that applies the ``disk.*`` faults of an engine.

The device above it is unchanged: it reports each fault the way its specification
reports the same failure of a real disk (AHCI: ERR with UNC and the failing LBA, the NCQ
error log; virtio-blk: VIRTIO_BLK_S_IOERR), because what it sees is the completion a
failing disk would give it.

Rules:

1. A request no fault matches goes to the inner backend unchanged (same tag, no copy). A
   matching request is decided by the engine (``FaultEngine.decide``); the first fault
   that acts on it, in the order the faults were added, decides what happens to it.
   Matching: reads match ``op`` read/any, writes and write-zeroes write/any, discards only
   ``any``; a FLUSH matches ``disk.slow``/``disk.stuck`` of a whole disk (``lba`` 0,
   ``sectors`` null) with ``op`` write/any: a hung drive hangs its flushes too.
2. ``disk.media-error``: the part of the request before the first bad block runs on the
   inner backend; the request then completes ``IO_ERROR`` with ``transferred`` = the bytes
   before the bad block, so the device can report exactly that LBA (a disk transfers up
   to the unreadable sector and reports it).
3. ``disk.slow``: the request runs; its completion is handed out ``delay_ms`` after the
   inner backend returned it (``FaultEngine.call_at``).
4. ``disk.stuck``: the request is held. ``abandon()`` (the device reset its drive) and
   ``drain()`` complete every held request ``IO_ERROR``; removing the fault submits them.
5. ``disk.torn-write``: see ``torn``; writes of the first ``keep_sectors`` go to the image
   before the acknowledgement, the tail stays in the volatile cache.
6. Completions the wrapper makes itself are announced through the device's notify hook,
   as a backend's worker would. Nothing here raises for a guest-caused condition.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._errors import GuestMemoryError
from .._memory import GuestMemory
from .._trace import tracepoint
from ..backends import BlockBackend, BlockCompletion, BlockOp, BlockRequest, BlockStatus
from .engine import ActiveFault, FaultEngine
from .plan import MediaError, SlowIo, StuckIo, TornWrite, _DiskFault
from .torn import TornCache

__all__ = ["FaultyBlockBackend", "truncate_segments"]

_log = logging.getLogger(__name__)
_tp_disk = tracepoint("faults.disk")
_NS_PER_MS = 1_000_000


def truncate_segments(segments: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The first ``length`` bytes of a ``(gpa, length)`` list."""
    out: list[tuple[int, int]] = []
    left = length
    for gpa, count in segments:
        if left <= 0:
            break
        take = min(count, left)
        out.append((gpa, take))
        left -= take
    return out


def _tail_segments(segments: Sequence[tuple[int, int]], skip: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for gpa, count in segments:
        if skip >= count:
            skip -= count
            continue
        out.append((gpa + skip, count - skip))
        skip = 0
    return out


@dataclass(eq=False)
class _Tag:
    """What the wrapper must do when a request it changed comes back from the inner backend."""

    original: object
    action: str  # "media", "slow", "plain", "persist"
    prefix: int = 0  # media: bytes before the bad block
    bad_offset: int = 0  # media: the bad block's byte offset
    delay_ns: int = 0  # slow
    overlay: tuple[BlockRequest, GuestMemory] | None = None  # a read that sees held tails
    span: tuple[int, int] = (0, 0)  # persist: the range written out


def _well_formed(request: object) -> bool:
    """A request whose numbers faults can be judged on; the inner backend judges the rest
    (``backends._block`` rule 2)."""
    if not isinstance(request, BlockRequest) or not isinstance(request.op, BlockOp):
        return False
    counts = (request.offset, request.length)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
        return False
    try:
        return all(isinstance(g, int) and isinstance(n, int) and g >= 0 and n >= 0 for g, n in request.segments)
    except (TypeError, ValueError):
        return False


def _matches(fault: _DiskFault, request: BlockRequest) -> bool:
    op = request.op
    if op is BlockOp.FLUSH:
        whole = fault.lba == 0 and fault.sectors is None
        return whole and fault.op in ("write", "any") and isinstance(fault, (SlowIo, StuckIo))
    if op is BlockOp.READ:
        wanted = fault.op in ("read", "any")
    elif op is BlockOp.DISCARD:
        wanted = fault.op == "any" and not isinstance(fault, MediaError)
    else:  # WRITE, WRITE_ZEROES
        wanted = fault.op in ("write", "any")
    return wanted and fault.covers(request.offset, request.length)


class FaultyBlockBackend:
    """``inner`` with the ``disk.*`` faults of ``engine`` for part ``name`` (rules 1–6).

    Args:
        inner: the real backend (its capacity, block size and flags are this one's).
        engine: the device's fault engine; the wrapper registers as scope ``disk``/``name``.
        name: the part name plans target (``disk0``, ``disk1``...).

    Attributes:
        stuck: requests held by ``disk.stuck`` now.
    """

    def __init__(self, inner: BlockBackend, engine: FaultEngine, name: str = "disk0") -> None:
        self.inner = inner
        self.engine = engine
        self.name = name
        self._notify: Callable[[], None] | None = None
        self._ready: list[BlockCompletion] = []
        self._stuck: list[tuple[str, BlockRequest, GuestMemory]] = []
        self._deferred: list[tuple[BlockRequest, GuestMemory]] = []
        self._delayed: dict[int, BlockCompletion] = {}  # slow completions waiting for their time
        self._delay_keys = itertools.count()
        self._torn = TornCache(inner.logical_block_size)
        engine.add_scope("disk", name)
        engine.on_change(self._faults_changed)

    # -- BlockBackend properties -----------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The inner backend's."""
        return self.inner.capacity

    @property
    def readonly(self) -> bool:
        """The inner backend's."""
        return self.inner.readonly

    @property
    def logical_block_size(self) -> int:
        """The inner backend's."""
        return self.inner.logical_block_size

    @property
    def supports_discard(self) -> bool:
        """The inner backend's."""
        return self.inner.supports_discard

    @property
    def stuck(self) -> int:
        """Requests held by ``disk.stuck`` now (rule 4)."""
        return len(self._stuck)

    @property
    def torn(self) -> TornCache:
        """The volatile cache of ``disk.torn-write`` (rule 5)."""
        return self._torn

    # -- requests --------------------------------------------------------------------------

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        """Apply the first fault that acts on ``request``, else pass it on (rule 1)."""
        torn = self._torn
        if not self.engine and not torn.held and not torn.busy:
            self.inner.submit(request, memory)  # the fast path: nothing to apply
            return
        if not _well_formed(request):
            self.inner.submit(request, memory)  # the inner backend judges it (``backends._block`` rule 2)
            return
        if torn.busy and torn.is_busy(request.offset, request.length) and request.op is not BlockOp.FLUSH:
            self._deferred.append((request, memory))  # torn rule 3
            return
        faults = self.engine.matching("disk", self.name)
        if faults:
            now = self.engine.clock()
            for active in faults:
                fault = active.fault
                assert isinstance(fault, _DiskFault)  # the "disk" family holds only these
                if _matches(fault, request) and self.engine.decide(active, now):
                    if _tp_disk.on:
                        _tp_disk.emit(disk=self.name, fault=active.id, op=request.op.value, offset=request.offset,
                                      length=request.length)
                    self._apply(active, request, memory)
                    return
        self._pass(request, memory)

    def _pass(self, request: BlockRequest, memory: GuestMemory, tag: _Tag | None = None) -> None:
        """Submit to the inner backend, with the volatile cache taken into account."""
        torn = self._torn
        if torn.held:
            if request.op is BlockOp.READ and torn.overlaps(request.offset, request.length):
                tag = tag or _Tag(request.tag, "plain")
                tag.overlay = (request, memory)
            elif (request.op in (BlockOp.WRITE, BlockOp.WRITE_ZEROES, BlockOp.DISCARD)
                  and request.offset + request.length <= self.capacity):  # one the inner backend refuses changes nothing
                torn.drop(request.offset, request.length)
        if tag is not None:
            request = BlockRequest(request.op, request.offset, request.length, request.segments, tag, request.unmap)
        self.inner.submit(request, memory)

    def _apply(self, active: ActiveFault, request: BlockRequest, memory: GuestMemory) -> None:
        fault = active.fault
        if isinstance(fault, MediaError):
            self._media_error(request, memory, fault)
        elif isinstance(fault, SlowIo):
            self._pass(request, memory, _Tag(request.tag, "slow", delay_ns=fault.delay_ms * _NS_PER_MS))
        elif isinstance(fault, StuckIo):
            self._stuck.append((active.id, request, memory))
        elif isinstance(fault, TornWrite):
            self._torn_write(request, memory, fault, active)

    def _media_error(self, request: BlockRequest, memory: GuestMemory, fault: MediaError) -> None:
        """Rule 2: transfer up to the first bad block, then fail there."""
        block = self.logical_block_size
        bad = fault.first_bad_byte(request.offset)
        bad -= (bad - request.offset) % block
        prefix = max(0, min(bad - request.offset, request.length))
        reason = f"media error at byte {bad:#x} (LBA {bad // 512})"
        if prefix == 0:
            self._complete(BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, reason))
            return
        segments = truncate_segments(request.segments, prefix) if request.segments else ()
        part = BlockRequest(request.op, request.offset, prefix, segments, request.tag, request.unmap)
        self._pass(part, memory, _Tag(request.tag, "media", prefix=prefix, bad_offset=bad))

    def _torn_write(self, request: BlockRequest, memory: GuestMemory, fault: TornWrite, active: ActiveFault) -> None:
        """Rule 5: the head goes to the image now, the tail into the volatile cache."""
        if request.op is not BlockOp.WRITE:
            self._pass(request, memory)
            return
        block = self.logical_block_size
        keep = min(request.length, -(-fault.keep_sectors * 512 // block) * block)
        tail = request.length - keep
        try:
            data = b"".join(memory.read(gpa, count) for gpa, count in _tail_segments(request.segments, keep))
        except GuestMemoryError as exc:
            self._complete(BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, f"guest memory: {exc}"))
            return
        self._torn.drop(request.offset, request.length)  # this write supersedes older tails
        group = self._torn.hold(request.offset + keep, data) if tail else None
        if group is None:
            self._pass(request, memory)  # nothing to tear, or no room to hold it: whole
            return
        if fault.persist_ms is not None:
            self.engine.call_at(self.engine.clock() + fault.persist_ms * _NS_PER_MS, lambda: self._persist(group))
        if keep == 0:
            self._complete(BlockCompletion(request.tag, BlockStatus.OK, request.length))
            return
        head = BlockRequest(BlockOp.WRITE, request.offset, keep, truncate_segments(request.segments, keep),
                            request.tag)
        self.inner.submit(BlockRequest(head.op, head.offset, head.length, head.segments,
                                       _Tag(request.tag, "plain", prefix=request.length)), memory)

    def _persist(self, group: int | None) -> None:
        """Write held tails out (torn rule 3): ``group``, or all with None."""
        for offset, data in self._torn.take(group):
            tag = _Tag(None, "persist", span=(offset, len(data)))
            self.inner.submit(BlockRequest(BlockOp.WRITE, offset, len(data), [(0, len(data))], tag),
                              TornCache.memory_for(data))

    # -- completions -----------------------------------------------------------------------

    def _complete(self, completion: BlockCompletion) -> None:
        """A completion the wrapper made (rule 6)."""
        self._ready.append(completion)
        if self._notify is not None:
            self._notify()

    def completions(self) -> list[BlockCompletion]:
        """The inner backend's completions, changed as the faults say, and the wrapper's own."""
        out, self._ready = self._ready, []
        for completion in self.inner.completions():
            tag = completion.tag
            if not isinstance(tag, _Tag):
                out.append(completion)
                continue
            result = self._finish(tag, completion)
            if result is not None:
                out.append(result)
        return out

    def _finish(self, tag: _Tag, completion: BlockCompletion) -> BlockCompletion | None:
        ok = completion.status is BlockStatus.OK
        if tag.action == "persist":
            self._torn.written(*tag.span)
            if not ok:
                _log.warning("%s: writing out a torn-write tail failed: %s", self.name, completion.error)
            self._resubmit_deferred()
            return None
        result = BlockCompletion(tag.original, completion.status, completion.transferred, completion.error)
        if ok and tag.overlay is not None:
            request, memory = tag.overlay
            try:
                self._torn.overlay(memory, request.offset, request.length, request.segments)
            except GuestMemoryError as exc:
                result = BlockCompletion(tag.original, BlockStatus.IO_ERROR, 0, f"guest memory: {exc}")
        if tag.action == "media" and ok:
            return BlockCompletion(tag.original, BlockStatus.IO_ERROR, tag.prefix,
                                   f"media error at byte {tag.bad_offset:#x} (LBA {tag.bad_offset // 512})")
        if tag.action == "plain" and tag.prefix and ok:
            return BlockCompletion(tag.original, BlockStatus.OK, tag.prefix)  # a torn write: all of it "written"
        if tag.action == "slow":
            key = next(self._delay_keys)
            self._delayed[key] = result
            self.engine.call_at(self.engine.clock() + tag.delay_ns, lambda: self._release(key))
            return None
        return result

    def _release(self, key: int) -> None:
        result = self._delayed.pop(key, None)
        if result is not None:  # not released early by a drain
            self._complete(result)

    def _resubmit_deferred(self) -> None:
        waiting, self._deferred = self._deferred, []
        for request, memory in waiting:
            self.submit(request, memory)

    # -- held requests (rule 4) ------------------------------------------------------------

    def abandon(self) -> int:
        """The device reset its drive: every stuck request completes ``IO_ERROR``; returns
        how many."""
        stuck, self._stuck = self._stuck, []
        for _, request, _ in stuck:
            self._ready.append(BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, "abandoned: the drive was reset"))
        if stuck and self._notify is not None:
            self._notify()
        return len(stuck)

    def _faults_changed(self) -> None:
        """Requests stuck by a fault that was removed run now (rule 4)."""
        if not self._stuck:
            return
        keep = []
        for entry in self._stuck:
            if self.engine.get(entry[0]) is None:
                self._pass(entry[1], entry[2])
            else:
                keep.append(entry)
        self._stuck = keep

    def drain(self) -> None:
        """Abandon stuck requests, release delayed completions, wait for the inner backend."""
        self.abandon()
        self.inner.drain()
        while self._deferred:
            self._resubmit_deferred()
            self.inner.drain()
        for completion in self.inner.completions():
            tag = completion.tag
            if isinstance(tag, _Tag) and tag.action == "slow":
                tag.action = "plain"  # a reset does not wait out a delay
            result = self._finish(tag, completion) if isinstance(tag, _Tag) else completion
            if result is not None:
                self._ready.append(result)
        delayed, self._delayed = self._delayed, {}
        self._ready.extend(delayed.values())

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """The device's wake-up hook, for the inner backend and for the wrapper's own completions."""
        self._notify = notify
        self.inner.set_notify(notify)

    def close(self) -> None:
        """A clean shutdown: held tails are written out, stuck requests abandoned, then the
        inner backend is closed."""
        self._persist(None)
        self.drain()
        self.inner.close()

    def crash(self) -> None:
        """What the process dying does to the volatile cache: held tails are lost (the
        torn writes stay torn). For tests; the inner backend stays open."""
        self._torn.take()
        self._torn.busy.clear()
