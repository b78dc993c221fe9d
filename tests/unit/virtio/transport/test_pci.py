"""Virtio over PCI (VIRTIO 1.2 §4.1), driven through config cycles and BAR accesses only."""

from __future__ import annotations

import dataclasses
import json

import pytest

from devmodels import GuestError, Machine, SnapshotError, UsageError, from_dict, to_dict
from devmodels.pci.defs import (
    PCI_BASE_ADDRESS_MEM_TYPE_64,
    PCI_CAP_ID_MSIX,
    PCI_CLASS_PROG,
    PCI_REVISION_ID,
    PCI_STATUS,
    PCI_STATUS_INTERRUPT,
    PCI_SUBSYSTEM_ID,
)
from virtio.defs import (
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG,
    VIRTIO_PCI_COMMON_CFG_SIZE,
    VIRTIO_PCI_ISR_CONFIG,
    VIRTIO_PCI_ISR_QUEUE,
)
from virtio.features import bit
from virtio.transport import VirtioPciFunction, VirtioPciState
from virtio.transport.testing import ECHO_F_XOR, EchoDevice, echo_config

from .conftest import PciRig, make_pci

V1 = bit(VIRTIO_F_VERSION_1)
RR = bit(VIRTIO_F_RING_RESET)
ADF = ACKNOWLEDGE | DRIVER | FEATURES_OK


def ready(rig: PciRig, features: int = V1 | RR | bit(ECHO_F_XOR), *, msix: bool = False) -> None:
    """Negotiate, set up both queues, optionally enable MSI-X (vector i+1 for queue i), DRIVER_OK."""
    d = rig.driver
    assert d.negotiate(features) == features
    if msix:
        d.enable_msix([(0xFEE0_0000, 0x30 + v) for v in range(3)])
        d.write_common("config_msix_vector", 0)
    for q in range(2):
        assert d.setup_queue(q, 16, 0x10000 * (q + 1), 0x10000 * (q + 1) + 0x1000, 0x10000 * (q + 1) + 0x2000, vector=q + 1 if msix else None)
    d.driver_ok()


# -- discovery and layout (§4.1.2, §4.1.4) --------------------------------------------------------


def test_spec_4_1_2_1_ids(pci: PciRig) -> None:
    d = pci.driver
    assert d.cfg_read(0, 2) == 0x1AF4
    assert d.cfg_read(2, 2) == 0x1040 + pci.device.device_id
    assert d.cfg_read(PCI_REVISION_ID, 1) >= 1
    assert d.cfg_read(PCI_SUBSYSTEM_ID, 2) >= 0x40
    assert d.cfg_read(PCI_CLASS_PROG, 4) & 0xFF_FFFF == 0x00FF00


def test_class_code_follows_the_device_type(machine: Machine) -> None:
    class Net(EchoDevice):
        device_id = 1

    function = VirtioPciFunction(Net(machine.memory))
    assert function.config.get(PCI_CLASS_PROG, 3) == 0x020000


def test_one_64bit_memory_bar(pci: PciRig) -> None:
    assert pci.driver.cfg_read(0x10, 4) & 0b111 == PCI_BASE_ADDRESS_MEM_TYPE_64
    assert pci.driver.bar_address(0) >= 1 << 32  # placed in the 64-bit window
    assert pci.function.bar_size & (pci.function.bar_size - 1) == 0


