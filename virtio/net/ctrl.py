"""The virtio-net control virtqueue (VIRTIO 1.2 §5.1.6.5).

Rules:

1. A command is ``class``, ``command``, command-specific data (device-readable) and an
   ``ack`` byte (the last device-writable byte). Commands are a table,
   ``(class, command) -> (required feature, handler)``; anything missing from it, or whose
   feature was not negotiated, is acked VIRTIO_NET_ERR.
2. Every length is checked exactly against the command's layout before a value is used;
   data is read once, bounded by ``MAX_CTRL_DATA`` (a MAC table beyond it is an error).
3. A command takes effect before its buffer is used (§5.1.6.5.2.1: "MUST update the MAC
   filtering table before it consumes the … command"); the handler returns the ack.
4. A chain without a writable byte cannot be answered: it goes back with length 0.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from devmodels import GuestMemory, GuestMemoryError

from ..queue.chain import Chain

from .defs import (
    ETH_ALEN,
    VIRTIO_NET_CONFIG_MAC,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI,
    VIRTIO_NET_CTRL_RX_ALLUNI,
    VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_NOMULTI,
    VIRTIO_NET_CTRL_RX_NOUNI,
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_CTRL_VLAN_DEL,
    VIRTIO_NET_ERR,
    VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_RX_EXTRA,
    VIRTIO_NET_F_CTRL_VLAN,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_OK,
    VLAN_N_VID,
)

if TYPE_CHECKING:
    from .device import VirtioNetDevice

__all__ = ["COMMANDS", "MAX_CTRL_DATA", "execute", "handle_ctrl_chain"]

MAX_CTRL_DATA = 4 + 6 * 4096 + 4 + 6 * 4096
"""The most command-specific bytes read (two MAC tables of 4096 entries)."""

_LE32 = struct.Struct("<I")
_LE16 = struct.Struct("<H")

Handler = Callable[["VirtioNetDevice", bytes], int]


def _flag(attr: str) -> Handler:
    def handler(device: VirtioNetDevice, data: bytes) -> int:
        # §5.1.6.5.1: one byte, 0 (off) or 1 (on).
        if len(data) != 1 or data[0] > 1:
            return VIRTIO_NET_ERR
        setattr(device.rx_filter, attr, bool(data[0]))
        return VIRTIO_NET_OK

    return handler


def _mac_table_set(device: VirtioNetDevice, data: bytes) -> int:
    # §5.1.6.5.2: le32 entries, entries * 6 bytes, twice (unicast, then multicast).
    tables: list[list[bytes]] = []
    pos = 0
    for _ in range(2):
        if pos + 4 > len(data):
            return VIRTIO_NET_ERR
        (entries,) = _LE32.unpack_from(data, pos)
        pos += 4
        end = pos + ETH_ALEN * entries
        if end > len(data):
            return VIRTIO_NET_ERR
        tables.append([data[i : i + ETH_ALEN] for i in range(pos, end, ETH_ALEN)])
        pos = end
    if pos != len(data):
        return VIRTIO_NET_ERR
    device.rx_filter.set_tables(tables[0], tables[1])
    return VIRTIO_NET_OK


def _mac_addr_set(device: VirtioNetDevice, data: bytes) -> int:
    if len(data) != ETH_ALEN:
        return VIRTIO_NET_ERR
    device.rx_filter.mac = bytes(data)
    # §5.1.6.5.2.1: the configuration's mac follows before the command is consumed. This
    # is the driver's own change, so no configuration change notification is sent.
    device.config[VIRTIO_NET_CONFIG_MAC : VIRTIO_NET_CONFIG_MAC + ETH_ALEN] = data
    return VIRTIO_NET_OK


def _vlan(present: bool) -> Handler:
    def handler(device: VirtioNetDevice, data: bytes) -> int:
        if len(data) != 2:
            return VIRTIO_NET_ERR
        (vid,) = _LE16.unpack(data)
        if vid >= VLAN_N_VID:
            return VIRTIO_NET_ERR
        device.rx_filter.set_vlan(vid, present)
        return VIRTIO_NET_OK

    return handler


def _mq_pairs_set(device: VirtioNetDevice, data: bytes) -> int:
    if len(data) != 2:
        return VIRTIO_NET_ERR
    (pairs,) = _LE16.unpack(data)
    # §5.1.6.5.6.1: the driver MUST NOT ask for 0 or more than max_virtqueue_pairs.
    if not VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= pairs <= device.max_pairs:
        return VIRTIO_NET_ERR
    device.set_active_pairs(pairs)
    return VIRTIO_NET_OK


COMMANDS: dict[tuple[int, int], tuple[int, Handler]] = {
    (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC): (VIRTIO_NET_F_CTRL_RX, _flag("promisc")),
    (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI): (VIRTIO_NET_F_CTRL_RX, _flag("allmulti")),
    (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLUNI): (VIRTIO_NET_F_CTRL_RX_EXTRA, _flag("alluni")),
    (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOMULTI): (VIRTIO_NET_F_CTRL_RX_EXTRA, _flag("nomulti")),
    (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOUNI): (VIRTIO_NET_F_CTRL_RX_EXTRA, _flag("nouni")),
    (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST): (VIRTIO_NET_F_CTRL_RX_EXTRA, _flag("nobcast")),
    (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET): (VIRTIO_NET_F_CTRL_RX, _mac_table_set),
    (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET): (VIRTIO_NET_F_CTRL_MAC_ADDR, _mac_addr_set),
    (VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD): (VIRTIO_NET_F_CTRL_VLAN, _vlan(True)),
    (VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_DEL): (VIRTIO_NET_F_CTRL_VLAN, _vlan(False)),
    (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET): (VIRTIO_NET_F_MQ, _mq_pairs_set),
}
"""The command table (rule 1): ``(class, command) -> (feature bit, handler)``."""


def execute(device: VirtioNetDevice, klass: int, command: int, data: bytes) -> int:
    """Run one command; return its ack (rule 1)."""
    entry = COMMANDS.get((klass, command))
    if entry is None or not device.has_feature(entry[0]):
        return VIRTIO_NET_ERR
    return entry[1](device, data)


def handle_ctrl_chain(device: VirtioNetDevice, chain: Chain, memory: GuestMemory) -> tuple[int, int | None]:
    """Execute the command in ``chain``; return ``(used length, ack)`` (rules 2–4)."""
    if chain.writable_len == 0:
        return 0, None
    ack_gpa = next(gpa + length - 1 for gpa, length in reversed(chain.writable) if length)
    ack = VIRTIO_NET_ERR
    readable_len = chain.readable_len
    if 2 <= readable_len <= 2 + MAX_CTRL_DATA:
        try:
            raw = b"".join(memory.read(g, n) for g, n in chain.readable if n)
        except GuestMemoryError:
            raw = b""
        if len(raw) >= 2:
            ack = execute(device, raw[0], raw[1], raw[2:])
    try:
        memory.store_u8(ack_gpa, ack)
    except GuestMemoryError:
        return 0, ack
    return 1, ack
