"""Receive side of virtio-net (VIRTIO 1.2 §5.1.6.3, §5.1.6.4, §5.1.6.5.1–3, §5.1.6.5.6).

Rules:

1. ``RxFilter`` is the receive filter the control queue programs: promiscuous and
   all-multi/all-uni modes, the no-multi/no-uni/no-broadcast suppressions, the unicast and
   multicast MAC tables and the VLAN table. Filtering is best effort by the spec ("unwanted
   packets could still arrive") but never lets through what a negotiated suppression
   forbids. Tables are bounded (``MAC_TABLE_MAX`` each; more entries switch the filter to
   the matching all-mode, as the spec's footnote allows).
2. ``flow_key`` is symmetric (a flow and its replies hash alike), so a flow last
   transmitted on transmitqX steers its incoming packets to receiveqX (§5.1.6.5.6.1).
3. ``scatter`` writes one packet (header included) across the device-writable segments of
   one or more chains and returns what each chain received; it checks every segment
   against guest RAM before writing any (``GuestMemory.write`` does), so a bad buffer fails
   as a whole.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from devmodels import GuestMemory

from ..queue.chain import Chain

from .defs import ETH_ALEN, ETH_HLEN, VLAN_N_VID

__all__ = ["RxFilter", "MAC_TABLE_MAX", "flow_key", "scatter", "vlan_id"]

MAC_TABLE_MAX = 64
"""Entries kept per MAC table; a longer table turns on all-uni / all-multi."""

BROADCAST = b"\xff" * ETH_ALEN
_ETH_P_8021Q = 0x8100
_ETH_P_IPV4 = 0x0800
_IPV4_PORTS = struct.Struct("!HH")


def vlan_id(frame: bytes | bytearray | memoryview) -> int | None:
    """The VLAN id of an 802.1Q-tagged frame, else ``None``."""
    if len(frame) >= ETH_HLEN + 4 and frame[12] == 0x81 and frame[13] == 0x00:
        return ((frame[14] << 8) | frame[15]) & 0x0FFF
    return None


class RxFilter:
    """The receive filter of §5.1.6.5.1–3 (rule 1)."""

    __slots__ = ("mac", "promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast", "uni", "multi", "vlans",
                 "uni_overflow", "multi_overflow")

    def __init__(self, mac: bytes) -> None:
        self.mac = mac
        self.reset(mac)

    def reset(self, mac: bytes) -> None:
        """The state after a device reset: an empty MAC table (§5.1.6.5.2.1) and VLAN table
        (§5.1.6.5.3), and promiscuous mode on (what QEMU does; Linux turns it off)."""
        self.mac = mac
        self.promisc = True
        self.allmulti = False
        self.alluni = False
        self.nomulti = False
        self.nouni = False
        self.nobcast = False
        self.uni: list[bytes] = []
        self.multi: list[bytes] = []
        self.uni_overflow = False
        self.multi_overflow = False
        self.vlans = bytearray(VLAN_N_VID // 8)

    def set_tables(self, uni: Sequence[bytes], multi: Sequence[bytes]) -> None:
        """Replace the MAC tables (rule 1: bounded, overflow means all-mode)."""
        self.uni_overflow = len(uni) > MAC_TABLE_MAX
        self.multi_overflow = len(multi) > MAC_TABLE_MAX
        self.uni = [] if self.uni_overflow else [bytes(m) for m in uni]
        self.multi = [] if self.multi_overflow else [bytes(m) for m in multi]

    def set_vlan(self, vid: int, present: bool) -> None:
        """Add or remove a VLAN id (0..4095)."""
        if present:
            self.vlans[vid >> 3] |= 1 << (vid & 7)
        else:
            self.vlans[vid >> 3] &= ~(1 << (vid & 7)) & 0xFF

    def accepts(self, frame: bytes | bytearray | memoryview, *, mac_filter: bool, vlan_filter: bool) -> bool:
        """Whether ``frame`` passes the filters that were negotiated."""
        if len(frame) < ETH_HLEN:
            return False
        if vlan_filter:
            vid = vlan_id(frame)
            # §5.1.6.5.3.1: tagged packets whose VLAN is absent from the table are dropped.
            if vid is not None and not self.vlans[vid >> 3] >> (vid & 7) & 1:
                return False
        if not mac_filter:
            return True
        dst = bytes(frame[:ETH_ALEN])
        if dst == BROADCAST:
            return not self.nobcast
        if dst[0] & 1:  # multicast
            if self.nomulti:
                return False
            return self.promisc or self.allmulti or self.multi_overflow or dst in self.multi
        if self.nouni:
            return False
        return self.promisc or self.alluni or self.uni_overflow or dst == self.mac or dst in self.uni


def flow_key(frame: bytes | bytearray | memoryview) -> int | None:
    """A symmetric key of an IPv4 TCP/UDP flow (rule 2), or ``None`` for other frames."""
    offset = ETH_HLEN
    if len(frame) < offset + 20:
        return None
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype == _ETH_P_8021Q:
        if len(frame) < offset + 24:
            return None
        ethertype = (frame[16] << 8) | frame[17]
        offset += 4
    if ethertype != _ETH_P_IPV4 or frame[offset] >> 4 != 4:
        return None
    ihl = (frame[offset] & 0x0F) * 4
    proto = frame[offset + 9]
    src = bytes(frame[offset + 12 : offset + 16])
    dst = bytes(frame[offset + 16 : offset + 20])
    ports: tuple[int, int] = (0, 0)
    if proto in (6, 17) and ihl >= 20 and len(frame) >= offset + ihl + 4:
        ports = _IPV4_PORTS.unpack_from(frame, offset + ihl)
    a, b = (src, ports[0]), (dst, ports[1])
    return hash((proto, min(a, b), max(a, b)))


def scatter(memory: GuestMemory, chains: Sequence[Chain], data: bytes | bytearray | memoryview) -> list[int]:
    """Write ``data`` across the writable segments of ``chains`` in order (rule 3).

    Returns the bytes written into each chain (every chain but the last completely full,
    §5.1.6.4.2). The caller made sure the chains hold ``data``.

    Raises:
        GuestMemoryError: a segment is not guest RAM; earlier segments may be written.
    """
    view = memoryview(data)
    pos = 0
    total = len(view)
    written: list[int] = []
    for chain in chains:
        start = pos
        for gpa, length in chain.writable:
            if pos >= total:
                break
            take = min(length, total - pos)
            memory.write(gpa, view[pos : pos + take])
            pos += take
        written.append(pos - start)
    return written