def test_spec_4_1_4_capabilities_describe_every_structure(pci: PciRig) -> None:
    caps = pci.driver.caps
    assert set(caps) == {
        VIRTIO_PCI_CAP_COMMON_CFG,
        VIRTIO_PCI_CAP_NOTIFY_CFG,
        VIRTIO_PCI_CAP_ISR_CFG,
        VIRTIO_PCI_CAP_DEVICE_CFG,
        VIRTIO_PCI_CAP_PCI_CFG,
    }
    for cfg_type, cap in caps.items():
        header = cap.cap if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG else cap
        assert header.bar == 0
        if cfg_type != VIRTIO_PCI_CAP_PCI_CFG:
            assert header.offset + header.length <= pci.function.bar_size
    assert caps[VIRTIO_PCI_CAP_COMMON_CFG].length >= VIRTIO_PCI_COMMON_CFG_SIZE
    assert caps[VIRTIO_PCI_CAP_DEVICE_CFG].length == echo_config.sizeof()
    assert caps[VIRTIO_PCI_CAP_ISR_CFG].length >= 1
    assert pci.driver.msix_cap is not None


def test_spec_4_1_4_3_1_common_cfg_offset_is_4_byte_aligned(pci: PciRig) -> None:
    assert pci.driver.caps[VIRTIO_PCI_CAP_COMMON_CFG].offset % 4 == 0


def test_spec_4_1_4_6_1_device_cfg_offset_is_4_byte_aligned(pci: PciRig) -> None:
    assert pci.driver.caps[VIRTIO_PCI_CAP_DEVICE_CFG].offset % 4 == 0


def test_spec_4_1_4_4_1_notify_capability_covers_every_queue(pci: PciRig) -> None:
    cap = pci.driver.caps[VIRTIO_PCI_CAP_NOTIFY_CFG]
    mult = cap.notify_off_multiplier
    assert cap.cap.offset % 4 == 0
    assert mult == 0 or (mult & (mult - 1) == 0 and mult % 4 == 0)
    for q in range(pci.device.num_queues):
        pci.driver.write_common("queue_select", q)
        assert cap.cap.length >= pci.driver.read_common("queue_notify_off") * mult + 4


def test_capability_fields_are_read_only_except_the_access_window(pci: PciRig) -> None:
    d = pci.driver
    at = d.cap_offsets[VIRTIO_PCI_CAP_COMMON_CFG]
    before = [d.cfg_read(at + i, 4) for i in range(0, 16, 4)]
    for i in range(0, 16, 4):
        d.cfg_write(at + i, 4, 0xFFFF_FFFF)
    assert [d.cfg_read(at + i, 4) for i in range(0, 16, 4)] == before


# -- common configuration (§4.1.4.3) ---------------------------------------------------------------


def test_spec_4_1_4_3_1_device_feature_windows(pci: PciRig) -> None:
    d = pci.driver
    offered = d.device_features()
    assert offered & V1 and offered & RR and offered & bit(ECHO_F_XOR)
    d.write_common("device_feature_select", 5)
    assert d.read_common("device_feature") == 0
    assert d.read_common("device_feature_select") == 5


def test_spec_4_1_4_3_1_driver_feature_presents_what_was_written(pci: PciRig) -> None:
    d = pci.driver
    d.write_status(ACKNOWLEDGE)
    d.write_status(ACKNOWLEDGE | DRIVER)
    d.write_driver_features(V1 | bit(ECHO_F_XOR))
    d.write_common("driver_feature_select", 1)
    assert d.read_common("driver_feature") == 1
    d.write_common("driver_feature_select", 0)
    assert d.read_common("driver_feature") == bit(ECHO_F_XOR)


def test_spec_4_1_4_3_1_reset_by_writing_zero(pci: PciRig) -> None:
    ready(pci)
    pci.driver.write_status(0)
    assert pci.driver.read_status() == 0
    pci.driver.write_common("queue_select", 0)
    assert pci.driver.read_common("queue_enable") == 0  # §4.1.4.3.1: queue_enable 0 on reset
    assert pci.driver.read_common("queue_size") == 16
    assert pci.driver.read_common("queue_desc") == 0


