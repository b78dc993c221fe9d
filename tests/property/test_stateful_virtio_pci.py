"""Stateful model test of a virtio device behind the modern PCI transport, as a guest drives it.

The device is the echo device (``virtio.transport.testing.EchoDevice``); the driver is
``PciDriver`` plus the ring simulators of ``virtio.testing``, so every step goes through
config cycles, BAR accesses and guest RAM. A ``RuleBasedStateMachine`` negotiates feature
subsets (split or packed rings, EVENT_IDX, INDIRECT_DESC, IN_ORDER, RING_RESET, the echo's
XOR), echoes buffers on two queues, rewrites the XOR key, resets single queues and the
device, switches MSI-X on, scribbles on the common configuration and round-trips
snapshots. The model: every buffer comes back once with its bytes XORed by the key and
truncated to the writable space, a notification is raised for it (the ISR bit, INTx, or
the MSI-X vector of its queue), reading the ISR clears it, and a working device stays out
of DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devmodels import Machine, from_dict, to_dict
from devmodels.pci import defs as pci
from virtio.defs import (
    DEVICE_NEEDS_RESET,
    DRIVER_OK,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
)
from virtio.testing import make_driver
from virtio.transport import VirtioPciFunction, VirtioPciState
from virtio.transport.testing import ECHO_F_XOR, EchoDevice, PciDriver

RAM = 1 << 20
OPTIONAL = [VIRTIO_F_RING_PACKED, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_RESET, ECHO_F_XOR]
MSI_ADDRESS = 0xFEE0_0000


class VirtioPciModel(RuleBasedStateMachine):
    """An echo device on bus 0 and a guest driver, against a model of what the driver sees."""

    @initialize()
    def plug(self) -> None:
        self.machine = Machine(ram_size=RAM, ram_backing="bytearray")
        offered = sum(1 << b for b in OPTIONAL if b != ECHO_F_XOR)
        self.device = EchoDevice(self.machine.memory, queues=2, queue_size=16, features=offered, max_len=256)
        self.function = VirtioPciFunction(self.device)
        self.devfn = self.machine.add_pci(self.function) << 3
        info = next(i for i in self.machine.enumerate() if i.devfn == self.devfn)
        self.gsi = info.interrupt_line
        self.bars = [(b.index, b.address) for b in info.bars if b.address is not None]
        self._enable()
        self.driver = PciDriver(self.machine, self.devfn)
        self.ready = False
        self.msix = False
        self.features = 0
        self.key = 0
        self.rings: list[Any] = []

    def _enable(self) -> None:
        for index, address in self.bars:
            self.machine.config_write(0, self.devfn, pci.PCI_BASE_ADDRESS_0 + 4 * index, 4, address & 0xFFFF_FFFF)
            self.machine.config_write(0, self.devfn, pci.PCI_BASE_ADDRESS_0 + 4 * index + 4, 4, address >> 32)
        self.machine.config_write(0, self.devfn, pci.PCI_COMMAND, 2, pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER)

    def teardown(self) -> None:
        if hasattr(self, "machine"):
            self.machine.close()

    def _ring(self, index: int) -> Any:
        return make_driver(
            self.machine.memory, 8, packed=bool(self.features >> VIRTIO_F_RING_PACKED & 1),
            base=0x10000 + 0x20000 * index, data_size=0x8000,
            event_idx=bool(self.features >> VIRTIO_F_EVENT_IDX & 1), in_order=bool(self.features >> VIRTIO_F_IN_ORDER & 1),
        )

    def _setup(self, index: int) -> None:
        ring = self._ring(index)
        layout = ring.layout
        vector = index + 1 if self.msix else None
        assert self.driver.setup_queue(index, 8, layout.desc_addr, layout.driver_addr, layout.device_addr, vector=vector)
        self.rings[index] = ring

    # -- rules -------------------------------------------------------------------------------

    @precondition(lambda self: not self.ready)
    @rule(wanted=st.sets(st.sampled_from(OPTIONAL)))
    def initialize_device(self, wanted: set[int]) -> None:
        accepted = self.driver.negotiate(sum(1 << b for b in wanted) | 1 << VIRTIO_F_VERSION_1)
        assert accepted is not None
        self.features = accepted
        if self.msix:
            self.driver.write_common("config_msix_vector", 0)
        self.rings = [None, None]
        for index in range(2):
            self._setup(index)
        self.driver.driver_ok()
        self.key = 0
        self.ready = True

    @precondition(lambda self: self.ready)
    @rule(queue=st.integers(0, 1), data=st.binary(min_size=1, max_size=300), space=st.lists(st.integers(1, 128), min_size=1, max_size=3),
          indirect=st.booleans())
    def echo(self, queue: int, data: bytes, space: list[int], indirect: bool) -> None:
        ring = self.rings[queue]
        ring.set_interrupts(True)
        indirect = indirect and bool(self.features >> VIRTIO_F_INDIRECT_DESC & 1)
        ring.add([data], space, indirect=indirect)
        if ring.kick():
            self.driver.notify(queue)
        used = ring.reap()
        assert len(used) == 1
        expected = bytes(b ^ self.key for b in data[:256])[: sum(space)]
        assert used[0].written == len(expected)
        assert used[0].read(self.machine.memory) == expected
        if self.msix:
            assert self.machine.irq.msi[-1].data == 0x40 + queue + 1
        else:
            assert self.machine.irq.levels.get(self.gsi, False)
            assert self.driver.read_isr() & 1
            assert self.driver.read_isr() == 0
            assert not self.machine.irq.levels.get(self.gsi, False)

    @precondition(lambda self: self.ready and self.features >> ECHO_F_XOR & 1)
    @rule(key=st.integers(0, 255))
    def set_key(self, key: int) -> None:
        self.driver.write_config(4, 1, key)
        self.key = key
        assert self.driver.read_config(4, 1) == key

    @precondition(lambda self: self.ready and self.features >> VIRTIO_F_RING_RESET & 1)
    @rule(queue=st.integers(0, 1))
    def reset_queue(self, queue: int) -> None:
        self.driver.write_common("queue_select", queue)
        self.driver.write_common("queue_reset", 1)
        assert self.driver.read_common("queue_reset") == 0
        assert self.driver.read_common("queue_enable") == 0
        self._setup(queue)

    @rule()
    def reset_device(self) -> None:
        self.driver.reset()
        self.ready = False

    @precondition(lambda self: not self.ready and not self.msix)
    @rule()
    def enable_msix(self) -> None:
        self.driver.enable_msix([(MSI_ADDRESS, 0x40 + n) for n in range(3)])
        self.msix = True

    @rule(field=st.sampled_from(["device_status", "queue_select", "queue_size", "queue_enable", "queue_msix_vector",
                                 "driver_feature", "queue_desc", "config_msix_vector"]),
          value=st.integers(0, 0xFFFF_FFFF))
    def scribble(self, field: str, value: int) -> None:
        self.driver.write_common(field, value)
        self.ready = False  # the driver must start over (§3.1.1); the device must not fall over

    @rule()
    def snapshot(self) -> None:
        before = self.function.state()
        rebuilt = from_dict(VirtioPciState, to_dict(before))
        assert to_dict(rebuilt) == to_dict(before)
        self.function.restore(rebuilt)
        assert to_dict(self.function.state()) == to_dict(before)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def working_device_is_live(self) -> None:
        if hasattr(self, "machine") and self.ready:
            status = self.driver.read_status()
            assert status & DRIVER_OK and not status & DEVICE_NEEDS_RESET


VirtioPciModel.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestVirtioPci = VirtioPciModel.TestCase
