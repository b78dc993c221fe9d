"""Host backends shared by the devices: block (disk images) and network (frames).

Interfaces: ``BlockBackend`` (``_block.py``) and ``NetBackend`` (``_net.py``).
Implementations: ``devmodels.backends.block`` (``RawFileBackend``, ``MemoryDiskBackend``)
and ``devmodels.backends.net`` (``TapBackend``, ``SocketBackend``, ``LoopbackBackend``,
``PcapWriter``, ``Responder``), re-exported here.
"""

from ._block import BlockBackend, BlockCompletion, BlockOp, BlockRequest, BlockStatus
from ._net import NetBackend, NetOffloads
from .block import MemoryDiskBackend, RawFileBackend
from .net import LoopbackBackend, PcapWriter, SocketBackend, TapBackend

__all__ = [
    "BlockBackend",
    "BlockCompletion",
    "BlockOp",
    "BlockRequest",
    "BlockStatus",
    "NetBackend",
    "NetOffloads",
    "MemoryDiskBackend",
    "RawFileBackend",
    "LoopbackBackend",
    "PcapWriter",
    "SocketBackend",
    "TapBackend",
]