def test_spec_4_1_4_3_1_queue_size_is_zero_for_unavailable_queues(pci: PciRig) -> None:
    pci.driver.write_common("queue_select", 2)
    assert pci.driver.read_common("queue_size") == 0
    pci.driver.write_common("queue_select", 0xFFFF)
    assert pci.driver.read_common("queue_size") == 0
    assert pci.driver.read_common("queue_msix_vector") == VIRTIO_MSI_NO_VECTOR
    assert pci.driver.read_common("num_queues") == 2


def test_spec_4_1_4_3_1_queue_size_stays_a_power_of_two(pci: PciRig) -> None:
    d = pci.driver
    d.negotiate(V1)
    d.write_common("queue_select", 0)
    for bad in (0, 3, 12, 32):
        d.write_common("queue_size", bad)
        assert d.read_common("queue_size") == 16
    d.write_common("queue_size", 4)
    assert d.read_common("queue_size") == 4


def test_spec_4_1_4_3_1_queue_reset(pci: PciRig) -> None:
    ready(pci)
    d = pci.driver
    d.write_common("queue_select", 1)
    d.write_common("queue_reset", 1)
    assert d.read_common("queue_reset") == 0  # completed within the write
    assert d.read_common("queue_enable") == 0
    assert pci.device.queue_resets == [1]
    assert d.setup_queue(1, 8, 0x50000, 0x51000, 0x52000)  # re-enable while live


def test_queue_enable_zero_is_ignored(pci: PciRig) -> None:
    ready(pci)
    pci.driver.write_common("queue_select", 0)
    pci.driver.write_common("queue_enable", 0)  # §4.1.4.3.2: MUST NOT write 0
    assert pci.driver.read_common("queue_enable") == 1


def test_hostile_queue_programming_after_driver_ok_is_ignored(pci: PciRig) -> None:
    d = pci.driver
    d.negotiate(V1)  # no RING_RESET
    d.setup_queue(0, 16, 0x10000, 0x11000, 0x12000)
    d.driver_ok()
    assert not d.setup_queue(1, 16, 0x20000, 0x21000, 0x22000)
    d.write_common("queue_select", 0)
    d.write_common("queue_desc", 0x90000)
    assert d.read_common("queue_desc") == 0x10000
    assert d.read_status() == ADF | DRIVER_OK


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0, 2), (0, 1), (0, 8), (16, 8), (20, 4), (20, 2), (24, 1), (24, 4), (32, 8), (33, 1), (58, 1), (60, 4)],
)
def test_hostile_odd_access_sizes_to_common_cfg(pci: PciRig, offset: int, size: int) -> None:
    d = pci.driver
    d.negotiate(V1)
    base = d.structure(VIRTIO_PCI_CAP_COMMON_CFG)
    before = pci.device.state()
    assert d.machine.mmio.read(base + offset, size) == 0
    d.machine.mmio.write(base + offset, size, (1 << (8 * size)) - 1)
    assert pci.device.state() == before
    assert d.read_status() == ADF


def test_hostile_queue_select_out_of_range(pci: PciRig) -> None:
    d = pci.driver
    d.negotiate(V1)
    d.write_common("queue_select", 0x1234)
    d.write_common("queue_size", 4)
    d.write_common("queue_desc", 0x1000)
    d.write_common("queue_msix_vector", 1)
    d.write_common("queue_enable", 1)
    d.write_common("queue_reset", 1)
    assert d.read_common("queue_size") == 0 and d.read_common("queue_enable") == 0
    assert d.read_common("queue_notify_off") == 0 and d.read_common("queue_desc") == 0
    assert d.read_status() == ADF


def test_hostile_illegal_status_transition(pci: PciRig) -> None:
    ready(pci, msix=True)
    pci.driver.write_status(ACKNOWLEDGE)
    assert pci.driver.read_status() == ADF | DRIVER_OK | DEVICE_NEEDS_RESET
    # §2.1.2: with DRIVER_OK set the device sends a configuration change notification.
    assert pci.machine.irq.msi[-1].data == 0x30
    assert pci.function.isr & VIRTIO_PCI_ISR_CONFIG


