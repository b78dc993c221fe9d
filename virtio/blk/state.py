"""Snapshot section of the virtio block device (CONVENTIONS: snapshots).

The transport-neutral part (status, features, queues, config bytes) is
``virtio.device.VirtioDeviceState``; this is what the block device adds: its constructor
arguments (``VirtioBlkArgs``; the backend is the restorer's) and the cache mode. A snapshot
is taken only with no request in flight (``quiesce()`` first, which drains the backend),
so it carries no backend state.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VirtioBlkArgs", "VirtioBlkState"]


@dataclass(frozen=True)
class VirtioBlkArgs:
    """The constructor arguments of a ``VirtioBlkDevice`` that the guest sees (budget,
    queue factory and name are the restorer's to choose)."""

    num_queues: int
    queue_size: int
    serial: bytes
    packed: bool
    writeback: bool
    size_max: int
    seg_max: int
    dwz_sectors: int
    dwz_segments: int


@dataclass(frozen=True)
class VirtioBlkState:
    """The block device's section.

    Attributes:
        version: layout version of this section.
        args: the constructor arguments.
        writeback: the cache mode (0 writethrough, 1 writeback).
        capacity: the disk size in sectors when saved; restore requires the same disk size.
    """

    version: int
    args: VirtioBlkArgs
    writeback: int
    capacity: int
