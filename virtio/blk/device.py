"""The virtio block device (VIRTIO 1.2 §5.2) over any ``BlockBackend``.

Rules:

1. Sans-IO (CONVENTIONS: sans-io): the device parses chains (``request.parse_request``), hands
   ``BlockRequest`` objects to the backend's ``submit`` and completes them when the VMM
   calls ``process_completions`` (after the backend's notify hook fired). It never waits,
   except in ``drain``, which a reset and ``quiesce()`` (before a snapshot) need.
2. A malformed request is completed at once with IOERR/UNSUPP; the backend never sees it
   (``request`` rule 1). A backend failure is IOERR. The status byte is the last thing
   written before the used entry, and nothing is written into a queue whose epoch changed
   (reset) since the chain was popped (``VirtioDevice`` rule 6).
3. Nothing the guest wrote is lost: a device or queue reset first drains the backend, so
   every write submitted before it reaches the backend and completes; a FLUSH is a
   barrier in the backend (``BlockExecutor`` rule 2). In writethrough mode (§5.2.6.2 cases
   1 and 2) a write completes only after a FLUSH that followed it completed.
4. All work is bounded by the queues: at most one in-flight record per popped chain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from devmodels import GuestMemory, GuestMemoryError, SnapshotError, UsageError
from devmodels.args import check_implements
from devmodels.snapshot import check_args, check_int, check_type, check_version
from devmodels.trace import tracepoint
from devmodels.backends import BlockBackend, BlockOp, BlockRequest, BlockStatus

from ..defs import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_ID_BLOCK,
)
from ..device import QueueFactory, VirtioDevice, VirtioDeviceState
from ..queue.chain import Chain
from .defs import (
    VIRTIO_BLK_CONFIG_WRITEBACK,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_SECTOR_SHIFT,
    VIRTIO_BLK_T_GET_ID,
)
from .layouts import virtio_blk_config
from .request import BlkLimits, BlkRequest, parse_request
from .state import VirtioBlkArgs, VirtioBlkState

__all__ = ["VirtioBlkDevice", "BlkStats", "DEFAULT_SEG_SIZE_MAX", "DEFAULT_DWZ_SECTORS", "DEFAULT_DWZ_SEG"]

DEFAULT_SEG_SIZE_MAX = 1 << 20
"""``size_max`` offered: the largest single data segment (1 MiB)."""
DEFAULT_DWZ_SECTORS = 1 << 22
"""``max_discard_sectors``/``max_write_zeroes_sectors`` offered (2 GiB per segment)."""
DEFAULT_DWZ_SEG = 16
"""``max_discard_seg``/``max_write_zeroes_seg`` offered."""

_tp_reject = tracepoint("virtio.blk.reject")
_tp_ioerr = tracepoint("virtio.blk.backend_error")
_tp_config = tracepoint("virtio.blk.config_ignored")

_STATE_VERSION = 2  # 2: args


@dataclass
class BlkStats:
    """Counters of one device (observability only)."""

    requests: int = 0
    reads: int = 0
    writes: int = 0
    flushes: int = 0
    discards: int = 0
    write_zeroes: int = 0
    rejected: int = 0
    errors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


class _Inflight:
    """One request between pop and used entry (the backend's ``tag``)."""

    __slots__ = ("queue", "chain", "epoch", "request", "pending", "status", "flushing", "transferred")

    def __init__(self, queue: int, chain: Chain, epoch: int, request: BlkRequest, pending: int) -> None:
        self.queue = queue
        self.chain = chain
        self.epoch = epoch
        self.request = request
        self.pending = pending
        self.status = VIRTIO_BLK_S_OK
        self.flushing = False
        self.transferred = 0


class VirtioBlkDevice(VirtioDevice):
    """A virtio-blk device backed by a ``BlockBackend``.

    Args:
        memory: guest RAM.
        backend: the disk.
        num_queues: request queues (VIRTIO_BLK_F_MQ is offered when more than one).
        queue_size: maximum size of each queue.
        serial: the GET_ID string (at most 20 bytes of ASCII).
        packed: offer VIRTIO_F_RING_PACKED.
        writeback: the cache mode after reset (``writeback`` field, §5.2.5).
        size_max: largest data segment offered (``size_max``).
        seg_max: most data segments per request offered (``seg_max``; default
            ``queue_size - 2``: a header and a status descriptor beside them). A driver may
            build no chain longer than the queue size it uses (§2.7.5.3.1, indirect tables
            included), so a transport whose driver side may pick a smaller queue than
            ``queue_size`` (a vhost-user front-end: QEMU's ``vhost-user-blk-pci`` uses 128)
            must offer ``seg_max`` of at most that size minus 2.
        dwz_sectors, dwz_segments: discard / write-zeroes limits offered.
        budget, queue_factory, name: as for ``VirtioDevice``.

    Raises:
        UsageError: a bad argument.
    """

    device_id = VIRTIO_ID_BLOCK
    config_layout = virtio_blk_config
    device_state_type = VirtioBlkState
    snapshot_kind = "virtio-blk"

    def __init__(
        self,
        memory: GuestMemory,
        backend: BlockBackend,
        *,
        num_queues: int = 1,
        queue_size: int = 256,
        serial: str | bytes = b"devmodels",
        packed: bool = True,
        writeback: bool = True,
        size_max: int = DEFAULT_SEG_SIZE_MAX,
        seg_max: int | None = None,
        dwz_sectors: int = DEFAULT_DWZ_SECTORS,
        dwz_segments: int = DEFAULT_DWZ_SEG,
        budget: int | None = None,
        queue_factory: QueueFactory | None = None,
        name: str = "virtio-blk",
    ) -> None:
        check_implements("VirtioBlkDevice", "backend", backend, BlockBackend)
        if not isinstance(num_queues, int) or not 1 <= num_queues <= 0xFFFF:
            raise UsageError(f"num_queues must be 1..65535, got {num_queues!r}")
        if not isinstance(queue_size, int) or not 3 <= queue_size <= 32768:
            raise UsageError(f"queue_size must be 3..32768, got {queue_size!r}")
        if seg_max is None:
            seg_max = queue_size - 2
        if not isinstance(seg_max, int) or not 1 <= seg_max <= queue_size - 2:
            raise UsageError(f"seg_max must be 1..queue_size-2 ({queue_size - 2}), got {seg_max!r}")
        serial_bytes = serial.encode("ascii") if isinstance(serial, str) else bytes(serial)
        if len(serial_bytes) > VIRTIO_BLK_ID_BYTES:
            raise UsageError(f"serial is {len(serial_bytes)} bytes, at most {VIRTIO_BLK_ID_BYTES}")
        for label, value in (("size_max", size_max), ("dwz_sectors", dwz_sectors), ("dwz_segments", dwz_segments)):
            if not isinstance(value, int) or not 1 <= value <= 0xFFFF_FFFF:
                raise UsageError(f"{label} must be 1..2**32-1, got {value!r}")
        self._args = VirtioBlkArgs(num_queues, queue_size, serial_bytes, bool(packed), bool(writeback), size_max, seg_max,
                                   dwz_sectors, dwz_segments)
        self.backend = backend
        self.serial = serial_bytes
        self.stats = BlkStats()
        block_size = int(backend.logical_block_size)
        self._capacity = int(backend.capacity) >> VIRTIO_BLK_SECTOR_SHIFT
        self._readonly = bool(backend.readonly)
        self._default_writeback = 1 if writeback else 0
        features = (
            1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_TOPOLOGY
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_CONFIG_WCE
            | 1 << VIRTIO_F_INDIRECT_DESC
            | 1 << VIRTIO_F_EVENT_IDX
            | 1 << VIRTIO_F_RING_RESET
        )
        if packed:
            features |= 1 << VIRTIO_F_RING_PACKED
        if self._readonly:
            features |= 1 << VIRTIO_BLK_F_RO
        else:
            features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES
            if backend.supports_discard:
                features |= 1 << VIRTIO_BLK_F_DISCARD
        if num_queues > 1:
            features |= 1 << VIRTIO_BLK_F_MQ
        self._dwz_sectors = dwz_sectors
        self._dwz_segments = dwz_segments
        config = virtio_blk_config.build(
            dict(
                capacity=self._capacity,
                size_max=size_max,
                seg_max=seg_max,
                geometry=dict(cylinders=0, heads=0, sectors=0),
                blk_size=block_size,
                topology=dict(physical_block_exp=0, alignment_offset=0, min_io_size=1, opt_io_size=0),
                writeback=self._default_writeback,
                unused0=0,
                num_queues=num_queues,
                max_discard_sectors=dwz_sectors,
                max_discard_seg=dwz_segments,
                discard_sector_alignment=max(1, block_size >> VIRTIO_BLK_SECTOR_SHIFT),
                max_write_zeroes_sectors=dwz_sectors,
                max_write_zeroes_seg=dwz_segments,
                write_zeroes_may_unmap=1 if backend.supports_discard else 0,
                unused1=bytes(3),
                max_secure_erase_sectors=0,
                max_secure_erase_seg=0,
                secure_erase_sector_alignment=0,
            )
        )
        super().__init__(
            memory,
            features=features,
            queue_sizes=[queue_size] * num_queues,
            config=config,
            budget=budget,
            queue_factory=queue_factory,
            name=name,
        )
        self._inflight: dict[int, _Inflight] = {}
        self._limits = self._make_limits(0)

    # -- properties --------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Disk size in 512-byte sectors."""
        return self._capacity

    @property
    def in_flight(self) -> int:
        """Requests handed to the backend and not completed yet."""
        return len(self._inflight)

    @property
    def writeback(self) -> bool:
        """The current cache mode (``writeback`` field)."""
        return bool(self.config[VIRTIO_BLK_CONFIG_WRITEBACK])

    def _writethrough(self) -> bool:
        # §5.2.6.2: a completed write must already be stable (cases 1 and 2).
        if self.has_feature(VIRTIO_BLK_F_CONFIG_WCE):
            return not self.config[VIRTIO_BLK_CONFIG_WRITEBACK]
        return not self.has_feature(VIRTIO_BLK_F_FLUSH)

    def _make_limits(self, negotiated: int) -> BlkLimits:
        return BlkLimits(
            capacity=self._capacity,
            readonly=self._readonly,
            discard=bool(negotiated >> VIRTIO_BLK_F_DISCARD & 1),
            write_zeroes=bool(negotiated >> VIRTIO_BLK_F_WRITE_ZEROES & 1),
            max_discard_sectors=self._dwz_sectors,
            max_discard_seg=self._dwz_segments,
            max_write_zeroes_sectors=self._dwz_sectors,
            max_write_zeroes_seg=self._dwz_segments,
        )

    # -- VirtioDevice hooks ------------------------------------------------------------------

    def validate_features(self, accepted: int) -> str | None:
        """Accept any offered subset; fix ``writeback`` for it (§5.2.5.2)."""
        # Side effect by necessity: the driver may read ``writeback`` right after
        # FEATURES_OK, before DRIVER_OK. §5.2.5.2: CONFIG_WCE without FLUSH starts in
        # writethrough mode.
        wce = accepted >> VIRTIO_BLK_F_CONFIG_WCE & 1
        flush = accepted >> VIRTIO_BLK_F_FLUSH & 1
        self.config[VIRTIO_BLK_CONFIG_WRITEBACK] = self._default_writeback if (flush or not wce) else 0
        self._limits = self._make_limits(accepted)
        return None

    def activate(self) -> None:
        """DRIVER_OK: take the negotiated limits."""
        self._limits = self._make_limits(self.negotiated)

    def on_config_write(self, offset: int, data: bytes) -> None:
        """Only ``writeback`` is writable, as 0 or 1, with VIRTIO_BLK_F_CONFIG_WCE (§5.2.5)."""
        if (
            offset == VIRTIO_BLK_CONFIG_WRITEBACK
            and len(data) == 1
            and data[0] in (0, 1)
            and self.has_feature(VIRTIO_BLK_F_CONFIG_WCE)
        ):
            self.config[VIRTIO_BLK_CONFIG_WRITEBACK] = data[0]
            return
        if _tp_config.on:
            _tp_config.emit(device=self.name, offset=offset, data=data.hex())

    def reset_device(self) -> None:
        """Drain the backend (rule 3), forget in-flight requests, restore ``writeback``."""
        self.drain()
        self._inflight.clear()
        self.config[VIRTIO_BLK_CONFIG_WRITEBACK] = self._default_writeback
        self._limits = self._make_limits(0)

    def on_queue_reset(self, index: int) -> None:
        """A queue reset drains too; its completions then have a stale epoch."""
        self.drain()

    # -- the request path ------------------------------------------------------------------

    def handle_queue(self, index: int, chains: list[Chain]) -> None:
        """Parse and submit the chains; complete the malformed ones at once (rules 1–2)."""
        memory = self.memory
        limits = self._limits
        epoch = self.queue_epoch(index)
        backend = self.backend
        done: list[tuple[Chain | int, int]] = []
        stats = self.stats
        for chain in chains:
            request = parse_request(chain, memory, limits)
            stats.requests += 1
            if request.status is not None:
                stats.rejected += 1
                if _tp_reject.on:
                    _tp_reject.emit(device=self.name, queue=index, head=chain.head, type=request.type,
                                    status=request.status, reason=request.reason)
                done.append((chain, self._finish(request, request.status, 0)))
                continue
            if request.type == VIRTIO_BLK_T_GET_ID:
                done.append((chain, self._finish(request, VIRTIO_BLK_S_OK, self._write_id(request))))
                continue
            ops = request.ops
            if not ops:  # a zero-length read or write, or discard of nothing
                done.append((chain, self._finish(request, VIRTIO_BLK_S_OK, 0)))
                continue
            record = _Inflight(index, chain, epoch, request, len(ops))
            self._inflight[id(record)] = record
            for op in ops:
                backend.submit(
                    BlockRequest(op.op, op.offset, op.length, op.segments, tag=record, unmap=op.unmap), memory
                )
        if done:
            self.push_used(index, done, epoch=epoch)
        self.process_completions()

    def _write_id(self, request: BlkRequest) -> int:
        # §5.2.6: a NUL-padded string of up to 20 bytes, no terminator at 20.
        ident = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")
        written = 0
        for gpa, length in request.data:
            part = ident[written : written + length]
            if not part:
                break
            self.memory.write(gpa, part)  # checked by parse_request
            written += len(part)
        return written

    def _finish(self, request: BlkRequest, status: int, written: int) -> int:
        """Write the status byte; return the used length (data written plus status)."""
        if request.status_gpa is None:
            return 0
        try:
            self.memory.store_u8(request.status_gpa, status)
        except GuestMemoryError as exc:
            if _tp_reject.on:
                _tp_reject.emit(device=self.name, type=request.type, status=status, reason=f"status byte: {exc}")
            return 0
        return written + 1

    def process_completions(self) -> int:
        """Collect the backend's completions and return finished requests to the driver.

        Call it when the backend's notify hook fired (and any time: it never blocks).
        Returns how many requests were completed.
        """
        return self._collect()[1]

    def _collect(self) -> tuple[int, int]:
        """``(completions collected, requests finished)``."""
        completions = self.backend.completions()
        if not completions:
            return 0, 0
        finished: dict[int, list[tuple[Chain | int, int]]] = {}
        epochs: dict[int, int] = {}
        count = 0
        for completion in completions:
            record = completion.tag
            if not isinstance(record, _Inflight) or id(record) not in self._inflight:
                continue  # not ours, or dropped by a reset
            if completion.status is not BlockStatus.OK:
                record.status = VIRTIO_BLK_S_IOERR
                if _tp_ioerr.on:
                    _tp_ioerr.emit(device=self.name, type=record.request.type, error=completion.error,
                                   status=completion.status.value)
            else:
                record.transferred += completion.transferred
            record.pending -= 1
            if record.pending:
                continue
            if (
                record.status == VIRTIO_BLK_S_OK
                and not record.flushing
                and record.request.ops[0].op is not BlockOp.READ
                and record.request.ops[0].op is not BlockOp.FLUSH
                and self._writethrough()
            ):
                # Rule 3: writethrough mode makes the write stable before completing it.
                record.flushing = True
                record.pending = 1
                self.backend.submit(BlockRequest(BlockOp.FLUSH, 0, 0, tag=record), self.memory)
                continue
            del self._inflight[id(record)]
            count += 1
            self._account(record)
            request = record.request
            written = request.written if record.status == VIRTIO_BLK_S_OK else 0
            if record.epoch != self.queue_epoch(record.queue):
                continue  # the queue was reset: its buffers are the driver's again
            finished.setdefault(record.queue, []).append((record.chain, self._finish(request, record.status, written)))
            epochs[record.queue] = record.epoch
        for queue, used in finished.items():
            self.push_used(queue, used, epoch=epochs[queue])
        return len(completions), count

    def _account(self, record: _Inflight) -> None:
        stats = self.stats
        if record.status != VIRTIO_BLK_S_OK:
            stats.errors += 1
            return
        op = record.request.ops[0].op
        if op is BlockOp.READ:
            stats.reads += 1
            stats.bytes_read += record.request.written
        elif op is BlockOp.WRITE:
            stats.writes += 1
            stats.bytes_written += record.request.ops[0].length
        elif op is BlockOp.FLUSH:
            stats.flushes += 1
        elif op is BlockOp.DISCARD:
            stats.discards += 1
        else:
            stats.write_zeroes += 1

    # -- serving (devmodels.runtime.ServedDevice) --------------------------------------------

    def bind_waker(self, wake: Callable[[], None] | None) -> None:
        """The backend announces completions through ``wake`` (its ``set_notify`` hook)."""
        self.backend.set_notify(wake)

    def run_posted(self) -> bool:
        """Collect completions, then the base class's posted work and recheck."""
        finished = self.process_completions()
        return super().run_posted() or bool(finished)

    def unfinished_work(self) -> str | None:
        """Requests submitted to the backend and not yet completed (``VirtioDevice`` rule 11)."""
        return f"{len(self._inflight)} requests in flight" if self._inflight else None

    def finish_in_flight(self) -> None:
        """``drain``: what ``quiesce()`` waits for."""
        self.drain()

    def drain(self) -> None:
        """Wait for every submitted request and complete it (rule 1's one wait)."""
        while self._inflight:
            self.backend.drain()
            collected, _ = self._collect()
            if not collected:
                # Nothing is left in the backend, so the records still here can never
                # complete (their backend was swapped or lost them): forget them rather
                # than wait forever.
                self._inflight.clear()

    # -- snapshot ----------------------------------------------------------------------------

    def constructor_args(self) -> VirtioBlkArgs:
        """The constructor arguments a snapshot carries (``devmodels._state`` rule 3)."""
        return self._args

    @classmethod
    def from_args(cls, args: VirtioBlkArgs, memory: GuestMemory, backend: BlockBackend, *, budget: int | None = None,
                  queue_factory: QueueFactory | None = None, name: str = "virtio-blk") -> VirtioBlkDevice:
        """A device built from a snapshot's ``args`` and the restorer's backend and tuning.

        Raises:
            SnapshotError: ``args`` are not ``VirtioBlkArgs`` or the constructor refuses them.
        """
        check_type("device.args", args, VirtioBlkArgs)
        try:
            return cls(memory, backend, num_queues=args.num_queues, queue_size=args.queue_size, serial=args.serial,
                       packed=args.packed, writeback=args.writeback, size_max=args.size_max, seg_max=args.seg_max,
                       dwz_sectors=args.dwz_sectors, dwz_segments=args.dwz_segments, budget=budget,
                       queue_factory=queue_factory, name=name)
        except SnapshotError:
            raise
        except UsageError as exc:
            raise SnapshotError("device.args", str(exc)) from None

    @classmethod
    def from_state(cls, state: VirtioDeviceState[VirtioBlkState], memory: GuestMemory, backend: BlockBackend,
                   **tuning: Any) -> VirtioBlkDevice:
        """A device built from ``state``'s args around ``backend``, with ``state`` restored
        (``devmodels._state`` rule 5); ``tuning`` as for ``from_args``.

        Raises:
            SnapshotError: the state is refused (a backend of another size included).
        """
        check_type("device", getattr(state, "device", None), VirtioBlkState)
        assert state.device is not None
        device = cls.from_args(state.device.args, memory, backend, **tuning)
        device.restore(state)
        return device

    def device_state(self) -> VirtioBlkState:
        """The block section of the snapshot (``writeback``); ``state()`` has checked that
        nothing is in flight."""
        return VirtioBlkState(version=_STATE_VERSION, args=self._args,
                              writeback=self.config[VIRTIO_BLK_CONFIG_WRITEBACK], capacity=self._capacity)

    def check_device_state(self, state: Any) -> None:
        """Validate the block section (args first)."""
        check_type("device", state, VirtioBlkState)
        check_version("device.version", state.version, _STATE_VERSION)
        check_args("device.args", state.args, self._args)
        check_int("device.writeback", state.writeback, 0, 1)
        check_int("device.capacity", state.capacity, self._capacity, self._capacity)

    def restore_device_state(self, state: Any) -> None:
        """Apply the block section (config bytes were restored by the base class)."""
        self._inflight.clear()
        self.config[VIRTIO_BLK_CONFIG_WRITEBACK] = state.writeback
        self._limits = self._make_limits(self.negotiated)

    def stats_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return dataclasses.asdict(self.stats)

    def describe(self) -> Sequence[str]:
        """Readable lines about the device (CLI status)."""
        return (
            f"{self.name}: {self._capacity} sectors, {'ro' if self._readonly else 'rw'}, "
            f"{self.num_queues} queue(s), in flight {len(self._inflight)}",
        )