def test_config_generation_is_read_only(pci: PciRig) -> None:
    g = pci.driver.read_common("config_generation")
    pci.driver.write_common("config_generation", g + 1)
    pci.driver.write_common("num_queues", 7)
    assert pci.driver.read_common("config_generation") == g
    assert pci.driver.read_common("num_queues") == 2


# -- device configuration (§4.1.4.6) -------------------------------------------------------------


def test_device_config_reads_and_generation(pci: PciRig) -> None:
    d = pci.driver
    assert d.read_config(0, 4) == 1 << 16
    g0 = d.read_common("config_generation")
    pci.device.set_link(False)
    assert d.read_common("config_generation") != g0
    assert d.read_config(5, 1) == 0


def test_hostile_config_writes_past_the_config_length(pci: PciRig) -> None:
    ready(pci)
    d = pci.driver
    before = bytes(pci.device.config)
    d.write_config(8, 4, 0xFFFF_FFFF)
    d.write_config(6, 4, 0xFFFF_FFFF)
    base = d.structure(VIRTIO_PCI_CAP_DEVICE_CFG)
    d.machine.mmio.write(base + 0x800, 4, 1)
    assert bytes(pci.device.config) == before
    d.write_config(4, 1, 0x5A)  # the one writable field
    assert pci.device.config[4] == 0x5A


# -- MSI-X vectors (§4.1.5.1.2) ------------------------------------------------------------------


def test_spec_4_1_5_1_2_1_vector_mapping_and_failure(pci: PciRig) -> None:
    d = pci.driver
    assert pci.function.msix is not None and pci.function.msix.vectors == 3
    d.write_common("config_msix_vector", 2)
    assert d.read_common("config_msix_vector") == 2
    d.write_common("config_msix_vector", 3)  # outside the table: the mapping fails
    assert d.read_common("config_msix_vector") == VIRTIO_MSI_NO_VECTOR
    d.write_common("queue_select", 1)
    d.write_common("queue_msix_vector", 0x7FF)
    assert d.read_common("queue_msix_vector") == VIRTIO_MSI_NO_VECTOR
    d.write_common("queue_msix_vector", 1)
    assert d.read_common("queue_msix_vector") == 1


def test_spec_4_1_5_1_2_1_reset_unmaps_every_event(pci: PciRig) -> None:
    ready(pci, msix=True)
    pci.driver.write_status(0)
    pci.driver.write_common("queue_select", 0)
    assert pci.driver.read_common("queue_msix_vector") == VIRTIO_MSI_NO_VECTOR
    assert pci.driver.read_common("config_msix_vector") == VIRTIO_MSI_NO_VECTOR


def test_msix_queue_and_config_notifications(pci: PciRig) -> None:
    ready(pci, msix=True)
    pci.function.signal_used(1)
    pci.device.set_link(False)
    assert [m.data for m in pci.machine.irq.msi] == [0x32, 0x30]
    assert not pci.intx
    assert pci.function.isr == VIRTIO_PCI_ISR_CONFIG  # §4.1.4.5.1: set before a config notification


def test_spec_4_1_5_3_1_no_vector_no_interrupt(pci: PciRig) -> None:
    ready(pci, msix=True)
    pci.driver.write_common("queue_select", 0)
    pci.driver.write_common("queue_msix_vector", VIRTIO_MSI_NO_VECTOR)
    pci.function.signal_used(0)
    assert pci.machine.irq.msi == [] and not pci.intx and pci.function.isr == 0


def test_spec_4_1_5_4_1_config_no_vector_no_interrupt(pci: PciRig) -> None:
    ready(pci, msix=True)
    pci.driver.write_common("config_msix_vector", VIRTIO_MSI_NO_VECTOR)
    pci.device.set_link(False)
    assert pci.machine.irq.msi == [] and not pci.intx


# -- INTx and ISR (§4.1.4.5) ------------------------------------------------------------------------


