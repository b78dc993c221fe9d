"""VIRTIO 1.2 §5.2 block device constants. No logic lives here.

Names are the specification's (``VIRTIO_BLK_F_*`` feature *bit numbers*,
``VIRTIO_BLK_T_*`` request types, ``VIRTIO_BLK_S_*`` status values).
"""

from __future__ import annotations

# -- §5.2.3 feature bits (bit numbers) ---------------------------------------------------
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14
VIRTIO_BLK_F_LIFETIME = 15
VIRTIO_BLK_F_SECURE_ERASE = 16
VIRTIO_BLK_F_ZONED = 17

# -- §5.2.6 request types -------------------------------------------------------------------
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_GET_LIFETIME = 10
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_T_SECURE_ERASE = 14

# -- §5.2.6 status values -------------------------------------------------------------------
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

# -- sizes -------------------------------------------------------------------------------------
VIRTIO_BLK_SECTOR_SIZE = 512  # §5.2.6: sector numbers count 512-byte units
VIRTIO_BLK_SECTOR_SHIFT = 9
VIRTIO_BLK_REQ_HDR_SIZE = 16  # struct virtio_blk_req: le32 type, le32 reserved, le64 sector
VIRTIO_BLK_ID_BYTES = 20  # §5.2.6: the device ID string is up to 20 bytes
VIRTIO_BLK_DWZ_SEG_SIZE = 16  # struct virtio_blk_discard_write_zeroes
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 0b0000_0001
VIRTIO_BLK_CONFIG_WRITEBACK = 32  # offset of ``writeback`` in struct virtio_blk_config

__all__ = [name for name in dir() if name.isupper() and not name.startswith("_")]
