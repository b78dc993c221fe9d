"""Wire layouts of the virtio block device (VIRTIO 1.2 §5.2.4, §5.2.6).

``virtio_blk_config`` is declared with construct (it is built rarely); the per-request
header and discard/write-zeroes segments, parsed for every request, use precompiled
``struct.Struct`` (CONVENTIONS: layouts). All fields are little-endian.
"""

from __future__ import annotations

import struct

import construct as cs

__all__ = ["virtio_blk_config", "VIRTIO_BLK_REQ_HDR", "VIRTIO_BLK_DWZ_SEG", "VIRTIO_BLK_CONFIG_SIZE"]

virtio_blk_config = cs.Struct(
    "capacity" / cs.Int64ul,
    "size_max" / cs.Int32ul,
    "seg_max" / cs.Int32ul,
    "geometry"
    / cs.Struct(
        "cylinders" / cs.Int16ul,
        "heads" / cs.Int8ul,
        "sectors" / cs.Int8ul,
    ),
    "blk_size" / cs.Int32ul,
    "topology"
    / cs.Struct(
        "physical_block_exp" / cs.Int8ul,
        "alignment_offset" / cs.Int8ul,
        "min_io_size" / cs.Int16ul,
        "opt_io_size" / cs.Int32ul,
    ),
    "writeback" / cs.Int8ul,
    "unused0" / cs.Int8ul,
    "num_queues" / cs.Int16ul,
    "max_discard_sectors" / cs.Int32ul,
    "max_discard_seg" / cs.Int32ul,
    "discard_sector_alignment" / cs.Int32ul,
    "max_write_zeroes_sectors" / cs.Int32ul,
    "max_write_zeroes_seg" / cs.Int32ul,
    "write_zeroes_may_unmap" / cs.Int8ul,
    "unused1" / cs.Bytes(3),
    "max_secure_erase_sectors" / cs.Int32ul,
    "max_secure_erase_seg" / cs.Int32ul,
    "secure_erase_sector_alignment" / cs.Int32ul,
)
"""``struct virtio_blk_config`` up to the secure-erase fields (the zoned block is not offered)."""

VIRTIO_BLK_CONFIG_SIZE = virtio_blk_config.sizeof()

VIRTIO_BLK_REQ_HDR = struct.Struct("<IIQ")
"""``struct virtio_blk_req`` header: type, reserved, sector."""

VIRTIO_BLK_DWZ_SEG = struct.Struct("<QII")
"""``struct virtio_blk_discard_write_zeroes``: sector, num_sectors, flags."""