def test_spec_4_1_4_5_1_isr_intx_and_read_to_clear(pci: PciRig) -> None:
    ready(pci)
    pci.function.signal_used(0)
    assert pci.intx
    assert pci.driver.cfg_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT
    pci.device.set_link(False)
    assert pci.driver.read_isr() == VIRTIO_PCI_ISR_QUEUE | VIRTIO_PCI_ISR_CONFIG
    assert not pci.intx
    assert not pci.driver.cfg_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT
    assert pci.driver.read_isr() == 0


def test_isr_writes_are_ignored(pci: PciRig) -> None:
    ready(pci)
    pci.function.signal_used(0)
    pci.machine.mmio.write(pci.driver.structure(VIRTIO_PCI_CAP_ISR_CFG), 1, 0)
    assert pci.function.isr == VIRTIO_PCI_ISR_QUEUE and pci.intx


def test_enabling_msix_releases_intx(pci: PciRig) -> None:
    ready(pci)
    pci.function.signal_used(0)
    assert pci.intx
    pci.driver.enable_msix([(0xFEE0_0000, 0x40)])
    assert not pci.intx


def test_intx_only_function(pci_intx_only: PciRig) -> None:
    rig = pci_intx_only
    assert rig.function.msix is None and rig.driver.msix_cap is None
    assert rig.function.caps.find(PCI_CAP_ID_MSIX) is None
    ready(rig)
    rig.driver.write_common("config_msix_vector", 0)
    assert rig.driver.read_common("config_msix_vector") == VIRTIO_MSI_NO_VECTOR
    rig.function.signal_used(1)
    assert rig.intx
    assert rig.driver.read_isr() == VIRTIO_PCI_ISR_QUEUE and not rig.intx


def test_bad_construction(machine: Machine) -> None:
    with pytest.raises(UsageError):
        VirtioPciFunction(EchoDevice(machine.memory), msix_vectors=4096)
    with pytest.raises(UsageError):
        VirtioPciFunction(EchoDevice(machine.memory), bar=5)
    device = EchoDevice(machine.memory)
    VirtioPciFunction(device)
    with pytest.raises(UsageError, match="already attached"):
        VirtioPciFunction(device)


# -- PCI configuration access capability (§4.1.4.9) -----------------------------------------------


def test_spec_4_1_4_9_1_access_window_reads_and_writes_the_bar(pci: PciRig) -> None:
    d = pci.driver
    assert d.cfg_access(18, 2) == 2  # num_queues
    d.cfg_access(20, 1, ACKNOWLEDGE)  # device_status
    assert d.read_status() == ACKNOWLEDGE
    assert d.cfg_access(20, 1) == ACKNOWLEDGE
    notify_base = d.caps[VIRTIO_PCI_CAP_NOTIFY_CFG].cap.offset
    d.cfg_access(notify_base, 2, 0)  # a notification before DRIVER_OK is ignored
    assert d.read_status() == ACKNOWLEDGE


@pytest.mark.parametrize(("bar", "offset", "length"), [(1, 20, 1), (0, 21, 2), (0, 20, 3), (0, 0xFFFF_FFFC, 4), (7, 0, 4)])
def test_hostile_access_window_misuse_is_ignored(pci: PciRig, bar: int, offset: int, length: int) -> None:
    d = pci.driver
    at = d.cap_offsets[VIRTIO_PCI_CAP_PCI_CFG]
    d.cfg_write(at + 4, 1, bar)
    d.cfg_write(at + 8, 4, offset)
    d.cfg_write(at + 12, 4, length)
    d.cfg_write(at + 16, 4, 0xFFFF_FFFF)
    assert d.cfg_read(at + 16, 4) == 0
    assert d.read_status() == 0


# -- notifications ---------------------------------------------------------------------------------


