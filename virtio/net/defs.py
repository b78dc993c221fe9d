"""VIRTIO 1.2 §5.1 network device constants. No logic lives here.

Names are the specification's: ``VIRTIO_NET_F_*`` feature *bit numbers*,
``VIRTIO_NET_HDR_*`` header flags and GSO types, ``VIRTIO_NET_CTRL_*`` control classes and
commands, ``VIRTIO_NET_S_*`` status bits.
"""

from __future__ import annotations

# -- §5.1.3 feature bits (bit numbers) ---------------------------------------------------
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_CTRL_RX = 18
VIRTIO_NET_F_CTRL_VLAN = 19
VIRTIO_NET_F_CTRL_RX_EXTRA = 20
VIRTIO_NET_F_GUEST_ANNOUNCE = 21
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_CTRL_MAC_ADDR = 23
VIRTIO_NET_F_HASH_REPORT = 57
VIRTIO_NET_F_RSS = 60
VIRTIO_NET_F_SPEED_DUPLEX = 63

# -- §5.1.4 status bits -----------------------------------------------------------------------
VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_S_ANNOUNCE = 2

# -- §5.1.6 struct virtio_net_hdr ---------------------------------------------------------------
VIRTIO_NET_HDR_SIZE = 12  # with num_buffers, always present with VIRTIO_F_VERSION_1
VIRTIO_NET_HDR_F_NEEDS_CSUM = 0b0000_0001
VIRTIO_NET_HDR_F_DATA_VALID = 0b0000_0010
VIRTIO_NET_HDR_F_RSC_INFO = 0b0000_0100
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

# -- §5.1.6.5 control virtqueue ------------------------------------------------------------------
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1

VIRTIO_NET_CTRL_RX = 0
VIRTIO_NET_CTRL_RX_PROMISC = 0
VIRTIO_NET_CTRL_RX_ALLMULTI = 1
VIRTIO_NET_CTRL_RX_ALLUNI = 2
VIRTIO_NET_CTRL_RX_NOMULTI = 3
VIRTIO_NET_CTRL_RX_NOUNI = 4
VIRTIO_NET_CTRL_RX_NOBCAST = 5

VIRTIO_NET_CTRL_MAC = 1
VIRTIO_NET_CTRL_MAC_TABLE_SET = 0
VIRTIO_NET_CTRL_MAC_ADDR_SET = 1

VIRTIO_NET_CTRL_VLAN = 2
VIRTIO_NET_CTRL_VLAN_ADD = 0
VIRTIO_NET_CTRL_VLAN_DEL = 1

VIRTIO_NET_CTRL_ANNOUNCE = 3
VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0

VIRTIO_NET_CTRL_MQ = 4
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000

VIRTIO_NET_CTRL_GUEST_OFFLOADS = 5
VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET = 0

# -- sizes ---------------------------------------------------------------------------------------
ETH_HLEN = 14
ETH_ALEN = 6
VLAN_HLEN = 4
VLAN_N_VID = 4096
# §5.1.6.3: with GSO the largest incoming packet is 65589 bytes (14 + 40 + 65535).
VIRTIO_NET_MAX_FRAME = 65589
# A transmitted buffer longer than a 64 KiB frame plus the header is refused (len 0).
VIRTIO_NET_MAX_TX = 0x10000 + VIRTIO_NET_HDR_SIZE
VIRTIO_NET_CONFIG_MAC = 0
VIRTIO_NET_CONFIG_STATUS = 6

__all__ = [name for name in dir() if name.isupper() and not name.startswith("_")]
