"""Snapshot section of the virtio block device (STYLE 8).

The transport-neutral part (status, features, queues, config bytes) is
``virtio.device.VirtioDeviceState``; this is what the block device adds. A snapshot is
taken only with no request in flight (``VirtioBlkDevice.drain`` first), so it carries no
backend state.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VirtioBlkState"]


@dataclass(frozen=True)
class VirtioBlkState:
    """The block device's section.

    Attributes:
        version: layout version of this section.
        writeback: the cache mode (0 writethrough, 1 writeback).
        capacity: the disk size in sectors when saved; restore requires the same disk size.
    """

    version: int
    writeback: int
    capacity: int
