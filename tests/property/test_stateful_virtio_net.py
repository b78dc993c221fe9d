"""Stateful model test of virtio-net (VIRTIO 1.2 §5.1) as a guest and a peer use it over time.

A ``RuleBasedStateMachine`` has the peer send frames to the guest's MAC, to another MAC
and to broadcast, the guest transmit frames cut into random pieces, the driver switch
promiscuous mode through the control queue, the VMM poll the wire, and the device reset
and round-trip snapshots through plain data; rings are split or packed, with or without
mergeable receive buffers, on either ring implementation. The model: every frame the
guest transmits reaches the peer unchanged and in order, its buffer coming back with
length 0; the guest receives, unchanged and in order, exactly the frames the receive
filter accepts (its own MAC and broadcast always, others only in promiscuous mode, which
a reset turns back on); nothing is dropped while buffers are posted; and a working device
stays out of DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from devmodels import GuestMemory, MemoryRegion, from_dict, to_dict
from devmodels.backends import LoopbackBackend
from devmodels.backends.net import ethernet_frame, parse_mac
from virtio.defs import DEVICE_NEEDS_RESET, DRIVER_OK, VIRTIO_F_RING_PACKED
from virtio.net import VirtioNetDevice
from virtio.net.defs import VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_OK
from virtio.net.testing import NetDriver
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS

GUEST = parse_mac("52:54:00:12:34:56")
PEER = parse_mac("02:00:00:00:00:fe")
OTHER = parse_mac("02:00:00:00:00:77")
BROADCAST = b"\xff" * 6
DESTINATIONS = {"guest": GUEST, "other": OTHER, "broadcast": BROADCAST}
RAM = 8 << 20
IN_FLIGHT = 24  # frames the peer may have outstanding (below the wire's capacity and rx_hold)


class VirtioNetModel(RuleBasedStateMachine):
    """A virtio-net device on a loopback wire, its driver and the peer, against the filter model."""

    @initialize(packed=st.booleans(), mergeable=st.booleans(), ring=st.sampled_from(sorted(IMPLEMENTATIONS)))
    def plug(self, packed: bool, mergeable: bool, ring: str) -> None:
        self.memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
        self.ours, self.peer = LoopbackBackend.pair(capacity=256)
        implementation = IMPLEMENTATIONS[ring]
        self.device = VirtioNetDevice(
            self.memory, self.ours, mac=GUEST, queue_size=64, mtu=None,
            queue_factory=lambda size, p: Virtqueue(size, packed=p, ring=implementation),
        )
        self.accept = self.device.features.offered
        if not packed:
            self.accept &= ~(1 << VIRTIO_F_RING_PACKED)
        if not mergeable:
            self.accept &= ~(1 << VIRTIO_NET_F_MRG_RXBUF)
        self.sequence = 0
        self._bring_up()

    def _bring_up(self) -> None:
        self.driver = NetDriver(self.device, accept=self.accept, rx_buffers=8, data_size=1 << 20)
        self.promisc = True  # the device's state after reset (RxFilter.reset)
        self.expected_rx: list[bytes] = []

    def teardown(self) -> None:
        if hasattr(self, "memory"):
            self.ours.close()
            self.peer.close()
            self.memory.close()

    def _payload(self, size: int) -> bytes:
        self.sequence += 1
        return self.sequence.to_bytes(4, "little") + bytes((self.sequence + i) & 0xFF for i in range(size))

    def _deliver(self) -> None:
        """The VMM polls the wire and the driver reaps (and reposts) until nothing moves."""
        for _ in range(64):
            if self.device.wants_rx:
                self.device.poll_rx(64)
            got = [packet.frame for packet in self.driver.received()]
            for frame in got:
                assert self.expected_rx, "a frame the filter should have refused, or one never sent"
                assert frame == self.expected_rx.pop(0), "frames arrive unchanged and in order"
            if not got and not self.ours.pending and not self.device.held:
                return
        raise AssertionError("receive never went quiet")

    # -- rules -------------------------------------------------------------------------------

    @rule(dest=st.sampled_from(sorted(DESTINATIONS)), size=st.integers(0, 1496))
    def peer_sends(self, dest: str, size: int) -> None:
        if len(self.expected_rx) + self.ours.pending >= IN_FLIGHT:
            self._deliver()
        frame = ethernet_frame(DESTINATIONS[dest], PEER, 0x88B5, self._payload(size))
        assert self.peer.send(frame)
        if dest != "other" or self.promisc:
            self.expected_rx.append(frame)

    @rule()
    def deliver(self) -> None:
        self._deliver()
        assert self.expected_rx == []

    @rule(size=st.integers(0, 1496), split=st.lists(st.integers(1, 64), max_size=3), indirect=st.booleans())
    def guest_sends(self, size: int, split: list[int], indirect: bool) -> None:
        frame = ethernet_frame(PEER, GUEST, 0x88B5, self._payload(size))
        self.driver.send(frame, split=split, indirect=indirect)
        assert self.driver.reap_tx() == [0]
        assert self.peer.receive(8) == [frame]

    @rule(on=st.booleans())
    def set_promisc(self, on: bool) -> None:
        self._deliver()  # frames already on the wire were judged by the old setting
        assert self.driver.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, bytes([on])) == VIRTIO_NET_OK
        self.promisc = on

    @rule()
    def reset_device(self) -> None:
        self._deliver()
        self.device.write_status(0)
        self._bring_up()

    @rule()
    def snapshot(self) -> None:
        self._deliver()
        self.device.quiesce()  # the snapshot contract: quiesce(), then state()
        before = self.device.state()
        self.device.restore(from_dict(self.device.state_type, to_dict(before)))
        assert self.device.state() == before

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def device_is_live(self) -> None:
        if hasattr(self, "device"):
            assert self.device.status & DRIVER_OK and not self.device.status & DEVICE_NEEDS_RESET, self.device.error

    @invariant()
    def nothing_is_dropped(self) -> None:
        if hasattr(self, "device"):
            assert self.device.stats.rx_dropped == 0 and self.ours.dropped == 0 and self.device.stats.tx_dropped == 0


VirtioNetModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestVirtioNet = VirtioNetModel.TestCase
