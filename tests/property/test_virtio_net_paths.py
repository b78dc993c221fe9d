"""Properties of virtio-net under random traffic, buffers and commands.

- Receive: whatever frames arrive and whatever buffers the driver posts (sizes, splits,
  MRG_RXBUF or not), every frame delivered is byte-identical to one sent, in order; a
  frame is lost only when counted (filtered or dropped); the device holds at most
  ``rx_hold`` frames; nothing raises.
- Transmit: random chains (lengths, splits, addresses in and out of RAM) all come back with
  length 0; exactly the well-formed ones reach the backend, unchanged.
- Control: random command bytes never raise and are acked OK or ERR.
- Python and Cython rings behave the same (the tests draw the implementation).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels import GuestMemory, MemoryRegion
from devmodels.backends import LoopbackBackend
from devmodels.backends.net import ethernet_frame, parse_mac
from virtio.defs import VIRTIO_F_RING_PACKED
from virtio.net import VirtioNetDevice
from virtio.net.defs import VIRTIO_NET_ERR, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_SIZE, VIRTIO_NET_OK
from virtio.net.testing import NetDriver
from virtio.queue import Virtqueue
from virtio.queue.ring import IMPLEMENTATIONS

GUEST = parse_mac("52:54:00:12:34:56")
PEER = parse_mac("02:00:00:00:00:fe")
RAM = 8 << 20
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _make(ring: str, packed: bool, mergeable: bool, **kwargs):
    memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
    ours, theirs = LoopbackBackend.pair(capacity=1024)
    device = VirtioNetDevice(memory, ours, queue_size=32, mtu=None,
                             queue_factory=lambda size, p: Virtqueue(size, packed=p, ring=IMPLEMENTATIONS[ring]),
                             **kwargs)
    accept = device.features.offered
    if not packed:
        accept &= ~(1 << VIRTIO_F_RING_PACKED)
    if not mergeable:
        accept &= ~(1 << VIRTIO_NET_F_MRG_RXBUF)
    return device, ours, theirs


rx_step = st.one_of(
    st.tuples(st.just("frame"), st.integers(0, 1500)),
    st.tuples(st.just("post"), st.integers(1, 6), st.integers(12, 2048), st.sampled_from([0, 7, 100])),
    st.tuples(st.just("poll"), st.integers(1, 64)),
)


@SETTINGS
@given(steps=st.lists(rx_step, max_size=30), packed=st.booleans(), mergeable=st.booleans(),
       ring=st.sampled_from(sorted(IMPLEMENTATIONS)), hold=st.integers(1, 8))
def test_received_frames_arrive_intact_in_order_or_are_counted(steps, packed, mergeable, ring, hold):
    device, ours, theirs = _make(ring, packed, mergeable, rx_hold=hold)
    accept = device.features.offered & ~(0 if packed else 1 << VIRTIO_F_RING_PACKED)
    if not mergeable:
        accept &= ~(1 << VIRTIO_NET_F_MRG_RXBUF)
    driver = NetDriver(device, accept=accept, rx_buffers=0, data_size=1 << 20)
    sent: list[bytes] = []
    got: list[bytes] = []
    for number, step in enumerate(steps):
        if step[0] == "frame":
            frame = ethernet_frame(GUEST, PEER, 0x88B5, bytes([number & 0xFF]) * step[1])
            theirs.send(frame)
            sent.append(frame)
        elif step[0] == "post":
            _, count, size, split = step
            ring0 = driver.rings[0]
            pieces = 1 if not split else -(-size // split)
            if ring0.packed:
                count = min(count, ring0.free_descs // pieces, len(ring0.free_ids))
            else:
                count = min(count, len(ring0.free) // pieces)
            if count > 0:
                driver.post_rx(0, count, size=size, split=split)
        elif device.wants_rx:
            device.poll_rx(step[1])
        assert device.held <= hold
        got += [p.frame for p in driver.received(repost=False)]
    lost = device.stats.rx_dropped + device.stats.rx_filtered + ours.dropped
    it = iter(sent)
    for frame in got:
        assert any(frame == candidate for candidate in it), "delivered frames are sent frames, in order"
    assert len(got) + lost + device.held + ours.pending >= len(sent) - 0
    assert len(got) <= len(sent)


tx_chain = st.one_of(
    st.tuples(st.just("ok"), st.integers(14, 3000), st.lists(st.integers(1, 64), max_size=3)),
    st.tuples(st.just("short"), st.integers(0, 11)),
    st.tuples(st.just("raw"), st.integers(0, 2 * RAM), st.integers(0, 0x10020)),
)


@SETTINGS
@given(chains=st.lists(tx_chain, min_size=1, max_size=10), packed=st.booleans(),
       ring=st.sampled_from(sorted(IMPLEMENTATIONS)))
def test_transmit_chains_come_back_empty_and_only_good_frames_are_sent(chains, packed, ring):
    device, ours, theirs = _make(ring, packed, True)
    accept = device.features.offered & ~(0 if packed else 1 << VIRTIO_F_RING_PACKED)
    driver = NetDriver(device, accept=accept, data_size=1 << 20)
    expected = []
    for number, chain in enumerate(chains):
        if chain[0] == "ok":
            frame = ethernet_frame(PEER, GUEST, 0x88B5, bytes([number]) * (chain[1] - 14))
            driver.send(frame, split=chain[2])
            expected.append(frame)
        elif chain[0] == "short":
            driver.send(b"", raw=[bytes(chain[1])] if chain[1] else [(0x1000, 0)])
        else:
            gpa, length = chain[1], chain[2]
            driver.send(b"", raw=[(gpa, length)])
            if length >= VIRTIO_NET_HDR_SIZE + 14 and length <= 0x10000 + VIRTIO_NET_HDR_SIZE and gpa + length <= RAM:
                header = device.memory.read(gpa, VIRTIO_NET_HDR_SIZE)
                body = device.memory.read(gpa + VIRTIO_NET_HDR_SIZE, length - VIRTIO_NET_HDR_SIZE)
                # Read after the device: a buffer over a ring changed when the chain came back.
                over_a_ring = any(gpa < r.layout.end and r.layout.desc_addr < gpa + length for r in driver.rings)
                if over_a_ring:
                    expected.append(None)
                elif header[1] & 0x7F == 0 and not header[0] & 1:
                    expected.append(body)
                elif header[1] & 0x7F == 0:
                    expected.append(None)  # a checksum to complete (or refuse): not compared
        assert set(driver.reap_tx()) <= {0}
    received = theirs.receive(1000)
    comparable = [f for f in expected if f is not None]
    assert [f for f in received if f in comparable] == comparable


@SETTINGS
@given(commands=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.binary(max_size=40)), max_size=12),
       ring=st.sampled_from(sorted(IMPLEMENTATIONS)))
def test_control_commands_never_raise(commands, ring):
    device, ours, theirs = _make(ring, False, True, queue_pairs=2)
    driver = NetDriver(device, data_size=1 << 18)
    for klass, command, data in commands:
        assert driver.command(klass, command, data) in (VIRTIO_NET_OK, VIRTIO_NET_ERR)
    assert 1 <= device.active_pairs <= 2
    assert len(device.rx_filter.uni) <= 64 and len(device.rx_filter.multi) <= 64
