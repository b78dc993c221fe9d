"""Stateful model test of virtio-blk (VIRTIO 1.2 §5.2) as a guest drives it over time.

A ``RuleBasedStateMachine`` places reads, writes, write-zeroes and flushes (framed at
random, on two queues), lets the backend hold requests and release them later, reaps in
any order, switches the write cache, resets single queues and the whole device with I/O
still held, and round-trips snapshots through plain data. The model: the disk is a byte
array updated in submission order (the held backend executes in that order), every
request comes back exactly once with status OK and, for a read, the bytes the model held
when it was placed; a request outstanding at a reset never comes back into the new rings,
yet its write still lands; and a working device stays out of DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from devmodels import GuestMemory, MemoryRegion, from_dict, to_dict
from devmodels.backends import BlockCompletion, BlockRequest, MemoryDiskBackend
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import (
    VIRTIO_BLK_CONFIG_WRITEBACK,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from virtio.blk.testing import BlkDriver
from virtio.defs import DEVICE_NEEDS_RESET, DRIVER_OK, VIRTIO_F_RING_PACKED
from virtio.device import RecordingTransport
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS

RAM = 4 << 20
DISK = 128 << 10
SECTORS = DISK // 512
QUEUES = 2
OUTSTANDING = 6  # per queue; 128 descriptors hold six requests of up to 15 each
# The disk starts with a pattern, so that zeroing and overwriting always show.
PATTERN = bytes((i * 37 + (i >> 9)) & 0xFF for i in range(DISK))


class HeldDisk:
    """A memory disk whose requests can be held back and released in order (``drain``
    releases, as a real backend finishes what it was given)."""

    def __init__(self) -> None:
        self.inner = MemoryDiskBackend(DISK, data=PATTERN)
        self.hold = False
        self.held: list[tuple[BlockRequest, GuestMemory]] = []
        self.capacity = DISK
        self.readonly = False
        self.logical_block_size = 512
        self.supports_discard = self.inner.supports_discard

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        if self.hold:
            self.held.append((request, memory))
        else:
            self.inner.submit(request, memory)

    def release(self) -> None:
        held, self.held = self.held, []
        for request, memory in held:
            self.inner.submit(request, memory)

    def completions(self) -> list[BlockCompletion]:
        return self.inner.completions()

    def drain(self) -> None:
        self.release()
        self.inner.drain()

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        self.inner.set_notify(notify)


class VirtioBlkModel(RuleBasedStateMachine):
    """A virtio-blk device on a held memory disk and a guest driver, against a byte array."""

    @initialize(packed=st.booleans(), ring=st.sampled_from(sorted(IMPLEMENTATIONS)))
    def plug(self, packed: bool, ring: str) -> None:
        self.memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
        self.disk = HeldDisk()
        implementation = IMPLEMENTATIONS[ring]
        self.device = VirtioBlkDevice(
            self.memory, self.disk, num_queues=QUEUES, queue_size=128,  # room for 6 requests of 15 descriptors
            queue_factory=lambda size, p: Virtqueue(size, packed=p, ring=implementation),
        )
        self.device.attach(RecordingTransport())
        self.accept = self.device.features.offered & ~(0 if packed else 1 << VIRTIO_F_RING_PACKED)
        self.model = bytearray(PATTERN)
        self._bring_up()

    def _bring_up(self) -> None:
        self.driver = BlkDriver(self.device, accept=self.accept, data_size=256 << 10)
        assert self.device.has_feature(VIRTIO_BLK_F_MQ)
        # token -> (queue, expected read data or None)
        self.expected: dict[Any, tuple[int, bytes | None]] = {}

    def teardown(self) -> None:
        if hasattr(self, "memory"):
            self.disk.inner.close()
            self.memory.close()

    def _room(self, queue: int) -> None:
        """Make room for one more request on ``queue``: release the backend and reap."""
        if sum(1 for q, _ in self.expected.values() if q == queue) >= OUTSTANDING:
            self.disk.release()
            self.reap(queue)

    def _place(self, queue: int, token: Any, expect: bytes | None) -> None:
        self.expected[token] = (queue, expect)
        self.driver.kick(queue)

    # -- rules -------------------------------------------------------------------------------

    @rule(queue=st.integers(0, QUEUES - 1), sector=st.integers(0, SECTORS - 8), count=st.integers(1, 8),
          fill=st.integers(0, 255), split=st.sampled_from([0, 512, 700]), indirect=st.booleans())
    def write(self, queue: int, sector: int, count: int, fill: int, split: int, indirect: bool) -> None:
        self._room(queue)
        data = bytes((fill + 7 * i) & 0xFF for i in range(512 * count))
        token = self.driver.request(VIRTIO_BLK_T_OUT, sector, data=data, data_split=split, queue=queue, indirect=indirect)
        self.model[512 * sector : 512 * (sector + count)] = data
        self._place(queue, token, None)

    @rule(queue=st.integers(0, QUEUES - 1), sector=st.integers(0, SECTORS - 8), count=st.integers(1, 8),
          split=st.sampled_from([0, 512, 333]), indirect=st.booleans())
    def read(self, queue: int, sector: int, count: int, split: int, indirect: bool) -> None:
        self._room(queue)
        token = self.driver.request(VIRTIO_BLK_T_IN, sector, read_len=512 * count, data_split=split, queue=queue,
                                    indirect=indirect)
        self._place(queue, token, bytes(self.model[512 * sector : 512 * (sector + count)]))

    @rule(queue=st.integers(0, QUEUES - 1), sector=st.integers(0, SECTORS - 8), count=st.integers(1, 8))
    def write_zeroes(self, queue: int, sector: int, count: int) -> None:
        self._room(queue)
        segment = struct.pack("<QII", sector, count, 0)
        token = self.driver.request(VIRTIO_BLK_T_WRITE_ZEROES, data=segment, queue=queue)
        self.model[512 * sector : 512 * (sector + count)] = bytes(512 * count)
        self._place(queue, token, None)

    @rule(queue=st.integers(0, QUEUES - 1))
    def flush(self, queue: int) -> None:
        self._room(queue)
        self._place(queue, self.driver.request(VIRTIO_BLK_T_FLUSH, queue=queue), None)

    @rule(hold=st.booleans())
    def backend_holds(self, hold: bool) -> None:
        self.disk.hold = hold
        if not hold:
            self.disk.release()
            self.device.process_completions()

    @rule(queue=st.integers(0, QUEUES - 1))
    def reap(self, queue: int) -> None:
        self.device.process_completions()
        for result in self.driver.reap(queue):
            assert result.token in self.expected, "a request came back twice, or one nobody placed"
            placed_on, expect = self.expected.pop(result.token)
            assert placed_on == queue
            assert result.status == VIRTIO_BLK_S_OK
            if expect is not None:
                assert result.data == expect

    @rule(writeback=st.integers(0, 1))
    def write_cache(self, writeback: int) -> None:
        self.device.write_config(VIRTIO_BLK_CONFIG_WRITEBACK, 1, writeback)

    @rule()
    def reset_device(self) -> None:
        # Held writes still land (reset drains the backend), but nothing comes back into
        # the new rings: the driver forgets what it had outstanding.
        self.device.write_status(0)
        self._bring_up()

    @rule()
    def snapshot(self) -> None:
        self.device.quiesce()  # the snapshot contract: quiesce(), then state()
        before = self.device.state()
        rebuilt = from_dict(self.device.state_type, to_dict(before))
        self.device.restore(rebuilt)
        assert self.device.state() == before

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def device_is_live(self) -> None:
        if hasattr(self, "device"):
            assert self.device.status & DRIVER_OK and not self.device.status & DEVICE_NEEDS_RESET, self.device.error

    @invariant()
    def disk_matches_once_released(self) -> None:
        if hasattr(self, "disk") and not self.disk.held:
            assert self.disk.inner.read_at(0, DISK) == bytes(self.model)


VirtioBlkModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestVirtioBlk = VirtioBlkModel.TestCase
