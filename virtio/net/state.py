"""Snapshot section of the virtio network device (STYLE 8).

The transport-neutral part is ``virtio.device.VirtioDeviceState``; this adds the receive
filter, the active queue pairs and the link. Frames held for receive are not part of a
snapshot (a NIC may drop frames), and the device must hold no partially used receive
chains (``VirtioNetDevice.flush_rx`` first).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VirtioNetState"]


@dataclass(frozen=True)
class VirtioNetState:
    """The network device's section."""

    version: int
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