def test_hostile_notify_of_nonexistent_queue(pci: PciRig) -> None:
    ready(pci)
    base = pci.driver.structure(VIRTIO_PCI_CAP_NOTIFY_CFG)
    length = pci.driver.caps[VIRTIO_PCI_CAP_NOTIFY_CFG].cap.length
    pci.machine.mmio.write(base + length, 2, 7)  # just past the notify structure
    pci.machine.mmio.write(base + 0x800, 4, 0xFFFF_FFFF)
    assert pci.machine.mmio.read(base, 2) == 0
    assert pci.driver.read_status() == ADF | DRIVER_OK


# -- reset and snapshots ---------------------------------------------------------------------------


def test_function_reset(pci: PciRig) -> None:
    ready(pci, msix=True)
    pci.function.reset()
    assert pci.device.status == 0 and pci.function.config_vector == VIRTIO_MSI_NO_VECTOR
    assert not pci.function.msix_enabled
    assert pci.function.bar_address(0) is None  # PCI reset clears decode


def test_snapshot_round_trip(pci: PciRig, machine: Machine) -> None:
    ready(pci, msix=True)
    pci.function.signal_used(0)
    state = pci.function.state()
    twin = VirtioPciFunction(EchoDevice(machine.memory, queues=2, queue_size=16, features=RR))
    twin.restore(state)
    assert twin.state() == state
    assert twin.device.live


@pytest.mark.parametrize(
    "change",
    [dict(version=0), dict(config_vector=7), dict(queue_vectors=(1,)), dict(queue_vectors=(1, 9)), dict(isr=4)],
)
def test_snapshot_rejects_bad_transport_fields(pci: PciRig, change: dict[str, object]) -> None:
    ready(pci, msix=True)
    state = pci.function.state()
    with pytest.raises(SnapshotError):
        pci.function.restore(dataclasses.replace(state, **change))  # type: ignore[arg-type]
    assert pci.function.state() == state


def test_snapshot_rejects_a_bad_device_section_without_applying_anything(pci: PciRig) -> None:
    ready(pci)
    state = pci.function.state()
    bad = dataclasses.replace(state, device=dataclasses.replace(state.device, status=0x1FF), isr=0)
    pci.function.signal_used(0)
    before = pci.function.state()
    with pytest.raises(SnapshotError):
        pci.function.restore(bad)
    assert pci.function.state() == before


def test_broken_device_reports_through_error(pci: PciRig) -> None:
    ready(pci)
    pci.device.fail(GuestError("synthetic"))
    assert pci.driver.read_status() & DEVICE_NEEDS_RESET
    assert pci.driver.read_isr() == VIRTIO_PCI_ISR_CONFIG


def test_many_queues_get_a_larger_notify_area(machine: Machine) -> None:
    rig = make_pci(machine, queues=1100, queue_size=4)
    cap = rig.driver.caps[VIRTIO_PCI_CAP_NOTIFY_CFG]
    assert cap.cap.length == 1100 * 4
    assert rig.function.msix is not None and rig.function.msix.vectors == 1101


def test_snapshot_survives_json(pci: PciRig) -> None:
    ready(pci, msix=True)
    state = pci.function.state()
    decoded = from_dict(VirtioPciState, json.loads(json.dumps(to_dict(state))))
    assert decoded == state
    pci.function.restore(decoded)
    assert pci.function.state() == state


def test_spec_2_2_2_features_ok_with_unoffered_bits_over_pci(pci: PciRig) -> None:
    d = pci.driver
    d.reset()
    d.write_status(ACKNOWLEDGE)
    d.write_status(ACKNOWLEDGE | DRIVER)
    d.write_driver_features(V1 | bit(40 + 20))  # bit 60 was never offered
    d.write_status(ADF)
    assert d.read_status() == ACKNOWLEDGE | DRIVER
    d.write_driver_features(V1)  # corrected: accepted on the next attempt
    d.write_status(ADF)
    assert d.read_status() == ADF
