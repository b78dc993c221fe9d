"""The virtio network device (VIRTIO 1.2 §5.1) over any ``NetBackend``.

Queues: receiveq1, transmitq1, …, receiveqN, transmitqN, then controlq at 2N, where N is
``max_virtqueue_pairs`` once VIRTIO_NET_F_MQ is negotiated and 1 otherwise (§5.1.2).

Rules:

1. Sans-IO (CONVENTIONS: sans-io): the device hands frames to ``backend.send`` and takes them from
   ``backend.receive`` when the VMM calls ``poll_rx`` (on the backend's readability or
   notify hook, and only while ``wants_rx``). It never waits.
2. Receive never spins and never grows without bound: frames the guest has no buffers for
   are held, up to ``rx_hold`` frames in all, and while that many are held ``wants_rx`` is
   false, so the VMM stops reading the backend until the driver adds buffers (a notify on
   a receive queue delivers what is held). Frames the filter refuses, that exceed the MTU,
   or that fit no buffer are dropped and counted.
3. Offloads are passed through, never emulated: CSUM/GUEST_CSUM and the TSO/ECN/UFO
   features are offered only when the backend can carry a virtio-net header
   (``NetBackend.offloads``); then headers travel with the frames. Otherwise the device
   offers none of them and completes partial checksums itself (``tx`` rule 3).
4. A transmit chain shorter than the header or longer than 64 KiB plus the header goes
   back with length 0 and is not sent (``tx`` rule 1). Every transmit chain goes back with
   length 0: the device writes nothing into it.
5. With MRG_RXBUF a packet may span chains: all but the last are filled completely and the
   first header's ``num_buffers`` counts them (§5.1.6.4.2); chains popped for a packet
   that did not fit wait (bounded by the queue size) for the rest.
6. Receive chains popped and not filled (the spares of rule 5 and of ``_refill``) are
   always the last ones popped from their queue, in order. A queue stopped without a
   reset (vhost-user GET_VRING_BASE) gives them back to the ring (``Virtqueue.rewind``),
   so the restarted ring offers them again and the driver loses none; a queue started
   again (a new epoch) never sees chains of the old one.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devmodels import GuestMemory, GuestMemoryError, SnapshotError, UsageError
from devmodels.args import check_implements
from devmodels.snapshot import check_args, check_bool, check_bytes, check_int, check_type, check_version
from devmodels.trace import tracepoint
from devmodels.backends import NetBackend, NetOffloads
from devmodels.backends.net import finish_checksum

from ..defs import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_ID_NET,
)
from ..device import QueueFactory, VirtioDevice, VirtioDeviceState
from ..queue.chain import Chain
from . import ctrl as _ctrl
from .defs import (
    ETH_ALEN,
    ETH_HLEN,
    VIRTIO_NET_CONFIG_STATUS,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_RX_EXTRA,
    VIRTIO_NET_F_CTRL_VLAN,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_ANNOUNCE,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_SIZE,
    VIRTIO_NET_S_LINK_UP,
    VLAN_HLEN,
)
from .layouts import VIRTIO_NET_HDR, virtio_net_config
from .rx import RxFilter, flow_key, scatter
from .state import VirtioNetArgs, VirtioNetState
from .tx import prepare_frame, read_packet

__all__ = ["VirtioNetDevice", "NetStats"]

_tp_tx_drop = tracepoint("virtio.net.tx_drop")
_tp_rx_drop = tracepoint("virtio.net.rx_drop")

_STATE_VERSION = 2  # 2: args
_FLOWS_MAX = 1024
_ZERO_HDR = bytes(VIRTIO_NET_HDR_SIZE)
_GUEST_GSO = {
    VIRTIO_NET_HDR_GSO_TCPV4: VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_HDR_GSO_TCPV6: VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_HDR_GSO_UDP: VIRTIO_NET_F_GUEST_UFO,
}
_OFFLOAD_FEATURES = (
    1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO6 | 1 << VIRTIO_NET_F_HOST_UFO
    | 1 << VIRTIO_NET_F_GUEST_UFO | 1 << VIRTIO_NET_F_HOST_ECN | 1 << VIRTIO_NET_F_GUEST_ECN
)
# §5.1.3.1: feature -> features it requires (any one of them).
_REQUIRES: dict[int, tuple[int, ...]] = {
    VIRTIO_NET_F_GUEST_TSO4: (VIRTIO_NET_F_GUEST_CSUM,),
    VIRTIO_NET_F_GUEST_TSO6: (VIRTIO_NET_F_GUEST_CSUM,),
    VIRTIO_NET_F_GUEST_ECN: (VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6),
    VIRTIO_NET_F_GUEST_UFO: (VIRTIO_NET_F_GUEST_CSUM,),
    VIRTIO_NET_F_HOST_TSO4: (VIRTIO_NET_F_CSUM,),
    VIRTIO_NET_F_HOST_TSO6: (VIRTIO_NET_F_CSUM,),
    VIRTIO_NET_F_HOST_ECN: (VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6),
    VIRTIO_NET_F_HOST_UFO: (VIRTIO_NET_F_CSUM,),
    VIRTIO_NET_F_CTRL_RX: (VIRTIO_NET_F_CTRL_VQ,),
    VIRTIO_NET_F_CTRL_VLAN: (VIRTIO_NET_F_CTRL_VQ,),
    VIRTIO_NET_F_CTRL_RX_EXTRA: (VIRTIO_NET_F_CTRL_VQ,),
    VIRTIO_NET_F_GUEST_ANNOUNCE: (VIRTIO_NET_F_CTRL_VQ,),
    VIRTIO_NET_F_CTRL_MAC_ADDR: (VIRTIO_NET_F_CTRL_VQ,),
}


@dataclass
class NetStats:
    """Counters of one device (observability only)."""

    tx_frames: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0  # refused chains (rule 4)
    tx_dropped: int = 0  # frames the backend or the offload rules refused
    rx_frames: int = 0
    rx_bytes: int = 0
    rx_filtered: int = 0
    rx_dropped: int = 0  # too big, hold overflow, bad buffers
    rx_errors: int = 0  # receive chains returned unusable


class VirtioNetDevice(VirtioDevice):
    """A virtio-net device backed by a ``NetBackend``.

    Args:
        memory: guest RAM.
        backend: where frames go and come from.
        mac: the MAC address (6 bytes), offered with VIRTIO_NET_F_MAC.
        queue_pairs: receive/transmit queue pairs (VIRTIO_NET_F_MQ is offered above 1).
        queue_size: maximum size of each queue.
        mtu: offered with VIRTIO_NET_F_MTU (68..65535), or ``None`` for no MTU feature.
        ctrl_vq: offer the control queue (with RX mode, MAC table, VLAN filter, MAC address,
            and MQ). A vhost-user back-end leaves it to the front-end (``False``).
        mrg_rxbuf: offer VIRTIO_NET_F_MRG_RXBUF.
        packed: offer VIRTIO_F_RING_PACKED.
        rx_hold: frames held while the guest has no receive buffers (rule 2).
        link_up: the initial link state (VIRTIO_NET_F_STATUS).
        budget, queue_factory, name: as for ``VirtioDevice``.

    Raises:
        UsageError: a bad argument.
    """

    device_id = VIRTIO_ID_NET
    config_layout = virtio_net_config
    device_state_type = VirtioNetState
    snapshot_kind = "virtio-net"
    vhost_user_config = False
    """Over vhost-user, QEMU's virtio-net keeps the configuration space itself."""

    def __init__(
        self,
        memory: GuestMemory,
        backend: NetBackend,
        *,
        mac: bytes = b"\x52\x54\x00\x12\x34\x56",
        queue_pairs: int = 1,
        queue_size: int = 256,
        mtu: int | None = 1500,
        ctrl_vq: bool = True,
        mrg_rxbuf: bool = True,
        packed: bool = True,
        rx_hold: int = 128,
        link_up: bool = True,
        budget: int | None = None,
        queue_factory: QueueFactory | None = None,
        name: str = "virtio-net",
    ) -> None:
        check_implements("VirtioNetDevice", "backend", backend, NetBackend)
        mac = bytes(mac)
        if len(mac) != ETH_ALEN or mac[0] & 1:
            raise UsageError(f"mac must be 6 bytes of a unicast address, got {mac.hex(':')}")
        if not isinstance(queue_pairs, int) or not 1 <= queue_pairs <= 0x8000:
            raise UsageError(f"queue_pairs must be 1..32768, got {queue_pairs!r}")
        if mtu is not None and not 68 <= mtu <= 65535:
            raise UsageError(f"mtu must be 68..65535, got {mtu!r}")
        if not isinstance(rx_hold, int) or rx_hold < 1:
            raise UsageError(f"rx_hold must be a positive integer, got {rx_hold!r}")
        self._args = VirtioNetArgs(mac, queue_pairs, queue_size, mtu, bool(ctrl_vq), bool(mrg_rxbuf), bool(packed),
                                   bool(link_up))
        self.backend = backend
        self._waker: Callable[[], None] | None = None  # bound while a loop serves us
        self.stats = NetStats()
        self.max_pairs = queue_pairs
        self.mtu = mtu
        self.rx_hold = rx_hold
        self._ctrl_offered = ctrl_vq
        self._default_mac = mac
        self._link_default = link_up
        features = (
            1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | 1 << VIRTIO_F_INDIRECT_DESC
            | 1 << VIRTIO_F_EVENT_IDX | 1 << VIRTIO_F_RING_RESET
        )
        if mtu is not None:
            features |= 1 << VIRTIO_NET_F_MTU
        if mrg_rxbuf:
            features |= 1 << VIRTIO_NET_F_MRG_RXBUF
        if packed:
            features |= 1 << VIRTIO_F_RING_PACKED
        if ctrl_vq:
            features |= (
                1 << VIRTIO_NET_F_CTRL_VQ | 1 << VIRTIO_NET_F_CTRL_RX | 1 << VIRTIO_NET_F_CTRL_RX_EXTRA
                | 1 << VIRTIO_NET_F_CTRL_VLAN | 1 << VIRTIO_NET_F_CTRL_MAC_ADDR
            )
        if queue_pairs > 1:
            features |= 1 << VIRTIO_NET_F_MQ
        offloads = backend.offloads
        if offloads.any:
            if offloads.csum:
                features |= 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_GUEST_CSUM
                if offloads.tso4:
                    features |= 1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO4
                if offloads.tso6:
                    features |= 1 << VIRTIO_NET_F_HOST_TSO6 | 1 << VIRTIO_NET_F_GUEST_TSO6
                if offloads.ecn and (offloads.tso4 or offloads.tso6):
                    features |= 1 << VIRTIO_NET_F_HOST_ECN | 1 << VIRTIO_NET_F_GUEST_ECN
                if offloads.ufo:
                    features |= 1 << VIRTIO_NET_F_HOST_UFO | 1 << VIRTIO_NET_F_GUEST_UFO
        config = virtio_net_config.build(
            dict(mac=mac, status=VIRTIO_NET_S_LINK_UP if link_up else 0, max_virtqueue_pairs=queue_pairs,
                 mtu=mtu or 0, speed=0, duplex=0, rss_max_key_size=0, rss_max_indirection_table_length=0,
                 supported_hash_types=0)
        )
        super().__init__(
            memory,
            features=features,
            queue_sizes=[queue_size] * (2 * queue_pairs + (1 if ctrl_vq else 0)),
            config=config,
            budget=budget,
            queue_factory=queue_factory,
            name=name,
        )
        self.rx_filter = RxFilter(mac)
        self._active = 1 if ctrl_vq else queue_pairs
        self._held: list[deque[bytes]] = [deque() for _ in range(queue_pairs)]
        self._n_held = 0
        self._spare: list[deque[Chain]] = [deque() for _ in range(queue_pairs)]
        self._spare_epoch = [0] * queue_pairs
        self._flows: dict[int, int] = {}
        self._vnet = False

    # -- properties ----------------------------------------------------------------------------

    @property
    def active_pairs(self) -> int:
        """Queue pairs in use (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; all of them without a control queue)."""
        return self._active

    @property
    def held(self) -> int:
        """Received frames waiting for guest buffers."""
        return self._n_held

    @property
    def wants_rx(self) -> bool:
        """Whether the VMM should read the backend now (rule 2)."""
        return self.live and self._n_held < self.rx_hold and any(
            self.queue_live(2 * pair) for pair in range(self._active)
        )

    @property
    def vnet(self) -> bool:
        """Frames to and from the backend carry the virtio-net header (rule 3)."""
        return self._vnet

    @property
    def link_up(self) -> bool:
        """VIRTIO_NET_S_LINK_UP in the configuration."""
        return bool(self.config[VIRTIO_NET_CONFIG_STATUS] & VIRTIO_NET_S_LINK_UP)

    @property
    def vhost_user_queue_num(self) -> int:
        """GET_QUEUE_NUM over vhost-user: queue pairs (the front-end counts pairs for net)."""
        return self.max_pairs

    def set_link(self, up: bool) -> None:
        """Change the link state (a configuration change the driver is notified of)."""
        status = self.config[VIRTIO_NET_CONFIG_STATUS] & ~VIRTIO_NET_S_LINK_UP
        self.update_config(VIRTIO_NET_CONFIG_STATUS, bytes([status | (VIRTIO_NET_S_LINK_UP if up else 0), 0]))

    def set_active_pairs(self, pairs: int) -> None:
        """Use receive/transmit pairs 1..``pairs`` (the control command's effect)."""
        self._active = pairs
        # §5.1.6.5.6.1: nothing is queued on receive queues above the new count.
        for pair in range(pairs, self.max_pairs):
            self._n_held -= len(self._held[pair])
            self.stats.rx_dropped += len(self._held[pair])
            self._held[pair].clear()

    def _role(self, index: int) -> tuple[str, int]:
        pairs = self.max_pairs if self.has_feature(VIRTIO_NET_F_MQ) else 1
        if self.has_feature(VIRTIO_NET_F_CTRL_VQ) and index == 2 * pairs:
            return "ctrl", 0
        if index < 2 * pairs:
            return ("tx" if index & 1 else "rx"), index >> 1
        return "none", 0

    # -- VirtioDevice hooks ----------------------------------------------------------------------

    def validate_features(self, accepted: int) -> str | None:
        """§5.1.3.1 dependencies (MQ needs CTRL_VQ only when the device has a control queue)."""
        for feature, needs in _REQUIRES.items():
            if accepted >> feature & 1 and not any(accepted >> need & 1 for need in needs):
                return f"feature {feature} needs one of {needs}"
        if self._ctrl_offered and accepted >> VIRTIO_NET_F_MQ & 1 and not accepted >> VIRTIO_NET_F_CTRL_VQ & 1:
            return "VIRTIO_NET_F_MQ needs VIRTIO_NET_F_CTRL_VQ"
        return None

    def activate(self) -> None:
        """DRIVER_OK: choose the header mode for the backend (rule 3)."""
        negotiated = self.negotiated
        vnet = bool(self.backend.offloads.any and negotiated & _OFFLOAD_FEATURES)
        self._vnet = vnet
        self.backend.set_vnet_hdr(vnet)
        set_offloads = getattr(self.backend, "set_offloads", None)
        if vnet and set_offloads is not None:
            set_offloads(NetOffloads(
                csum=bool(negotiated >> VIRTIO_NET_F_GUEST_CSUM & 1),
                tso4=bool(negotiated >> VIRTIO_NET_F_GUEST_TSO4 & 1),
                tso6=bool(negotiated >> VIRTIO_NET_F_GUEST_TSO6 & 1),
                ecn=bool(negotiated >> VIRTIO_NET_F_GUEST_ECN & 1),
            ))

    def reset_device(self) -> None:
        """Reset (§5.1.6.5.2.1: empty MAC table, §5.1.6.5.3: empty VLAN table); drop held frames."""
        self.rx_filter.reset(self._default_mac)
        self.config[0:ETH_ALEN] = self._default_mac
        self._active = 1 if self._ctrl_offered else self.max_pairs
        for pair in range(self.max_pairs):
            self._held[pair].clear()
            self._spare[pair].clear()
        self._n_held = 0
        self._flows.clear()
        if self._vnet:
            self._vnet = False
            self.backend.set_vnet_hdr(False)

    def on_queue_reset(self, index: int) -> None:
        """A reset receive queue loses its popped chains (their epoch is gone)."""
        if index < 2 * self.max_pairs and not index & 1:
            self._spare[index >> 1].clear()

    def on_queue_stop(self, index: int) -> None:
        """A stopping receive queue gives its unfilled chains back to the ring (rule 6)."""
        if index < 2 * self.max_pairs and not index & 1:
            pair = index >> 1
            spare = self._spare[pair]
            if spare and self._spare_epoch[pair] == self.queue_epoch(index):
                self.queues[index].rewind(list(spare))
            spare.clear()

    def awaits_buffers(self, index: int) -> bool:
        """Receive queues wait for buffers only while frames are held for them."""
        role, pair = self._role(index)
        if role == "rx":
            return bool(self._held[pair])
        return role != "none"

    def on_queue_notify(self, index: int) -> bool:
        """Receive queues deliver held frames; the others pop and process (rule 2)."""
        role, pair = self._role(index)
        if role == "rx":
            self._deliver(pair)
            return False
        if role == "none":
            return False
        return super().on_queue_notify(index)

    def handle_queue(self, index: int, chains: list[Chain]) -> None:
        """Transmit, or execute control commands."""
        role, pair = self._role(index)
        if role == "tx":
            self._transmit(index, pair, chains)
        elif role == "ctrl":
            used = [(chain, _ctrl.handle_ctrl_chain(self, chain, self.memory)[0]) for chain in chains]
            self.push_used(index, used)

    # -- transmit (rule 4) -----------------------------------------------------------------------

    def _transmit(self, index: int, pair: int, chains: list[Chain]) -> None:
        memory, stats, backend = self.memory, self.stats, self.backend
        negotiated, vnet = self.negotiated, self._vnet
        track = self._active > 1
        for chain in chains:
            packet = read_packet(chain, memory)
            if isinstance(packet, str):
                stats.tx_errors += 1
                self._trace_tx(index, chain, packet)
                continue
            frame = prepare_frame(packet, negotiated, vnet)
            if isinstance(frame, str):
                stats.tx_dropped += 1
                self._trace_tx(index, chain, frame)
                continue
            if not backend.send(frame):
                stats.tx_dropped += 1
                self._trace_tx(index, chain, "backend full")
                continue
            stats.tx_frames += 1
            stats.tx_bytes += len(packet) - VIRTIO_NET_HDR_SIZE
            if track:
                key = flow_key(memoryview(packet)[VIRTIO_NET_HDR_SIZE:])
                if key is not None:
                    self._flows.pop(key, None)
                    self._flows[key] = pair
                    if len(self._flows) > _FLOWS_MAX:
                        del self._flows[next(iter(self._flows))]
        self.push_used(index, [(chain, 0) for chain in chains])

    def _trace_tx(self, index: int, chain: Chain, reason: str) -> None:
        if _tp_tx_drop.on:
            _tp_tx_drop.emit(device=self.name, queue=index, head=chain.head, reason=reason)

    # -- receive (rules 2, 5) --------------------------------------------------------------------

    # -- serving (devmodels.runtime.ServedDevice) --------------------------------------------

    def bind_waker(self, wake: Callable[[], None] | None) -> None:
        """A backend without a descriptor announces frames through ``wake``."""
        if self.backend.fileno() is None:
            self._waker = wake
            self.backend.set_notify(wake)

    def watched_fds(self) -> Mapping[int, Callable[[], None]]:
        """The backend's descriptor, only while the device wants frames (rule 2)."""
        fd = self.backend.fileno()
        return {fd: self._rx_ready} if fd is not None and self.wants_rx else {}

    def _rx_ready(self) -> None:
        self.poll_rx()

    def run_posted(self) -> bool:
        """The base class's posted work and recheck; frames a descriptor-less backend
        announced through the waker."""
        worked = super().run_posted()
        if self._waker is not None and self.wants_rx:
            worked = bool(self.poll_rx()) or worked
        return worked

    def unfinished_work(self) -> str | None:
        """Receive chains taken from the ring and not yet used (``VirtioDevice`` rule 11)."""
        held = sum(len(spare) for spare in self._spare)
        return f"{held} receive chains held" if held else None

    def finish_in_flight(self) -> None:
        """``flush_rx``: what ``quiesce()`` has the device give back."""
        self.flush_rx()

    def poll_rx(self, limit: int = 64) -> int:
        """Take up to ``limit`` frames from the backend (as room allows) and deliver what the
        guest has buffers for. Returns how many frames were taken from the backend."""
        if not self.live:
            return 0
        room = self.rx_hold - self._n_held
        if room <= 0:
            self._deliver_all()
            room = self.rx_hold - self._n_held
            if room <= 0:
                return 0
        frames = self.backend.receive(min(limit, room))
        for frame in frames:
            self._accept(frame)
        self._deliver_all()
        return len(frames)

    def receive(self, frames: list[bytes]) -> None:
        """Offer frames directly (a VMM without a backend loop; tests). Bounded as ``poll_rx``."""
        if not self.live:
            return
        for frame in frames:
            if self._n_held >= self.rx_hold:
                self.stats.rx_dropped += 1
                continue
            self._accept(frame)
        self._deliver_all()

    def _accept(self, data: bytes) -> None:
        """Filter, check and hold one frame for its receive queue."""
        offset = VIRTIO_NET_HDR_SIZE if self._vnet else 0
        frame = memoryview(data)[offset:]
        if len(frame) < ETH_HLEN:
            self._drop_rx("runt frame")
            return
        if not self.rx_filter.accepts(
            frame, mac_filter=self.has_feature(VIRTIO_NET_F_CTRL_RX), vlan_filter=self.has_feature(VIRTIO_NET_F_CTRL_VLAN)
        ):
            self.stats.rx_filtered += 1
            return
        gso = VIRTIO_NET_HDR_GSO_NONE
        if self._vnet:
            gso = data[1] & ~VIRTIO_NET_HDR_GSO_ECN
            feature = _GUEST_GSO.get(gso)
            if gso != VIRTIO_NET_HDR_GSO_NONE and (feature is None or not self.has_feature(feature)):
                self._drop_rx(f"GSO type {data[1]:#x} not negotiated")
                return
        if self.mtu is not None and gso == VIRTIO_NET_HDR_GSO_NONE and self.has_feature(VIRTIO_NET_F_MTU):
            # §5.1.4.1: no packet above mtu + the link-level header without GSO.
            if len(frame) > self.mtu + ETH_HLEN + VLAN_HLEN:
                self._drop_rx(f"{len(frame)}-byte frame exceeds the MTU")
                return
        pair = self._steer(frame)
        if pair is None:
            self._drop_rx("no receive queue is live")
            return
        self._held[pair].append(data)
        self._n_held += 1

    def _drop_rx(self, reason: str) -> None:
        self.stats.rx_dropped += 1
        if _tp_rx_drop.on:
            _tp_rx_drop.emit(device=self.name, reason=reason)

    def _steer(self, frame: memoryview) -> int | None:
        active = self._active
        pair = 0
        if active > 1:
            key = flow_key(frame)
            if key is not None:
                pair = self._flows.get(key, key % active)
                if pair >= active:
                    pair = key % active
        if self.queue_live(2 * pair):
            return pair
        for other in range(active):
            if self.queue_live(2 * other):
                return other
        return None

    def _deliver_all(self) -> None:
        for pair in range(self._active):
            if self._held[pair]:
                self._deliver(pair)

    def _packet(self, data: bytes) -> bytearray:
        """Header and frame as the guest receives them (rule 3)."""
        if not self._vnet:
            packet = bytearray(_ZERO_HDR)
            packet += data
            return packet
        packet = bytearray(data)
        if not self.has_feature(VIRTIO_NET_F_GUEST_CSUM):
            # §5.1.6.4.2: without GUEST_CSUM, flags are 0 and the packet is complete.
            flags, _g, _h, _s, csum_start, csum_offset, _n = VIRTIO_NET_HDR.unpack_from(packet, 0)
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                frame = packet[VIRTIO_NET_HDR_SIZE:]
                finish_checksum(frame, csum_start, csum_offset)
                packet[VIRTIO_NET_HDR_SIZE:] = frame
            packet[0] = 0
        return packet

    def _deliver(self, pair: int) -> None:
        index = 2 * pair
        held = self._held[pair]
        if not held or not self.queue_live(index):
            return
        epoch = self.queue_epoch(index)
        spare = self._spare[pair]
        if self._spare_epoch[pair] != epoch:
            spare.clear()
            self._spare_epoch[pair] = epoch
        mergeable = self.has_feature(VIRTIO_NET_F_MRG_RXBUF)
        used: list[tuple[Chain | int, int]] = []
        while held:
            packet = self._packet(held[0])
            need = len(packet)
            chains = self._take(index, spare, need, mergeable, used)
            if chains is None:
                break  # wait for buffers (rule 2)
            held.popleft()
            self._n_held -= 1
            if not chains:
                self._drop_rx(f"{need}-byte packet fits no receive buffer")
                continue
            VIRTIO_NET_HDR.pack_into(packet, 0, *VIRTIO_NET_HDR.unpack_from(packet, 0)[:6], len(chains))
            try:
                written = scatter(self.memory, chains, packet)
            except GuestMemoryError as exc:
                self.stats.rx_errors += len(chains)
                self._drop_rx(f"receive buffer outside guest RAM: {exc}")
                used += [(chain, 0) for chain in chains]
                continue
            used += list(zip(chains, written, strict=True))
            self.stats.rx_frames += 1
            self.stats.rx_bytes += need - VIRTIO_NET_HDR_SIZE
        if used:
            self.push_used(index, used, epoch=epoch)

    def _take(self, index: int, spare: deque[Chain], need: int, mergeable: bool,
              used: list[tuple[Chain | int, int]]) -> list[Chain] | None:
        """Chains for a ``need``-byte packet; ``None`` when the guest has not enough buffers
        yet, ``[]`` when the packet fits no buffer (without MRG_RXBUF)."""
        if not mergeable:
            while True:
                if not spare and not self._refill(index, spare):
                    return None
                chain = spare[0]
                if chain.writable_len < VIRTIO_NET_HDR_SIZE:
                    spare.popleft()
                    self.stats.rx_errors += 1
                    used.append((chain, 0))  # unusable buffer: give it back empty
                    continue
                if chain.writable_len < need:
                    return []  # keep the buffer for the next packet
                spare.popleft()
                return [chain]
        if need > sum(c.writable_len for c in spare) and len(spare) >= self.queue_size(index):
            return []  # more than every buffer of the ring together: it can never fit
        total = 0
        count = 0
        for chain in spare:
            total += chain.writable_len
            count += 1
            if total >= need:
                break
        while total < need:
            before = len(spare)
            if not self._refill(index, spare):
                return None
            for chain in list(spare)[before:]:
                total += chain.writable_len
                count += 1
                if total >= need:
                    break
        chains = [spare.popleft() for _ in range(count)]
        if chains[0].writable_len < VIRTIO_NET_HDR_SIZE:
            # §5.1.6.3.1: with MRG_RXBUF each buffer holds at least a header.
            self.stats.rx_errors += 1
            used.append((chains[0], 0))
            for chain in reversed(chains[1:]):
                spare.appendleft(chain)
            return self._take(index, spare, need, mergeable, used)
        return chains

    def _refill(self, index: int, spare: deque[Chain]) -> bool:
        if len(spare) >= self.queue_size(index):
            return False
        chains = self.pop(index, 64)
        spare.extend(chains)
        return bool(chains)

    def flush_rx(self) -> None:
        """Return receive chains popped but not filled (with length 0) and drop held frames
        (part of ``quiesce()``)."""
        for pair in range(self.max_pairs):
            spare = self._spare[pair]
            if spare:
                self.push_used(2 * pair, [(chain, 0) for chain in spare], epoch=self._spare_epoch[pair])
                spare.clear()
            self.stats.rx_dropped += len(self._held[pair])
            self._held[pair].clear()
        self._n_held = 0

    # -- snapshot --------------------------------------------------------------------------------

    def constructor_args(self) -> VirtioNetArgs:
        """The constructor arguments a snapshot carries (``devmodels._state`` rule 3)."""
        return self._args

    @classmethod
    def from_args(cls, args: VirtioNetArgs, memory: GuestMemory, backend: NetBackend, *, rx_hold: int = 128,
                  budget: int | None = None, queue_factory: QueueFactory | None = None,
                  name: str = "virtio-net") -> VirtioNetDevice:
        """A device built from a snapshot's ``args`` and the restorer's backend and tuning.

        Raises:
            SnapshotError: ``args`` are not ``VirtioNetArgs`` or the constructor refuses them.
        """
        check_type("device.args", args, VirtioNetArgs)
        try:
            return cls(memory, backend, mac=args.mac, queue_pairs=args.queue_pairs, queue_size=args.queue_size,
                       mtu=args.mtu, ctrl_vq=args.ctrl_vq, mrg_rxbuf=args.mrg_rxbuf, packed=args.packed,
                       rx_hold=rx_hold, link_up=args.link_up, budget=budget, queue_factory=queue_factory, name=name)
        except SnapshotError:
            raise
        except UsageError as exc:
            raise SnapshotError("device.args", str(exc)) from None

    @classmethod
    def from_state(cls, state: VirtioDeviceState[VirtioNetState], memory: GuestMemory, backend: NetBackend,
                   **tuning: Any) -> VirtioNetDevice:
        """A device built from ``state``'s args around ``backend``, with ``state`` restored
        (``devmodels._state`` rule 5); ``tuning`` as for ``from_args``.

        Raises:
            SnapshotError: the state is refused (a backend with other offloads included:
                the offered features differ).
        """
        check_type("device", getattr(state, "device", None), VirtioNetState)
        assert state.device is not None
        device = cls.from_args(state.device.args, memory, backend, **tuning)
        device.restore(state)
        return device

    def device_state(self) -> VirtioNetState:
        """The network section of the snapshot; ``state()`` has checked that no receive
        chain is held."""
        f = self.rx_filter
        return VirtioNetState(
            version=_STATE_VERSION, args=self._args, mac=f.mac, promisc=f.promisc, allmulti=f.allmulti,
            alluni=f.alluni, nomulti=f.nomulti, nouni=f.nouni, nobcast=f.nobcast, uni=tuple(f.uni),
            multi=tuple(f.multi), uni_overflow=f.uni_overflow, multi_overflow=f.multi_overflow,
            vlans=bytes(f.vlans), active_pairs=self._active, link_up=self.link_up,
        )

    def check_device_state(self, state: Any) -> None:
        """Validate the network section (args first)."""
        check_type("device", state, VirtioNetState)
        check_version("device.version", state.version, _STATE_VERSION)
        check_args("device.args", state.args, self._args)
        mac = check_bytes("device.mac", state.mac, ETH_ALEN)
        if mac[0] & 1:
            raise SnapshotError("device.mac", "a multicast address")
        for name in ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast", "uni_overflow",
                     "multi_overflow", "link_up"):
            check_bool(f"device.{name}", getattr(state, name))
        for name in ("uni", "multi"):
            table = getattr(state, name)
            check_type(f"device.{name}", table, tuple)
            check_int(f"device.{name}.length", len(table), 0, 64)
            for i, entry in enumerate(table):
                check_bytes(f"device.{name}[{i}]", entry, ETH_ALEN)
        check_bytes("device.vlans", state.vlans, 512)
        check_int("device.active_pairs", state.active_pairs, 1, self.max_pairs)

    def restore_device_state(self, state: Any) -> None:
        """Apply the network section."""
        f = self.rx_filter
        f.reset(state.mac)
        for name in ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast", "uni_overflow",
                     "multi_overflow"):
            setattr(f, name, getattr(state, name))
        f.uni, f.multi, f.vlans = list(state.uni), list(state.multi), bytearray(state.vlans)
        self._active = state.active_pairs
        for pair in range(self.max_pairs):
            self._held[pair].clear()
            self._spare[pair].clear()
        self._n_held = 0
        self._vnet = False
        if self.live:
            self.activate()

    def stats_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return dataclasses.asdict(self.stats)
