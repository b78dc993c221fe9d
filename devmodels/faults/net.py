"""``FaultyNetBackend``: a ``NetBackend`` that applies the ``net.*`` frame faults of an engine.

Rules:

1. Frames no fault acts on pass unchanged. For each frame, the frame faults whose
   direction matches are decided in the order they were added (``FaultEngine.decide``):
   ``net.drop`` loses it (and stops there), ``net.corrupt`` flips one bit after the
   Ethernet header, ``net.duplicate`` sends it twice, ``net.reorder`` holds it back until
   the next frame in the same direction has gone (or the fault is removed).
2. Corruption models bits flipped on the wire, after every checksum was computed: it
   applies only to frames whose checksums are final (no virtio-net header, or one without
   NEEDS_CSUM or GSO); a header's DATA_VALID is cleared, because the checksum no longer
   holds. Corrupted frames are ``CorruptFrame`` (a ``bytes``): a NIC that checks the FCS
   (e1000's hook) drops them and counts a CRC error; one that cannot delivers them and the
   guest's stack finds the bad checksum.
3. While a ``net.link-down`` window is open the cable is out: frames are lost both ways.
   When it closes, what piled up in the inner backend meanwhile is discarded (a wire holds
   nothing while unplugged). Taking the NIC's link down is the device hook's job.
4. Received frames the wrapper holds (duplicates beyond ``limit``) are handed out first on
   the next ``receive``; they are bounded by the frames taken from the inner backend.
5. What every NIC's device hook needs alike: ``LinkActuator`` takes a device's link down
   (``set_link(False)``) when a ``net.link-down`` window opens and up when it closes, and
   ``overrun_frame`` is the frame a ``net.rx-overrun`` burst is made of.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol
from dataclasses import dataclass

from .._trace import tracepoint
from ..backends import NetBackend, NetOffloads
from .engine import ActiveFault, FaultEngine
from .plan import FrameCorrupt, FrameDrop, FrameDuplicate, FrameReorder, _FrameFault

__all__ = ["FaultyNetBackend", "CorruptFrame", "NetFaultStats", "VNET_HDR_LEN", "LinkActuator", "overrun_frame"]

_tp_net = tracepoint("faults.net")
VNET_HDR_LEN = 12  # virtio 1.2 §5.1.6, with num_buffers (``NetBackend`` rule 4)
_ETH_HLEN = 14
_NEEDS_CSUM = 1
_DATA_VALID = 2
_FLUSH_LIMIT = 4096  # frames discarded at most when a link comes back (rule 3)
_ETHERTYPE_LOCAL_EXPERIMENTAL = 0x88B5  # IEEE 802: for local experiments, nobody's protocol


def overrun_frame(size: int) -> bytes:
    """A broadcast frame of ``size`` bytes of nobody's protocol, for ``net.rx-overrun`` (rule 5)."""
    header = b"\xff" * 6 + bytes.fromhex("020000000001") + _ETHERTYPE_LOCAL_EXPERIMENTAL.to_bytes(2, "big")
    return header + bytes(size - len(header))


class _HasLink(Protocol):
    def set_link(self, up: bool) -> None: ...


class LinkActuator:
    """``net.link-down`` on a NIC with ``set_link(up)``: down while the window is open (rule 5)."""

    def __init__(self, device: _HasLink) -> None:
        self.device = device

    def start(self, active: ActiveFault) -> None:
        """The cable is pulled: the NIC reports its link down."""
        self.device.set_link(False)

    def stop(self, active: ActiveFault) -> None:
        """The cable is back: the NIC reports its link up."""
        self.device.set_link(True)


class CorruptFrame(bytes):
    """A frame whose bits were flipped on the wire: its FCS would not match (rule 2)."""

    __slots__ = ()


@dataclass
class NetFaultStats:
    """What the wrapper did, per direction where it matters."""

    dropped: int = 0
    corrupted: int = 0
    corrupt_skipped: int = 0  # frames with offloaded checksums (rule 2)
    duplicated: int = 0
    reordered: int = 0
    link_dropped: int = 0
    flushed: int = 0


