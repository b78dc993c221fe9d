"""Properties of the virtio status machine and of both transports under random guest input.

- Every (status, written value) pair: ``transition`` never raises and never lets a driver
  clear a bit; illegal writes land in DEVICE_NEEDS_RESET (VIRTIO 1.2 §2.1).
- Random sequences of register accesses (plus a few well-formed initialization steps so
  the device actually goes live, and random guest RAM under the rings) never raise out of
  the PCI or MMIO transport, and leave the device in an architected state.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels import GuestMemoryError, Machine, UsageError
from virtio.defs import (
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FAILED,
    FEATURES_OK,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
    VIRTIO_MSI_NO_VECTOR,
)
from virtio.features import bit
from virtio.status import DRIVER_BITS, StatusEffect, transition
from virtio.transport import VirtioMmioDevice, VirtioPciFunction
from virtio.testing import DeviceProtocolError, SplitDriver
from virtio.transport.testing import ECHO_F_XOR, EchoDevice, MmioDriver, PciDriver, TransportDriver

ALL_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_RESET) | bit(ECHO_F_XOR)
OFFERED = bit(VIRTIO_F_RING_RESET) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC)
RAM = 1 << 20


@settings(max_examples=300, deadline=None)
@given(status=st.integers(0, 0xFF), written=st.integers(-(1 << 70), 1 << 70) | st.integers(0, 0x1FF))
def test_transition_is_total_and_never_clears_a_bit(status: int, written: int) -> None:
    effect, after = transition(status, written)
    assert 0 <= after <= 0xFF
    if effect is StatusEffect.RESET:
        assert written == 0 and after == 0
        return
    assert after & status == status, "a driver write cleared a status bit"
    if effect is StatusEffect.ILLEGAL:
        assert after == status | DEVICE_NEEDS_RESET
    elif effect is StatusEffect.FAIL:
        assert after == status | FAILED
    else:
        assert after & DRIVER_BITS == written & DRIVER_BITS
        assert bin((after ^ status) & DRIVER_BITS).count("1") <= 1
    if effect is StatusEffect.ACTIVATE:
        assert after & FEATURES_OK and after & DRIVER_OK


def _check_architected(device: EchoDevice) -> None:
    status = device.status
    assert 0 <= status <= 0xFF
    if status & DRIVER_OK and not status & (FAILED | DEVICE_NEEDS_RESET):
        assert status & FEATURES_OK and status & DRIVER and status & ACKNOWLEDGE
    if status & FEATURES_OK:
        assert device.negotiated & bit(VIRTIO_F_VERSION_1)
        assert device.negotiated & ~device.features.offered == 0
    for index, maximum in enumerate(device.max_sizes):
        size = device.queue_size(index)
        assert 1 <= size <= maximum
        assert size & (size - 1) == 0  # split rings only here
    assert device.pending <= set(range(device.num_queues))


# One op: (kind, a, b, c). Kinds cover raw accesses anywhere in the window and the
# well-formed steps a driver takes, so random sequences do reach a live device.
_ops = st.lists(
    st.tuples(
        st.sampled_from(["read", "write", "init", "queue", "ok", "notify", "ram", "cfg_read", "cfg_write", "io", "io", "reap"]),
        st.integers(0, 1 << 16),
        st.sampled_from([1, 2, 4, 8]),
        st.integers(0, (1 << 64) - 1),
    ),
    max_size=40,
)


# A well-formed start (negotiate everything, both queues of size 8 laid out by the ring
# simulator, DRIVER_OK) so that half of the examples exercise a live device doing I/O.
_PRELUDE = [("init", 0, 8, ALL_FEATURES), ("ring", 0, 8, 0), ("ring", 1, 8, 0), ("ok", 0, 1, 0)]


def _rings(memory: Any) -> list[SplitDriver]:
    return [SplitDriver(memory, 8, base=0x8_0000 + 0x2_0000 * q, data_size=0x1_0000) for q in range(2)]


def _driver_op(driver: TransportDriver, rings: list[SplitDriver], kind: str, a: int, size: int, value: int) -> bool:
    """The ring-level ops; returns whether ``kind`` was one. Simulator complaints are the
    (random) guest's problem, not the device's, so they are swallowed here; the device is
    only ever reached through ``driver.notify`` outside the ``try``."""
    ring = rings[a % 2]
    if kind == "ring":
        layout = ring.layout
        driver.setup_queue(a % 2, 8, layout.desc_addr, layout.driver_addr, layout.device_addr)
    elif kind == "io":
        try:
            ring.add([value.to_bytes(8, "little")[: 1 + a % 8]], [1 + size * 4], indirect=bool(a & 4))
            ring.kick()
        except (UsageError, GuestMemoryError):
            pass
        driver.notify(a % 2)
    elif kind == "reap":
        try:
            ring.reap()
        except (DeviceProtocolError, UsageError, GuestMemoryError):
            pass
    else:
        return False
    return True


def _ring_addresses(seed: int, queue: int) -> tuple[int, int, int]:
    # Usually sane, sometimes misaligned or outside RAM.
    base = (seed * 0x1000 + queue * 0x3000) % (RAM + 0x4000)
    skew = seed % 7 if seed % 5 == 0 else 0
    return base + skew, base + 0x1000, base + 0x2000 - skew


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, msix=st.booleans(), prelude=st.booleans())
def test_pci_random_register_sequences_never_raise(ops: list[tuple[str, int, int, int]], msix: bool, prelude: bool) -> None:
    with Machine(ram_size=RAM, ram_backing="bytearray") as machine:
        device = EchoDevice(machine.memory, queues=2, queue_size=8, features=OFFERED)
        function = VirtioPciFunction(device, msix_vectors=None if msix else 0)
        slot = machine.add_pci(function)
        machine.enumerate()
        driver = PciDriver(machine, slot << 3)
        bar = driver.bar_address(0)
        rings = _rings(machine.memory)
        if prelude:
            ops = _PRELUDE + ops
        for kind, a, size, value in ops:
            if not _driver_op(driver, rings, kind, a, size, value):
                _pci_op(driver, machine, bar, function.bar_size, kind, a, size, value)
            _check_architected(device)
            assert function.config_vector == VIRTIO_MSI_NO_VECTOR or function.config_vector < 3
            assert all(v == VIRTIO_MSI_NO_VECTOR or v < 3 for v in function.queue_vectors)
            assert function.isr <= 3


def _pci_op(driver: PciDriver, machine: Machine, bar: int, bar_size: int, kind: str, a: int, size: int, value: int) -> None:
    value &= (1 << (8 * size)) - 1
    if kind == "read":
        machine.mmio.read(bar + (a % bar_size) // size * size, size)
    elif kind == "write":
        machine.mmio.write(bar + (a % bar_size) // size * size, size, value)
    elif kind == "cfg_read":
        driver.cfg_read(a % 256 // min(size, 4) * min(size, 4), min(size, 4))
    elif kind == "cfg_write":
        offset = a % 256 // min(size, 4) * min(size, 4)
        if offset >= 0x40:  # keep BARs and Command so the BAR stays where the test reads it
            driver.cfg_write(offset, min(size, 4), value)
    elif kind == "init":
        driver.try_negotiate(ALL_FEATURES & value)
    elif kind == "queue":
        driver.setup_queue(a % 3, 1 << (value % 4), *_ring_addresses(a, a % 3), vector=(value >> 2) % 4)
    elif kind == "ok":
        driver.driver_ok()
    elif kind == "notify":
        driver.notify(a % 3)
    elif kind == "ram":
        machine.memory.write(a * 16 % (RAM - 8), value.to_bytes(8, "little"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, prelude=st.booleans())
def test_mmio_random_register_sequences_never_raise(ops: list[tuple[str, int, int, int]], prelude: bool) -> None:
    base = 0xD000_0000
    with Machine(ram_size=RAM, ram_backing="bytearray") as machine:
        device = EchoDevice(machine.memory, queues=2, queue_size=8, features=OFFERED)
        transport = VirtioMmioDevice(device, machine.irq.line(5).source())
        machine.mmio.register(base, transport.size, transport)
        driver = MmioDriver(machine, base)
        rings = _rings(machine.memory)
        if prelude:
            ops = _PRELUDE + ops
        for kind, a, size, value in ops:
            if not _driver_op(driver, rings, kind, a, size, value):
                _mmio_op(driver, machine, base, transport.size, kind, a, size, value)
            _check_architected(device)
            assert transport.interrupt_status <= 3
            assert machine.irq.levels.get(5, False) == bool(transport.interrupt_status)


def _mmio_op(driver: MmioDriver, machine: Machine, base: int, window: int, kind: str, a: int, size: int, value: int) -> Any:
    value &= (1 << (8 * size)) - 1
    if kind in ("read", "cfg_read"):
        machine.mmio.read(base + (a % window) // size * size, size)
    elif kind in ("write", "cfg_write"):
        machine.mmio.write(base + (a % window) // size * size, size, value)
    elif kind == "init":
        driver.try_negotiate(ALL_FEATURES & value)
    elif kind == "queue":
        driver.setup_queue(a % 3, 1 << (value % 4), *_ring_addresses(a, a % 3))
    elif kind == "ok":
        driver.driver_ok()
    elif kind == "notify":
        driver.notify(a % 3 if value % 2 else value)
    elif kind == "ram":
        machine.memory.write(a * 16 % (RAM - 8), value.to_bytes(8, "little"))
