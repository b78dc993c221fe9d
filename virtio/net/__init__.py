"""virtio-net (VIRTIO 1.2 §5.1): a network device over any ``devmodels.backends.NetBackend``.

- ``VirtioNetDevice``: the device (sans-IO; the VMM calls ``poll_rx`` while ``wants_rx``).
- ``RxFilter``, ``flow_key``: receive filtering and flow steering (``rx``).
- ``read_packet``/``prepare_frame``: the transmit path (``tx``); ``ctrl``: the control queue.
- ``VirtioNetState``: the snapshot section; ``virtio_net_config``: the configuration layout.
- ``defs``: the specification's constants; ``testing.NetDriver``: a guest driver simulator.
"""

from . import ctrl, defs
from .device import NetStats, VirtioNetDevice
from .layouts import VIRTIO_NET_CONFIG_SIZE, VIRTIO_NET_HDR, virtio_net_config
from .rx import MAC_TABLE_MAX, RxFilter, flow_key, scatter
from .state import VirtioNetState
from .tx import prepare_frame, read_packet

__all__ = [
    "ctrl",
    "defs",
    "VirtioNetDevice",
    "NetStats",
    "VIRTIO_NET_CONFIG_SIZE",
    "VIRTIO_NET_HDR",
    "virtio_net_config",
    "MAC_TABLE_MAX",
    "RxFilter",
    "flow_key",
    "scatter",
    "VirtioNetState",
    "prepare_frame",
    "read_packet",
]
