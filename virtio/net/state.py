"""Snapshot section of the virtio network device (CONVENTIONS: snapshots).

The transport-neutral part is ``virtio.device.VirtioDeviceState``; this adds the
constructor arguments (``VirtioNetArgs``; the backend is the restorer's), the receive
filter, the active queue pairs and the link. Frames held for receive are not part of a
snapshot (a NIC may drop frames), and the device must hold no receive chains taken from
the ring (``quiesce()`` first, which gives them back unused).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VirtioNetArgs", "VirtioNetState"]


@dataclass(frozen=True)
class VirtioNetArgs:
    """The constructor arguments of a ``VirtioNetDevice`` that the guest sees (``rx_hold``,
    budget, queue factory and name are the restorer's to choose). ``link_up`` is the link
    at power-on; the link now is in the section."""

    mac: bytes
    queue_pairs: int
    queue_size: int
    mtu: int | None
    ctrl_vq: bool
    mrg_rxbuf: bool
    packed: bool
    link_up: bool


@dataclass(frozen=True)
class VirtioNetState:
    """The network device's section."""

    version: int
    args: VirtioNetArgs
    mac: bytes
    promisc: bool
    allmulti: bool
    alluni: bool
    nomulti: bool
    nouni: bool
    nobcast: bool
    uni: tuple[bytes, ...]
    multi: tuple[bytes, ...]
    uni_overflow: bool
    multi_overflow: bool
    vlans: bytes
    active_pairs: int
    link_up: bool
