"""Host backends shared by the devices: block (disk images) and network (frames)."""

from ._block import BlockBackend, BlockCompletion, BlockOp, BlockRequest, BlockStatus
from ._net import NetBackend, NetOffloads

__all__ = [
    "BlockBackend",
    "BlockCompletion",
    "BlockOp",
    "BlockRequest",
    "BlockStatus",
    "NetBackend",
    "NetOffloads",
]