class FaultyNetBackend:
    """``inner`` with the ``net.*`` frame faults of ``engine`` for part ``name`` (rules 1–4).

    Args:
        inner: the real backend.
        engine: the device's fault engine; the wrapper registers as scope ``net``/``name``
            and as an actuator of ``net.link-down``.
        name: the part name plans target (``nic0``).
    """

    def __init__(self, inner: NetBackend, engine: FaultEngine, name: str = "nic0") -> None:
        self.inner = inner
        self.engine = engine
        self.name = name
        self.stats = NetFaultStats()
        self._vnet = False
        self._rx: deque[bytes] = deque()
        self._held: dict[str, bytes | None] = {"rx": None, "tx": None}
        engine.add_scope("net", name)
        engine.add_actuator("net.link-down", self)
        engine.on_change(self._faults_changed)

    # -- NetBackend ------------------------------------------------------------------------

    @property
    def offloads(self) -> NetOffloads:
        """The inner backend's."""
        return self.inner.offloads

    @property
    def dropped(self) -> int:
        """Frames the inner backend dropped (the wrapper counts its own in ``stats``)."""
        return self.inner.dropped

    def set_vnet_hdr(self, enabled: bool) -> None:
        """Passed on; the wrapper needs to know where the Ethernet header starts."""
        self._vnet = bool(enabled)
        self.inner.set_vnet_hdr(enabled)

    def fileno(self) -> int | None:
        """The inner backend's."""
        return self.inner.fileno()

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """The inner backend's."""
        self.inner.set_notify(notify)

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Transmit with the faults applied (rule 1); ``False`` only from the inner backend."""
        if not self.engine:  # the fast path: no fault in effect
            return self.inner.send(frame)
        if self._link_down():
            self.stats.link_dropped += 1
            return True
        frames = self._apply(bytes(frame), "tx")
        ok = True
        for out in frames:
            ok = self.inner.send(out) and ok
        return ok if frames else True

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` frames with the faults applied (rules 1, 3, 4)."""
        out: list[bytes] = []
        while self._rx and len(out) < limit:
            out.append(self._rx.popleft())
        while len(out) < limit:
            got = self.inner.receive(limit - len(out))
            if not got:
                break
            if not self.engine:
                out.extend(got)
                continue
            if self._link_down():
                self.stats.link_dropped += len(got)
                continue
            for frame in got:
                self._rx.extend(self._apply(bytes(frame), "rx"))
            while self._rx and len(out) < limit:
                out.append(self._rx.popleft())
        return out

    # -- faults ----------------------------------------------------------------------------

    def _link_down(self) -> bool:
        return self.engine.in_effect("net.link-down", self.name) is not None

    def _apply(self, frame: bytes, direction: str) -> list[bytes]:
        """The frames to pass on for ``frame`` (rule 1)."""
        copies = 1
        hold = False
        for active in self.engine.matching("net", self.name):
            fault = active.fault
            assert isinstance(fault, _FrameFault)  # the "net" event faults are frame faults
            if not fault.applies(direction) or not self.engine.decide(active):
                continue
            self._trace(active, direction)
            if isinstance(fault, FrameDrop):
                self.stats.dropped += 1
                return []
            if isinstance(fault, FrameCorrupt):
                frame = self._corrupt(frame, active)
            elif isinstance(fault, FrameDuplicate):
                copies += 1
                self.stats.duplicated += 1
            elif isinstance(fault, FrameReorder):
                hold = True
        out = [frame] * copies
        held = self._held[direction]
        if hold and held is None:
            self._held[direction] = out.pop()
            self.stats.reordered += 1
        elif held is not None:
            self._held[direction] = None
            out.append(held)
        return out

    def _corrupt(self, frame: bytes, active: ActiveFault) -> bytes:
        """Flip one bit after the Ethernet header (rule 2)."""
        start = (VNET_HDR_LEN if self._vnet else 0) + _ETH_HLEN
        if len(frame) <= start:
            self.stats.corrupt_skipped += 1
            return frame
        data = bytearray(frame)
        if self._vnet:
            if data[0] & _NEEDS_CSUM or data[1]:  # partial checksum or GSO: not final yet
                self.stats.corrupt_skipped += 1
                return frame
            data[0] &= ~_DATA_VALID & 0xFF
        position = active.rng.randrange(start, len(data))
        data[position] ^= 1 << active.rng.randrange(8)
        self.stats.corrupted += 1
        return CorruptFrame(data)

    def _trace(self, active: ActiveFault, direction: str) -> None:
        if _tp_net.on:
            _tp_net.emit(nic=self.name, fault=active.id, kind=active.fault.kind, direction=direction)

    def _faults_changed(self) -> None:
        """A reorder fault that went away releases what it held (rule 1)."""
        if any(isinstance(a.fault, FrameReorder) for a in self.engine):
            return
        tx, self._held["tx"] = self._held["tx"], None
        if tx is not None:
            self.inner.send(tx)
        rx, self._held["rx"] = self._held["rx"], None
        if rx is not None:
            self._rx.append(rx)

    # -- net.link-down (rule 3) --------------------------------------------------------------

    def start(self, active: ActiveFault) -> None:
        """The cable is pulled: frames are dropped from now on (``send``/``receive``)."""

    def stop(self, active: ActiveFault) -> None:
        """The cable is back: discard what arrived while it was out."""
        for _ in range(_FLUSH_LIMIT):
            got = self.inner.receive(64)
            if not got:
                break
            self.stats.flushed += len(got)
