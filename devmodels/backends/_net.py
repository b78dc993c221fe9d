"""The network backend interface shared by e1000, virtio-net and vhost-user-net.

Rules:

1. A device never opens sockets or TAPs. It hands complete Ethernet frames (no FCS) to
   ``send`` and takes received frames from ``receive``; both are non-blocking.
2. ``send`` returns ``False`` when the backend cannot take the frame now (full socket
   buffer); the device then keeps or drops the frame as its specification says. Frames
   longer than ``max_frame`` are the device's to refuse before they get here.
3. ``receive(limit)`` returns at most ``limit`` frames; a backend buffers at most a bounded
   number of frames itself (drop-oldest or drop-newest, counted in ``dropped``).
4. Offloads: a backend that can carry a virtio-net header (TAP with IFF_VNET_HDR) says so in
   ``offloads``; frames then travel with a ``vnet_hdr`` prefix (virtio 1.2 §5.1.6) when the
   device asks for it with ``set_vnet_hdr(True)``. Backends without offloads get fully
   checksummed, segmented frames.
5. ``fileno()`` (or ``None``) lets a VMM loop poll for readability; ``set_notify`` is the
   alternative for backends with no fd (in-memory), called when frames arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["NetOffloads", "NetBackend"]


@dataclass(frozen=True)
class NetOffloads:
    """What a backend can carry in a virtio-net header."""

    csum: bool = False
    tso4: bool = False
    tso6: bool = False
    ecn: bool = False
    ufo: bool = False

    @property
    def any(self) -> bool:
        """Whether any offload is possible (a vnet header can be used)."""
        return self.csum or self.tso4 or self.tso6 or self.ufo


class NetBackend(Protocol):
    """Where a NIC's frames go and come from."""

    @property
    def offloads(self) -> NetOffloads:
        """Offloads the backend can carry (rule 4)."""
        ...

    @property
    def dropped(self) -> int:
        """Frames the backend dropped itself (rule 3)."""
        ...

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Transmit one frame; ``False`` if it cannot be taken now (rule 2)."""
        ...

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` received frames, oldest first (rule 3)."""
        ...

    def set_vnet_hdr(self, enabled: bool) -> None:
        """Frames in both directions carry a 12-byte virtio-net header (rule 4)."""
        ...

    def fileno(self) -> int | None:
        """An fd that becomes readable when frames arrive, or ``None``."""
        ...

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Called when frames arrive (rule 5)."""
        ...

    def close(self) -> None:
        """Release the backend."""
        ...
