"""Wire layouts of the virtio network device (VIRTIO 1.2 §5.1.4, §5.1.6).

``virtio_net_config`` is built with construct (rarely); the per-packet header uses a
precompiled ``struct.Struct`` (CONVENTIONS: layouts). All fields are little-endian.
"""

from __future__ import annotations

import struct

import construct as cs

__all__ = ["virtio_net_config", "VIRTIO_NET_HDR", "VIRTIO_NET_CONFIG_SIZE"]

virtio_net_config = cs.Struct(
    "mac" / cs.Bytes(6),
    "status" / cs.Int16ul,
    "max_virtqueue_pairs" / cs.Int16ul,
    "mtu" / cs.Int16ul,
    "speed" / cs.Int32ul,
    "duplex" / cs.Int8ul,
    "rss_max_key_size" / cs.Int8ul,
    "rss_max_indirection_table_length" / cs.Int16ul,
    "supported_hash_types" / cs.Int32ul,
)
"""``struct virtio_net_config`` (without the tunnel field, which needs HASH_TUNNEL)."""

VIRTIO_NET_CONFIG_SIZE = virtio_net_config.sizeof()

VIRTIO_NET_HDR = struct.Struct("<BBHHHHH")
"""``struct virtio_net_hdr``: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
num_buffers."""
