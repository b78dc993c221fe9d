"""Virtqueues, split and packed (VIRTIO 1.2 §2.6–§2.8), as the device side sees them.

- ``Virtqueue``: one queue; the transport configures it, the device calls
  ``pop_batch``/``push_batch``; guest violations leave it ``broken`` (never raise).
- ``Chain``: one popped descriptor chain: ``head``, ``readable``/``writable`` segments.
- ``VirtqueueState``: its snapshot.
- ``errors``: one ``VirtqueueError`` subclass per ring rule; ``defs``: ring constants.
- ``ring``: the implementation selector (``RingC`` Cython / ``RingPy`` pure Python).
"""

from . import defs, errors
from .errors import VirtqueueError
from .ring import IMPLEMENTATION, Chain, ChainC, ChainPy, RingC, RingPy
from .virtqueue import QueueObserver, Virtqueue, VirtqueueState

__all__ = [
    "defs",
    "errors",
    "Chain",
    "ChainC",
    "ChainPy",
    "IMPLEMENTATION",
    "QueueObserver",
    "RingC",
    "RingPy",
    "Virtqueue",
    "VirtqueueError",
    "VirtqueueState",
]
