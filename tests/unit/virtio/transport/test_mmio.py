"""Virtio over MMIO, version 2 (VIRTIO 1.2 §4.2), driven through the register window only."""

from __future__ import annotations

import dataclasses

import pytest

from devmodels import Machine, RecordingLevelSink, RecordingTrigger, SnapshotError, UsageError
from virtio.defs import (
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_RESET,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_SHM_BASE_HIGH,
    VIRTIO_MMIO_SHM_BASE_LOW,
    VIRTIO_MMIO_SHM_LEN_HIGH,
    VIRTIO_MMIO_SHM_LEN_LOW,
    VIRTIO_MMIO_SHM_SEL,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VENDOR_ID,
)
from virtio.features import bit
from virtio.transport import MMIO_WINDOW_MIN, VirtioMmioDevice
from virtio.transport.testing import ECHO_F_XOR, VIRTIO_ID_DEVMODELS_ECHO, EchoDevice

from .conftest import MMIO_BASE, MmioRig

V1 = bit(VIRTIO_F_VERSION_1)
RR = bit(VIRTIO_F_RING_RESET)
ADF = ACKNOWLEDGE | DRIVER | FEATURES_OK


def ready(rig: MmioRig, features: int = V1 | RR | bit(ECHO_F_XOR)) -> None:
    d = rig.driver
    assert d.negotiate(features) == features
    for q in range(2):
        assert d.setup_queue(q, 16, 0x10000 * (q + 1), 0x10000 * (q + 1) + 0x1000, 0x10000 * (q + 1) + 0x2000)
    d.driver_ok()


def test_spec_4_2_2_1_magic_version_and_ids(mmio: MmioRig) -> None:
    d = mmio.driver
    assert d.reg(VIRTIO_MMIO_MAGIC_VALUE) == 0x74726976
    assert d.reg(0x004) == 2
    assert d.device_id == VIRTIO_ID_DEVMODELS_ECHO
    assert d.reg(VIRTIO_MMIO_VENDOR_ID) == 0x1AF4
    assert mmio.transport.size == MMIO_WINDOW_MIN


def test_feature_windows(mmio: MmioRig) -> None:
    d = mmio.driver
    assert d.device_features() == V1 | RR | bit(ECHO_F_XOR)
    d.set_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 9)
    assert d.reg(VIRTIO_MMIO_DEVICE_FEATURES) == 0
    assert d.reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL) == 0  # write-only: reads 0


def test_spec_2_2_2_features_ok_with_unoffered_bits(mmio: MmioRig) -> None:
    d = mmio.driver
    d.reset()
    d.write_status(ACKNOWLEDGE)
    d.write_status(ACKNOWLEDGE | DRIVER)
    d.write_driver_features(V1 | bit(17))
    d.write_status(ADF)
    assert d.read_status() == ACKNOWLEDGE | DRIVER


def test_queue_setup_and_num_max(mmio: MmioRig) -> None:
    d = mmio.driver
    d.negotiate(V1)
    d.set_reg(VIRTIO_MMIO_QUEUE_SEL, 1)
    assert d.reg(VIRTIO_MMIO_QUEUE_NUM_MAX) == 16
    assert d.reg(VIRTIO_MMIO_QUEUE_NUM) == 0  # write-only
    assert d.setup_queue(1, 8, 0x20000, 0x21000, 0x22000)
    assert mmio.device.queue_size(1) == 8 and mmio.device.queue_address(1, 2) == 0x22000
    d.set_reg(VIRTIO_MMIO_QUEUE_SEL, 2)
    assert d.reg(VIRTIO_MMIO_QUEUE_NUM_MAX) == 0 and d.reg(VIRTIO_MMIO_QUEUE_READY) == 0


