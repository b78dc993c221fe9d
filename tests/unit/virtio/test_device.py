"""The transport-neutral virtio device core (``virtio.device.VirtioDevice``).

The queues here are a scripted test double so that the core's rules (status, features,
queue programming, configuration, notifications, broken state, reset, snapshots) are
tested apart from the ring implementation; the transports' end-to-end tests use the real
queues.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import construct as cs
import pytest

from devmodels import DenialOfService, GuestError, GuestMemory, MemoryRegion, SnapshotError, UsageError
from devmodels._trace import RecordingSink
from virtio.defs import (
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FAILED,
    FEATURES_OK,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
)
from virtio.device import QueueArea, RecordingTransport, VirtioDevice
from virtio.features import bit, feature_names

A, AD, ADF = ACKNOWLEDGE, ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | FEATURES_OK
ADFO = ADF | DRIVER_OK
V1 = bit(VIRTIO_F_VERSION_1)


@dataclasses.dataclass
class FakeChain:
    head: int
    readable: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    writable: list[tuple[int, int]] = dataclasses.field(default_factory=list)


class ScriptedQueue:
    """A virtqueue double: ``available`` chains are popped in order, pushes are recorded."""

    def __init__(self, max_size: int, packed: bool) -> None:
        self.max_size = max_size
        self.packed = packed
        self.name = ""
        self.available: list[FakeChain] = []
        self.pushed: list[tuple[int, int]] = []
        self.notify = True
        self.pop_error: GuestError | None = None
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = self.driver_addr = self.device_addr = 0
        self.ready = False
        self.event_idx = False
        self.in_order = False
        self.indirect = True
        self.broken = False
        self.broken_reason: Any = None
        self.available = []
        self.pushed = []

    def set_features(self, features: int) -> None:
        self.event_idx = bool(features >> VIRTIO_F_EVENT_IDX & 1)
        self.in_order = bool(features >> VIRTIO_F_IN_ORDER & 1)
        self.indirect = bool(features >> VIRTIO_F_INDIRECT_DESC & 1)

    def pop_batch(self, memory: GuestMemory, budget: int) -> list[FakeChain]:
        if self.pop_error is not None:
            self.broken, self.broken_reason = True, self.pop_error
            return []
        taken, self.available = self.available[:budget], self.available[budget:]
        return taken

    def push_batch(self, memory: GuestMemory, used: Sequence[tuple[Any, int]]) -> bool:
        for chain, length in used:
            self.pushed.append((chain if isinstance(chain, int) else chain.head, length))
        return self.notify

    def state(self) -> tuple[int, int, int, int, bool]:
        return (self.size, self.desc_addr, self.driver_addr, self.device_addr, self.ready)

    def restore(self, state: tuple[int, int, int, int, bool]) -> None:
        if state[0] > self.max_size:
            raise SnapshotError("size", "too big")
        self.size, self.desc_addr, self.driver_addr, self.device_addr, self.ready = state


toy_config = cs.Struct("capacity" / cs.Int64ul, "mode" / cs.Int8ul, "padding" / cs.Padding(3))


class ToyDevice(VirtioDevice):
    """Two queues; handle_queue returns every chain with length = head."""

    device_id = 2
    config_layout = toy_config

    def __init__(self, memory: GuestMemory, **kwargs: Any) -> None:
        kwargs.setdefault("features", bit(3) | bit(VIRTIO_F_RING_RESET) | bit(VIRTIO_F_EVENT_IDX))
        super().__init__(
            memory,
            queue_sizes=[8, 16],
            config=toy_config.build(dict(capacity=1234, mode=0)),
            queue_factory=ScriptedQueue,
            **kwargs,
        )
        self.handled: list[tuple[int, list[int]]] = []
        self.refuse: str | None = None
        self.activations = 0
        self.resets = 0
        self.queue_resets: list[int] = []
        self.raise_in_handler: GuestError | None = None

    def handle_queue(self, index: int, chains: list[Any]) -> None:
        if self.raise_in_handler is not None:
            raise self.raise_in_handler
        self.handled.append((index, [c.head for c in chains]))
        self.push_used(index, [(c, c.head) for c in chains])

    def validate_features(self, accepted: int) -> str | None:
        return self.refuse

    def activate(self) -> None:
        self.activations += 1

    def reset_device(self) -> None:
        self.resets += 1

    def on_queue_reset(self, index: int) -> None:
        self.queue_resets.append(index)

    def on_config_write(self, offset: int, data: bytes) -> None:
        if offset == 8 and len(data) == 1:
            self.config[8] = data[0]
        else:
            super().on_config_write(offset, data)


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 16)])
    yield mem
    mem.close()


@pytest.fixture
def dev(memory: GuestMemory) -> ToyDevice:
    device = ToyDevice(memory)
    device.attach(RecordingTransport())
    return device


def transport(device: VirtioDevice) -> RecordingTransport:
    assert isinstance(device.transport, RecordingTransport)
    return device.transport


def negotiate(device: VirtioDevice, features: int) -> None:
    device.write_status(A)
    device.write_status(AD)
    for select in range(4):
        device.driver_feature_select = select
        device.write_driver_features((features >> (32 * select)) & 0xFFFF_FFFF)
    device.write_status(ADF)


def program(device: VirtioDevice, index: int, size: int = 8, base: int = 0x1000) -> None:
    device.set_queue_size(index, size)
    for area, offset in ((QueueArea.DESC, 0), (QueueArea.DRIVER, 0x400), (QueueArea.DEVICE, 0x800)):
        device.write_queue_address(index, area, 0, base + offset)
        device.write_queue_address(index, area, 1, 0)
    device.set_queue_ready(index, True)


def live(device: ToyDevice, features: int = V1) -> ToyDevice:
    negotiate(device, features)
    program(device, 0)
    program(device, 1, 16, 0x4000)
    device.write_status(ADFO)
    assert device.live
    return device


def queue(device: VirtioDevice, index: int) -> ScriptedQueue:
    q = device.queues[index]
    assert isinstance(q, ScriptedQueue)
    return q


# -- construction ---------------------------------------------------------------------------


class NoId(VirtioDevice):
    pass


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(queue_sizes=[0]),
        dict(queue_sizes=[40000]),
        dict(queue_sizes=[300]),
        dict(queue_sizes=[1 << 16]),
        dict(budget=0),
        dict(features=-1),
        dict(features=1 << 128),
    ],
)
def test_construction_rejects_bad_declarations(memory: GuestMemory, kwargs: dict[str, Any]) -> None:
    class Plain(VirtioDevice):
        device_id = 1

    with pytest.raises(UsageError):
        Plain(memory, queue_factory=ScriptedQueue, **kwargs)


def test_device_id_must_be_declared(memory: GuestMemory) -> None:
    with pytest.raises(UsageError, match="device_id"):
        NoId(memory)


def test_attach_twice_is_a_usage_error(dev: ToyDevice) -> None:
    with pytest.raises(UsageError, match="already attached"):
        dev.attach(RecordingTransport())


def test_handle_queue_must_be_implemented(memory: GuestMemory) -> None:
    class Bare(VirtioDevice):
        device_id = 1

    bare = Bare(memory, queue_sizes=[4], queue_factory=ScriptedQueue)
    with pytest.raises(UsageError, match="handle_queue"):
        bare.handle_queue(0, [])


# -- features (§2.2, §6) ---------------------------------------------------------------------


def test_spec_6_2_version_1_is_always_offered(dev: ToyDevice) -> None:
    dev.device_feature_select = 1
    assert dev.read_device_features() & 1  # bit 32
    dev.device_feature_select = 0
    assert dev.read_device_features() == bit(3) | bit(VIRTIO_F_EVENT_IDX)
    dev.device_feature_select = 0xFFFF_FFFF
    assert dev.read_device_features() == 0
    assert "VIRTIO_F_VERSION_1" in feature_names(dev.features.offered)


def test_driver_features_are_mirrored_per_window(dev: ToyDevice) -> None:
    dev.write_status(A)
    dev.write_status(AD)
    dev.driver_feature_select = 1
    dev.write_driver_features(0xFFFF_FFFF)
    assert dev.read_driver_features() == 0xFFFF_FFFF
    dev.driver_feature_select = 7  # outside the windows: dropped, reads 0
    dev.write_driver_features(1)
    assert dev.read_driver_features() == 0


def test_spec_2_2_2_features_ok_with_unoffered_bits_is_refused(dev: ToyDevice) -> None:
    negotiate(dev, V1 | bit(5))
    assert dev.status == AD  # FEATURES_OK not set
    assert dev.negotiated == 0


def test_features_ok_without_version_1_is_refused(dev: ToyDevice) -> None:
    negotiate(dev, bit(3))
    assert dev.status == AD


def test_device_validation_can_refuse(dev: ToyDevice) -> None:
    dev.refuse = "needs bit 3"
    negotiate(dev, V1)
    assert dev.status == AD
    dev.refuse = None
    dev.write_status(ADF)  # the driver may try again
    assert dev.status == ADF and dev.negotiated == V1


def test_spec_3_1_1_features_are_frozen_after_features_ok(dev: ToyDevice) -> None:
    negotiate(dev, V1 | bit(3))
    assert dev.has_feature(3) and dev.has_feature(VIRTIO_F_VERSION_1)
    dev.driver_feature_select = 0
    dev.write_driver_features(0)
    assert dev.read_driver_features() == bit(3)
    assert dev.negotiated == V1 | bit(3)


def test_packed_negotiation_rebuilds_the_queues(dev: ToyDevice, memory: GuestMemory) -> None:
    dev2 = ToyDevice(memory, features=bit(VIRTIO_F_RING_PACKED))
    negotiate(dev2, V1 | bit(VIRTIO_F_RING_PACKED))
    assert all(q.packed for q in dev2.queues)
    dev2.set_queue_size(0, 5)  # packed rings need not be powers of two
    assert dev2.queue_size(0) == 5
    dev2.reset()
    assert not any(q.packed for q in dev2.queues)


# -- status (§2.1) ---------------------------------------------------------------------------


def test_activate_runs_once_at_driver_ok(dev: ToyDevice) -> None:
    live(dev)
    assert dev.activations == 1
    dev.write_status(ADFO)
    assert dev.activations == 1


def test_spec_2_1_2_illegal_transition_after_driver_ok_notifies_config(dev: ToyDevice) -> None:
    live(dev)
    dev.write_status(AD)  # clears bits: illegal
    assert dev.status == ADFO | DEVICE_NEEDS_RESET
    assert transport(dev).config == 1
    assert isinstance(dev.error, GuestError)
    assert not dev.live


def test_illegal_transition_before_driver_ok_sets_needs_reset_silently(dev: ToyDevice) -> None:
    dev.write_status(ADF)
    assert dev.status == DEVICE_NEEDS_RESET
    assert transport(dev).config == 0


def test_failed_stops_processing(dev: ToyDevice) -> None:
    live(dev)
    dev.write_status(ADFO | FAILED)
    queue(dev, 0).available = [FakeChain(1)]
    dev.notify_queue(0)
    assert dev.handled == []


# -- queue programming (rule 3) ------------------------------------------------------------------


def test_queue_programming_before_features_ok_is_ignored(dev: ToyDevice) -> None:
    dev.write_status(A)
    dev.write_status(AD)
    dev.set_queue_size(0, 4)
    dev.write_queue_address(0, QueueArea.DESC, 0, 0x1000)
    dev.set_queue_ready(0, True)
    assert dev.queue_size(0) == 8 and dev.queue_address(0, QueueArea.DESC) == 0 and not dev.queue_ready(0)


@pytest.mark.parametrize("size", [0, 3, 6, 9, 16, 0x10000])
def test_split_queue_size_must_be_a_power_of_two_up_to_max(dev: ToyDevice, size: int) -> None:
    negotiate(dev, V1)
    dev.set_queue_size(0, size)
    assert dev.queue_size(0) == 8


def test_queue_fields_are_frozen_while_enabled(dev: ToyDevice) -> None:
    negotiate(dev, V1)
    program(dev, 0)
    dev.set_queue_size(0, 2)
    dev.write_queue_address(0, QueueArea.DESC, 0, 0x8000)
    assert dev.queue_size(0) == 8 and dev.queue_address(0, QueueArea.DESC) == 0x1000


def test_queue_programming_after_driver_ok_needs_ring_reset(dev: ToyDevice) -> None:
    negotiate(dev, V1)
    program(dev, 0)
    dev.write_status(ADFO)
    program(dev, 1, 16, 0x4000)
    assert not dev.queue_ready(1)
    assert dev.queue_address(1, QueueArea.DESC) == 0


def test_spec_2_6_1_queue_reset_and_re_enable(dev: ToyDevice) -> None:
    live(dev, V1 | bit(VIRTIO_F_RING_RESET))
    epoch = dev.queue_epoch(1)
    dev.reset_queue(1)
    assert not dev.queue_ready(1) and dev.queue_size(1) == 16 and dev.queue_address(1, QueueArea.DESC) == 0
    assert dev.queue_epoch(1) == epoch + 1 and dev.queue_resets == [1]
    program(dev, 1, 4, 0x6000)  # §2.6.1.2: re-enable while the device is live
    assert dev.queue_ready(1) and dev.queue_size(1) == 4


def test_queue_reset_without_ring_reset_is_ignored(dev: ToyDevice) -> None:
    live(dev)
    dev.reset_queue(0)
    assert dev.queue_ready(0) and dev.queue_resets == []


def test_negotiated_ring_features_are_passed_to_the_queue_on_enable(dev: ToyDevice) -> None:
    live(dev, V1 | bit(VIRTIO_F_EVENT_IDX))
    assert queue(dev, 0).event_idx and not queue(dev, 0).in_order
    assert not queue(dev, 0).indirect  # not negotiated: §2.7.5.3.1 is enforced
    assert queue(dev, 1).name == "ToyDevice.q1"


@pytest.mark.parametrize("index", [-1, 2, 0xFFFF])
def test_nonexistent_queues_read_zero_and_ignore_writes(dev: ToyDevice, index: int) -> None:
    negotiate(dev, V1)
    assert dev.queue_max_size(index) == 0 and dev.queue_size(index) == 0 and not dev.queue_ready(index)
    dev.set_queue_size(index, 4)
    dev.write_queue_address(index, QueueArea.DESC, 0, 0x1000)
    dev.set_queue_ready(index, True)
    dev.set_queue_ready(index, False)
    dev.reset_queue(index)
    assert dev.queue_address(index, QueueArea.DESC) == 0
    assert not dev.notify_queue(index)


def test_stopping_a_queue(dev: ToyDevice) -> None:
    live(dev)
    dev.set_queue_ready(0, False)
    queue(dev, 0).available = [FakeChain(1)]
    dev.notify_queue(0)
    assert dev.handled == []


# -- notifications and used buffers -------------------------------------------------------------


def test_spec_2_1_2_no_buffers_consumed_before_driver_ok(dev: ToyDevice) -> None:
    negotiate(dev, V1)
    program(dev, 0)
    queue(dev, 0).available = [FakeChain(3)]
    assert not dev.notify_queue(0)
    assert dev.handled == [] and len(queue(dev, 0).available) == 1


def test_notify_hands_chains_to_the_device_and_signals(dev: ToyDevice) -> None:
    live(dev)
    queue(dev, 1).available = [FakeChain(4), FakeChain(5)]
    assert not dev.notify_queue(1)
    assert dev.handled == [(1, [4, 5])]
    assert queue(dev, 1).pushed == [(4, 4), (5, 5)]
    assert transport(dev).used == [1]


def test_suppressed_notification_is_not_signalled(dev: ToyDevice) -> None:
    live(dev)
    queue(dev, 0).notify = False
    queue(dev, 0).available = [FakeChain(1)]
    dev.notify_queue(0)
    assert queue(dev, 0).pushed == [(1, 1)] and transport(dev).used == []


def test_budget_bounds_work_and_pending_resumes_it(memory: GuestMemory) -> None:
    dev = ToyDevice(memory, budget=2)
    dev.attach(RecordingTransport())
    live(dev)
    queue(dev, 0).available = [FakeChain(i) for i in range(5)]
    assert dev.notify_queue(0)
    assert dev.pending == {0}
    assert dev.run_pending()
    assert not dev.run_pending()
    assert dev.pending == set()
    assert [heads for _, heads in dev.handled] == [[0, 1], [2, 3], [4]]


def test_stale_epoch_push_is_dropped(dev: ToyDevice) -> None:
    live(dev, V1 | bit(VIRTIO_F_RING_RESET))
    epoch = dev.queue_epoch(0)
    dev.reset_queue(0)
    program(dev, 0)
    assert not dev.push_used(0, [(7, 1)], epoch=epoch)
    assert queue(dev, 0).pushed == []
    assert dev.push_used(0, [(7, 1)], epoch=dev.queue_epoch(0))
    assert dev.push_used(0, [])


# -- broken state (rule 5) ----------------------------------------------------------------------


def test_broken_queue_sets_needs_reset_and_notifies_config(dev: ToyDevice) -> None:
    live(dev)
    queue(dev, 0).pop_error = DenialOfService("avail index jumped")
    dev.notify_queue(0)
    assert dev.status & DEVICE_NEEDS_RESET
    assert transport(dev).config == 1
    assert isinstance(dev.error, DenialOfService)
    # Sticky: other queues stop too, and pushes are dropped.
    queue(dev, 1).available = [FakeChain(2)]
    dev.notify_queue(1)
    assert dev.handled == []
    assert not dev.push_used(1, [(2, 0)])
    dev.fail(GuestError("again"))
    assert transport(dev).config == 1 and isinstance(dev.error, DenialOfService)


def test_guest_error_from_the_handler_sets_needs_reset(dev: ToyDevice) -> None:
    live(dev)
    dev.raise_in_handler = GuestError("bad request")
    queue(dev, 0).available = [FakeChain(1)]
    assert not dev.notify_queue(0)
    assert dev.broken


def test_reset_clears_everything(dev: ToyDevice) -> None:
    live(dev, V1 | bit(3))
    dev.fail(GuestError("x"))
    dev.queue_select = dev.device_feature_select = dev.driver_feature_select = 1
    epochs = [dev.queue_epoch(0), dev.queue_epoch(1)]
    dev.write_status(0)
    assert dev.status == 0 and dev.error is None and dev.negotiated == 0
    assert (dev.queue_select, dev.device_feature_select, dev.driver_feature_select) == (0, 0, 0)
    assert not dev.queue_ready(0) and dev.queue_size(1) == 16
    assert dev.queue_address(1, QueueArea.DESC) == 0
    assert [dev.queue_epoch(0), dev.queue_epoch(1)] == [epochs[0] + 1, epochs[1] + 1]
    assert dev.resets == 1 and transport(dev).resets == 1
    dev.driver_feature_select = 0
    assert dev.read_driver_features() == 0


# -- configuration (§2.5) -----------------------------------------------------------------------


def test_config_reads_are_bounded(dev: ToyDevice) -> None:
    assert dev.read_config(0, 8) == 1234
    assert dev.read_config(10, 4) == 0  # bytes past the end read 0
    assert dev.read_config(12, 4) == 0 and dev.read_config(-1, 4) == 0
    assert dev.config_fields().capacity == 1234


def test_config_writes_need_features_ok_and_stay_inside(dev: ToyDevice) -> None:
    dev.write_config(8, 1, 7)
    assert dev.config[8] == 0  # §3.1.1 step 4: no writes before FEATURES_OK
    negotiate(dev, V1)
    dev.write_config(8, 1, 7)
    assert dev.config[8] == 7
    dev.write_config(10, 4, 0xFFFF_FFFF)  # past the end: dropped
    dev.write_config(0, 8, 0)  # read-only field: the hook ignores it
    assert dev.config_fields().capacity == 1234 and bytes(dev.config[10:]) == b"\0\0"


def test_spec_2_5_generation_changes_with_device_side_changes(dev: ToyDevice) -> None:
    g0 = dev.config_generation
    dev.set_config_fields(capacity=99)
    g1 = dev.config_generation
    assert g1 != g0
    # Several changes the driver did not observe in between count once (rule 7).
    dev.set_config_fields(capacity=100)
    dev.set_config_fields(capacity=101)
    assert dev.config_generation == (g1 + 1) & 0xFF
    dev.set_config_fields(capacity=101)  # no change, no bump
    assert dev.config_generation == (g1 + 1) & 0xFF
    assert transport(dev).config == 0  # before DRIVER_OK: no notification


def test_generation_never_returns_to_an_observed_value_after_many_changes(dev: ToyDevice) -> None:
    seen = dev.config_generation
    for i in range(300):
        dev.set_config_fields(capacity=i)
    assert dev.config_generation != seen


def test_config_change_after_driver_ok_notifies(dev: ToyDevice) -> None:
    live(dev)
    dev.update_config(8, b"\x05")
    assert transport(dev).config == 1


def test_config_update_outside_is_a_usage_error(dev: ToyDevice) -> None:
    with pytest.raises(UsageError):
        dev.update_config(10, b"abc")
    with pytest.raises(UsageError):
        dev.set_config_fields(nope=1)


def test_traces_name_what_was_ignored(dev: ToyDevice) -> None:
    with RecordingSink("virtio.*") as rec:
        dev.set_queue_size(0, 4)
        dev.notify_queue(0)
        dev.write_config(0, 1, 1)
    assert {"virtio.queue_ignored", "virtio.notify_ignored", "virtio.config_ignored"} <= set(rec.names())


# -- snapshots -------------------------------------------------------------------------------


def test_snapshot_round_trip(dev: ToyDevice, memory: GuestMemory) -> None:
    live(dev, V1 | bit(3))
    dev.set_config_fields(mode=3)
    state = dev.state()
    other = ToyDevice(memory)
    other.attach(RecordingTransport())
    other.restore(state)
    assert other.state() == state
    assert other.live and other.has_feature(3) and other.queue_ready(1)


@pytest.mark.parametrize(
    "change",
    [
        dict(version=2),
        dict(status=0x100),
        dict(status=0x20),
        dict(status=ACKNOWLEDGE | DRIVER_OK),
        dict(offered=1),
        dict(features_locked=False),
        dict(negotiated=bit(9) | V1),
        dict(queue_select=-1),
        dict(queue_select=1 << 32),
        dict(config=b"short"),
        dict(packed=True),
        dict(queues=()),
        dict(epochs=(0,)),
        dict(queues=((99, 0, 0, 0, False), (16, 0, 0, 0, False))),
        dict(device="surprise"),
    ],
)
def test_restore_rejects_inconsistent_snapshots(dev: ToyDevice, change: dict[str, Any]) -> None:
    live(dev)
    before = dev.state()
    with pytest.raises(SnapshotError):
        dev.restore(dataclasses.replace(before, **change))
    assert dev.state() == before


class HoldingDevice(VirtioDevice):
    """Real packed-capable queues; ``handle_queue`` keeps every chain (a slow backend)."""

    device_id = 2

    def __init__(self, memory: GuestMemory) -> None:
        super().__init__(memory, features=bit(VIRTIO_F_RING_RESET) | bit(VIRTIO_F_RING_PACKED), queue_sizes=[8])
        self.held: list[Any] = []

    def handle_queue(self, index: int, chains: list[Any]) -> None:
        self.held.extend(chains)


def test_resizing_a_stopped_packed_queue_with_buffers_in_flight_needs_reset(memory: GuestMemory) -> None:
    """Virtqueue rule 2: the in-flight table belongs to the old size, so the queue breaks at
    the size write, and the device enters DEVICE_NEEDS_RESET then (§2.1.2), not never."""
    from virtio.testing import PackedDriver

    device = HoldingDevice(memory)
    device.attach(RecordingTransport())
    negotiate(device, V1 | bit(VIRTIO_F_RING_RESET) | bit(VIRTIO_F_RING_PACKED))
    driver = PackedDriver(memory, 8, base=0x1000, data_base=0x4000, data_size=0x1000)
    device.set_queue_size(0, 8)
    for area, gpa in ((QueueArea.DESC, driver.layout.desc_addr), (QueueArea.DRIVER, driver.layout.driver_addr),
                      (QueueArea.DEVICE, driver.layout.device_addr)):
        device.write_queue_address(0, area, 0, gpa)
    device.set_queue_ready(0, True)
    device.write_status(ADFO)
    driver.add([b"request"], [16])
    driver.kick()
    device.notify_queue(0)
    assert len(device.held) == 1 and not device.status & DEVICE_NEEDS_RESET
    device.set_queue_ready(0, False)  # MMIO QueueReady = 0 (RING_RESET lets it be reprogrammed)
    device.set_queue_size(0, 4)
    assert device.status & DEVICE_NEEDS_RESET and transport(device).config == 1
    assert "in flight" in str(device.error)
