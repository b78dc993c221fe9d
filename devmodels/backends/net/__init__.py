"""Network backends: TAP, UNIX sockets, an in-memory loopback pair, pcap capture, and a
host-side responder (``devmodels.backends.net.responder``).

Every backend implements ``devmodels.backends.NetBackend``; the frame builders and
checksum helpers of ``_packets`` are exported for tests and driver simulators.
"""

from ._loopback import LoopbackBackend, Overflow
from ._packets import (
    VNET_HDR_SIZE,
    VirtioNetHdr,
    arp_frame,
    ethernet_frame,
    finish_checksum,
    format_mac,
    icmp_echo_frame,
    internet_checksum,
    ipv4_packet,
    parse_ipv4,
    parse_mac,
    strip_vnet_header,
    udp_checksum,
    udp_frame,
)
from ._pcap import LINKTYPE_ETHERNET, PcapRecord, PcapWriter, read_pcap
from ._socket import DEFAULT_MAX_FRAME, SocketBackend, SocketKind
from ._tap import TapBackend
from .responder import Responder, ResponderStats, UdpRecord

__all__ = [
    "LoopbackBackend",
    "Overflow",
    "SocketBackend",
    "SocketKind",
    "DEFAULT_MAX_FRAME",
    "TapBackend",
    "PcapWriter",
    "PcapRecord",
    "read_pcap",
    "LINKTYPE_ETHERNET",
    "Responder",
    "ResponderStats",
    "UdpRecord",
    "VNET_HDR_SIZE",
    "VirtioNetHdr",
    "arp_frame",
    "ethernet_frame",
    "finish_checksum",
    "format_mac",
    "icmp_echo_frame",
    "internet_checksum",
    "ipv4_packet",
    "parse_ipv4",
    "parse_mac",
    "strip_vnet_header",
    "udp_checksum",
    "udp_frame",
]