def test_queue_ready_zero_stops_the_queue(mmio: MmioRig) -> None:
    ready(mmio)
    d = mmio.driver
    d.set_reg(VIRTIO_MMIO_QUEUE_SEL, 0)
    d.set_reg(VIRTIO_MMIO_QUEUE_READY, 0)
    assert d.reg(VIRTIO_MMIO_QUEUE_READY) == 0
    d.set_reg(VIRTIO_MMIO_QUEUE_READY, 7)  # neither 0 nor 1: ignored
    assert d.reg(VIRTIO_MMIO_QUEUE_READY) == 0


def test_spec_4_2_2_1_queue_reset(mmio: MmioRig) -> None:
    ready(mmio)
    assert mmio.driver.reset_queue(1) == 0
    mmio.driver.set_reg(VIRTIO_MMIO_QUEUE_SEL, 1)
    assert mmio.driver.reg(VIRTIO_MMIO_QUEUE_READY) == 0
    assert mmio.device.queue_resets == [1]
    assert mmio.driver.setup_queue(1, 4, 0x40000, 0x41000, 0x42000)


def test_spec_4_2_2_1_interrupt_status_until_ack(mmio: MmioRig) -> None:
    ready(mmio)
    mmio.transport.signal_used(0)
    assert mmio.level
    mmio.device.set_link(False)
    d = mmio.driver
    assert d.interrupt_status() == VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG
    d.ack(VIRTIO_MMIO_INT_VRING)
    assert d.interrupt_status() == VIRTIO_MMIO_INT_CONFIG and mmio.level
    d.ack(0xFFFF_FFFF)
    assert d.interrupt_status() == 0 and not mmio.level


def test_spec_4_2_2_1_reset_clears_interrupt_status_and_queue_ready(mmio: MmioRig) -> None:
    ready(mmio)
    mmio.transport.signal_used(0)
    mmio.driver.write_status(0)
    assert mmio.driver.interrupt_status() == 0 and not mmio.level
    for q in range(2):
        mmio.driver.set_reg(VIRTIO_MMIO_QUEUE_SEL, q)
        assert mmio.driver.reg(VIRTIO_MMIO_QUEUE_READY) == 0


def test_spec_4_2_2_1_config_generation_changes(mmio: MmioRig) -> None:
    g = mmio.driver.generation()
    mmio.device.set_link(False)
    assert mmio.driver.generation() != g
    assert mmio.driver.read_config(5, 1) == 0


def test_trigger_interrupt_pulses_per_event(machine: Machine) -> None:
    trigger = RecordingTrigger()
    transport = VirtioMmioDevice(EchoDevice(machine.memory), trigger)
    transport.signal_used(0)
    transport.signal_used(1)
    transport.signal_config()
    assert trigger.count == 3
    transport.write(0x064, 4, 3)
    assert transport.interrupt_status == 0


def test_bad_irq_is_a_usage_error(machine: Machine) -> None:
    with pytest.raises(UsageError):
        VirtioMmioDevice(EchoDevice(machine.memory), object())  # type: ignore[arg-type]


def test_no_shared_memory_regions(mmio: MmioRig) -> None:
    d = mmio.driver
    d.set_reg(VIRTIO_MMIO_SHM_SEL, 0)
    for reg in (VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_SHM_LEN_HIGH, VIRTIO_MMIO_SHM_BASE_LOW, VIRTIO_MMIO_SHM_BASE_HIGH):
        assert d.reg(reg) == 0xFFFF_FFFF


def test_large_config_grows_the_window(machine: Machine) -> None:
    device = EchoDevice(machine.memory)
    device.config.extend(bytes(0x180))
    assert VirtioMmioDevice(device).size == 0x400


# -- hostile guests ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [VIRTIO_MMIO_STATUS, VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_DESC_LOW])
@pytest.mark.parametrize("size", [1, 2, 8])
def test_hostile_non_32bit_register_accesses_are_ignored(mmio: MmioRig, offset: int, size: int) -> None:
    d = mmio.driver
    d.negotiate(V1)
    before = mmio.device.state()
    aligned = offset - offset % size
    assert d.machine.mmio.read(MMIO_BASE + aligned, size) == 0
    d.machine.mmio.write(MMIO_BASE + aligned, size, (1 << (8 * size)) - 1)
    assert mmio.device.state() == before


