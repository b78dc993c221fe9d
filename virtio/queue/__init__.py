"""Virtqueues, split and packed (VIRTIO 1.2 §2.6–§2.8), as the device side sees them.

- ``Virtqueue``: one queue; the transport configures it, the device calls
  ``pop_batch``/``push_batch``; guest violations leave it ``broken`` (never raise).
- ``Chain``: the protocol of a popped descriptor chain (``head``, ``readable``/``writable``
  ``Segment`` s), satisfied by both ring implementations' chain classes (``ChainC``,
  ``ChainPy``); type chain parameters with it.
- ``VirtqueueState``: its snapshot.
- ``errors``: one ``VirtqueueError`` subclass per ring rule; ``defs``: ring constants.
- ``ring``: the implementation selector (``RingC`` Cython / ``RingPy`` pure Python).
"""

from . import defs, errors
from .errors import VirtqueueError
from .chain import Chain, Segment
from .ring import IMPLEMENTATION, ChainC, ChainPy, RingC, RingPy
from .virtqueue import QueueObserver, Virtqueue, VirtqueueState

__all__ = [
    "defs",
    "errors",
    "Chain",
    "ChainC",
    "ChainPy",
    "IMPLEMENTATION",
    "Segment",
    "QueueObserver",
    "RingC",
    "RingPy",
    "Virtqueue",
    "VirtqueueError",
    "VirtqueueState",
]
