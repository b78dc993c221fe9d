"""virtio-blk (VIRTIO 1.2 §5.2): a block device over any ``devmodels.backends.BlockBackend``.

- ``VirtioBlkDevice``: the device (sans-IO; the VMM calls ``process_completions`` when the
  backend notifies).
- ``parse_request``/``BlkRequest``/``BlkLimits``: chain parsing, usable on its own.
- ``VirtioBlkState``: the snapshot section; ``virtio_blk_config``: the configuration layout.
- ``defs``: the specification's constants.
"""

from . import defs
from .device import DEFAULT_DWZ_SECTORS, DEFAULT_DWZ_SEG, DEFAULT_SEG_SIZE_MAX, BlkStats, VirtioBlkDevice
from .layouts import VIRTIO_BLK_CONFIG_SIZE, virtio_blk_config
from .request import BlkLimits, BlkOp, BlkRequest, cut_segments, parse_request
from .state import VirtioBlkState

__all__ = [
    "defs",
    "VirtioBlkDevice",
    "BlkStats",
    "DEFAULT_DWZ_SECTORS",
    "DEFAULT_DWZ_SEG",
    "DEFAULT_SEG_SIZE_MAX",
    "VIRTIO_BLK_CONFIG_SIZE",
    "virtio_blk_config",
    "BlkLimits",
    "BlkOp",
    "BlkRequest",
    "cut_segments",
    "parse_request",
    "VirtioBlkState",
]
