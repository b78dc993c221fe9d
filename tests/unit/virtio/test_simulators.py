"""The driver simulators have no traps (issue 16 item 5): each test is one trap that used to
bite a VMM author, and fails on the code that had it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from devmodels import DevmodelsError, Machine, UsageError
from devmodels.backends import LoopbackBackend, MemoryDiskBackend, NetOffloads
from devmodels.pci import DevFn, Slot
from devmodels.testing import DeviceProtocolError, DriverError
from virtio.blk import VirtioBlkDevice
from virtio.blk.defs import VIRTIO_BLK_S_OK
from virtio.blk.testing import BlkDriver
from virtio.defs import VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1
from virtio.features import feature_mask
from virtio.net import VirtioNetDevice
from virtio.net.testing import NetDriver
from virtio.testing import DirectDriver, FeaturesRefused, TransportDriver, bring_up, negotiate
from virtio.transport import VirtioMmioDevice, VirtioPciFunction
from virtio.transport.testing import EchoDevice, MmioDriver, PciDriver

MMIO_BASE = 0xD000_0000


@pytest.fixture
def machine():
    with Machine(ram_size=32 << 20, ram_backing="bytearray") as m:
        yield m


def _blk_pci(machine: Machine, **kwargs) -> tuple[VirtioPciFunction, Slot]:
    function = VirtioPciFunction(VirtioBlkDevice(machine.memory, MemoryDiskBackend(1 << 20), **kwargs))
    slot = machine.add_pci(function)
    machine.enumerate()
    return function, slot


# -- devfn and slot ---------------------------------------------------------------------------


def test_the_slot_add_pci_returns_can_be_passed_on(machine):
    function, slot = _blk_pci(machine)
    assert isinstance(slot, Slot) and slot == 1 and slot.devfn == 8
    driver = PciDriver(machine, slot)  # was: AssertionError "capability type 1 missing"
    assert driver.devfn == DevFn(8)
    assert PciDriver(machine, slot << 3).devfn == 8
    assert PciDriver.for_function(machine, function).devfn == machine.devfn_of(function) == 8
    assert machine.config_read(0, slot, 0, 2) == machine.config_read(0, slot.devfn, 0, 2) == 0x1AF4


def test_a_devfn_with_no_function_is_a_usage_error_that_explains(machine):
    _blk_pci(machine)
    with pytest.raises(UsageError, match=r"no PCI function at 00:00\.1 .*add_pci returns a Slot"):
        PciDriver(machine, 1)  # the slot number as a plain int: slot 0 function 1


def test_a_function_that_is_not_virtio_is_a_usage_error(machine):
    _blk_pci(machine)
    with pytest.raises(UsageError, match="not a virtio device"):
        PciDriver(machine, 0)  # the host bridge


def test_unassigned_bars_are_a_usage_error_not_writes_into_ram(machine):
    function = VirtioPciFunction(VirtioBlkDevice(machine.memory, MemoryDiskBackend(1 << 20)))
    slot = machine.add_pci(function)
    with pytest.raises(UsageError, match="enumerate"):
        PciDriver(machine, slot)


def test_the_checks_survive_python_dash_O():
    program = textwrap.dedent("""
        from devmodels import Machine, UsageError
        from devmodels.backends import MemoryDiskBackend
        from virtio.blk import VirtioBlkDevice
        from virtio.transport import VirtioPciFunction
        from virtio.transport.testing import PciDriver
        m = Machine(ram_size=16 << 20, ram_backing="bytearray")
        m.add_pci(VirtioPciFunction(VirtioBlkDevice(m.memory, MemoryDiskBackend(1 << 20))))
        m.enumerate()
        try:
            PciDriver(m, 1)
        except UsageError as exc:
            print("UsageError", exc)
    """)
    out = subprocess.run([sys.executable, "-O", "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith("UsageError no PCI function"), out.stdout + out.stderr


def test_slot_and_devfn_check_their_range():
    with pytest.raises(UsageError):
        Slot(32)
    with pytest.raises(UsageError):
        DevFn(256)
    with pytest.raises(UsageError):
        DevFn.of(1, 8)
    assert DevFn.of(3, 2) == 26 and DevFn(26).slot == 3 and DevFn(26).function == 2
    assert Slot(3).function(2) == 26
    # They format as the numbers they are (QEMU command lines, JSON), and repr says what they are.
    assert (f"{Slot(3)}", str(DevFn(26)), f"{DevFn(26):#x}") == ("3", "26", "0x1a")
    assert (repr(Slot(3)), repr(DevFn(26))) == ("Slot(0x03)", "DevFn(03.2)")


# -- features ------------------------------------------------------------------------------


def test_feature_mask_builds_masks_from_bit_numbers():
    assert feature_mask(VIRTIO_F_VERSION_1, VIRTIO_F_RING_PACKED) == 1 << 32 | 1 << 34
    assert feature_mask() == 0
    with pytest.raises(UsageError):
        feature_mask(128)


def test_negotiate_raises_with_the_devices_reason(machine):
    function, slot = _blk_pci(machine)
    driver = PciDriver(machine, slot)
    with pytest.raises(FeaturesRefused, match="VIRTIO_F_VERSION_1") as refused:
        driver.negotiate(0)  # was: returned None
    assert "no legacy interface" in refused.value.reason
    assert isinstance(refused.value, DriverError)


def test_a_bit_number_passed_as_a_mask_gets_a_hint(machine):
    _, slot = _blk_pci(machine)
    with pytest.raises(FeaturesRefused, match="bit numbers.*feature_mask"):
        PciDriver(machine, slot).negotiate(VIRTIO_F_RING_PACKED)


def test_try_negotiate_returns_none_on_refusal(machine):
    _, slot = _blk_pci(machine)
    driver = PciDriver(machine, slot)
    assert driver.try_negotiate(0) is None
    assert driver.try_negotiate(feature_mask(VIRTIO_F_VERSION_1)) == 1 << VIRTIO_F_VERSION_1


def test_negotiate_over_the_device_directly_says_why():
    with Machine(ram_size=16 << 20, ram_backing="bytearray") as m:
        device = VirtioNetDevice(m.memory, LoopbackBackend.pair(offloads=NetOffloads(csum=True, tso4=True))[0])
        with pytest.raises(FeaturesRefused, match="needs"):
            negotiate(device, device.features.offered & ~(1 << 1))  # GUEST_CSUM away, GUEST_TSO4 kept


# -- virtio-blk over any transport ----------------------------------------------------------


def _round_trip(blk: BlkDriver) -> None:
    data = bytes(range(256)) * 4
    assert blk.write(8, data).status == VIRTIO_BLK_S_OK
    result = blk.read(8, 2)
    assert result.status == VIRTIO_BLK_S_OK and result.data == data


@pytest.mark.parametrize("packed", [False, True])
def test_blk_driver_over_virtio_pci(machine, packed):
    function, _ = _blk_pci(machine, packed=packed)
    transport = PciDriver.for_function(machine, function)
    blk = BlkDriver(transport, accept=None if packed else ~feature_mask(VIRTIO_F_RING_PACKED))
    assert bool(transport.negotiated >> VIRTIO_F_RING_PACKED & 1) == packed
    _round_trip(blk)
    assert function.device.stats.writes == 1 and function.device.stats.reads == 1


def test_blk_driver_over_virtio_mmio(machine):
    device = VirtioBlkDevice(machine.memory, MemoryDiskBackend(1 << 20))
    transport = VirtioMmioDevice(device, machine.irq.line(5).source())
    machine.mmio.register(MMIO_BASE, transport.size, transport, "virtio-mmio")
    _round_trip(BlkDriver(MmioDriver(machine, MMIO_BASE, served=transport)))


def test_blk_driver_directly_on_the_device(machine):
    device = VirtioBlkDevice(machine.memory, MemoryDiskBackend(1 << 20))
    blk = BlkDriver(device)
    assert isinstance(blk.transport, DirectDriver)
    _round_trip(blk)


def test_blk_driver_completes_what_a_threaded_backend_finishes_later(machine, tmp_path):
    from devmodels.backends import RawFileBackend

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    with RawFileBackend(image, workers=2) as backend:
        function = VirtioPciFunction(VirtioBlkDevice(machine.memory, backend))
        machine.add_pci(function)
        machine.enumerate()
        _round_trip(BlkDriver(PciDriver.for_function(machine, function)))


def test_net_driver_over_virtio_pci(machine):
    ours, theirs = LoopbackBackend.pair()
    function = VirtioPciFunction(VirtioNetDevice(machine.memory, ours))
    machine.add_pci(function)
    machine.enumerate()
    net = NetDriver(PciDriver.for_function(machine, function))
    frame = b"\xff" * 6 + b"\x52\x54\x00\x12\x34\x57" + b"\x08\x00" + bytes(50)
    net.send(frame)
    assert theirs.receive() == [frame]
    theirs.send(frame)
    function.device.poll_rx()
    assert [p.frame for p in net.received()] == [frame]


def test_bring_up_over_pci_returns_a_ring_per_queue(machine):
    function = VirtioPciFunction(EchoDevice(machine.memory, queues=3, queue_size=16))
    machine.add_pci(function)
    machine.enumerate()
    rings = bring_up(PciDriver.for_function(machine, function))
    assert [r.size for r in rings] == [16, 16, 16]


# -- errors ------------------------------------------------------------------------------------


def test_driver_errors_are_not_assertion_errors():
    for error in (DriverError, DeviceProtocolError, FeaturesRefused):
        assert not issubclass(error, AssertionError)
        assert issubclass(error, DevmodelsError)
    from devmodels.ahci.testing import DriverTimeout
    from devmodels.e1000.testing import DriverError as E1000DriverError
    from virtio.testing import DeviceProtocolError as VirtioDeviceProtocolError

    assert issubclass(E1000DriverError, DriverError) and not issubclass(E1000DriverError, AssertionError)
    assert issubclass(DriverTimeout, DriverError)
    assert VirtioDeviceProtocolError is DeviceProtocolError


def test_a_device_that_does_not_reset_is_a_driver_error():
    class Stuck(TransportDriver):
        memory = None  # type: ignore[assignment]

        def read_status(self) -> int:
            return 1

        def write_status(self, value: int) -> None:
            pass

        def device_features(self) -> int:
            return 0

        def write_driver_features(self, features: int) -> None:
            pass

        def num_queues(self) -> int:
            return 0

        def queue_max_size(self, index: int) -> int:
            return 0

        def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int) -> bool:
            return False

        def notify(self, index: int) -> None:
            pass

        def read_config(self, offset: int, size: int) -> int:
            return 0

        def write_config(self, offset: int, size: int, value: int) -> None:
            pass

    with pytest.raises(DriverError, match="did not complete its reset"):
        Stuck().negotiate()


def test_mmio_driver_on_an_empty_window_is_a_usage_error(machine):
    with pytest.raises(UsageError, match="MagicValue"):
        MmioDriver(machine, MMIO_BASE)
