"""Block backends: a raw image file or block device, and an in-memory disk.

Both implement ``devmodels.backends.BlockBackend`` with the same request semantics
(``_common.check_request``); ``RawFileBackend`` runs I/O on a worker pool
(``_executor.BlockExecutor``), ``MemoryDiskBackend`` completes synchronously.
"""

from ._executor import BlockExecutor
from ._memory_disk import MemoryDiskBackend
from ._raw import BOUNCE_SIZE, RawFileBackend

__all__ = ["BlockExecutor", "MemoryDiskBackend", "RawFileBackend", "BOUNCE_SIZE"]