def test_hostile_read_only_registers_ignore_writes(mmio: MmioRig) -> None:
    d = mmio.driver
    for offset in (VIRTIO_MMIO_MAGIC_VALUE, 0x004, 0x008, VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_QUEUE_NUM_MAX,
                   VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_SHM_LEN_LOW):
        before = d.reg(offset)
        d.set_reg(offset, 0x1234_5678)
        assert d.reg(offset) == before


def test_hostile_status_wider_than_a_byte(mmio: MmioRig) -> None:
    mmio.driver.write_status(ACKNOWLEDGE)
    mmio.driver.write_status(0x1_0003)
    assert mmio.driver.read_status() == ACKNOWLEDGE | DEVICE_NEEDS_RESET


def test_hostile_notify_of_nonexistent_queue(mmio: MmioRig) -> None:
    ready(mmio)
    for index in (2, 0xFFFF, 0x1_0000, 0xFFFF_FFFF):
        mmio.driver.notify(index)
    assert mmio.driver.read_status() == ADF | DRIVER_OK and mmio.driver.interrupt_status() == 0


def test_hostile_queue_programming_after_driver_ok(mmio: MmioRig) -> None:
    d = mmio.driver
    d.negotiate(V1)
    assert d.setup_queue(0, 16, 0x10000, 0x11000, 0x12000)
    d.driver_ok()
    assert not d.setup_queue(1, 16, 0x20000, 0x21000, 0x22000)
    d.set_reg(VIRTIO_MMIO_QUEUE_SEL, 0)
    d.set_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x9000)
    assert mmio.device.queue_address(0, 0) == 0x10000


def test_hostile_queue_reset_without_the_feature(mmio: MmioRig) -> None:
    ready(mmio, V1)
    mmio.driver.set_reg(VIRTIO_MMIO_QUEUE_SEL, 0)
    mmio.driver.set_reg(VIRTIO_MMIO_QUEUE_RESET, 1)
    assert mmio.driver.reg(VIRTIO_MMIO_QUEUE_READY) == 1


def test_hostile_config_writes_past_the_end(mmio: MmioRig) -> None:
    ready(mmio)
    before = bytes(mmio.device.config)
    mmio.driver.write_config(8, 4, 0xFFFF_FFFF)
    mmio.driver.write_config(0xF0, 4, 0xFFFF_FFFF)
    mmio.driver.write_config(0, 4, 0)  # read-only field
    assert bytes(mmio.device.config) == before
    assert mmio.driver.read_config(0xF0, 4) == 0


# -- snapshots -----------------------------------------------------------------------------------


def test_snapshot_round_trip(mmio: MmioRig, machine: Machine) -> None:
    ready(mmio)
    mmio.transport.signal_config()
    state = mmio.transport.state()
    line = RecordingLevelSink()
    twin = VirtioMmioDevice(EchoDevice(machine.memory, queues=2, queue_size=16, features=RR), line)
    twin.restore(state)
    assert twin.state() == state and line.level


@pytest.mark.parametrize("change", [dict(version=3), dict(interrupt_status=4), dict(shm_sel=-1)])
def test_snapshot_rejects_bad_fields(mmio: MmioRig, change: dict[str, object]) -> None:
    ready(mmio)
    state = mmio.transport.state()
    with pytest.raises(SnapshotError):
        mmio.transport.restore(dataclasses.replace(state, **change))  # type: ignore[arg-type]
    assert mmio.transport.state() == state


def test_snapshot_keeps_a_wide_queue_select(mmio: MmioRig, machine: Machine) -> None:
    mmio.driver.set_reg(VIRTIO_MMIO_QUEUE_SEL, 0xFFFF_FFFF)
    state = mmio.transport.state()
    twin = VirtioMmioDevice(EchoDevice(machine.memory, queues=2, queue_size=16, features=RR))
    twin.restore(state)
    assert twin.device.queue_select == 0xFFFF_FFFF
