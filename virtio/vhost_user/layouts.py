"""Wire layouts of vhost-user messages (QEMU ``docs/interop/vhost-user.rst``).

All numbers are in the machine's native byte order (§ Message Specification); the
layouts below use construct's native-order integers, and the per-message header a
precompiled ``struct.Struct`` (it is parsed for every message, CONVENTIONS: layouts).

=========================  =====  ===========================================================
payload                    bytes  fields
=========================  =====  ===========================================================
header                     12     u32 request, u32 flags, u32 size
u64                        8      u64
vring state                8      u32 index, u32 num
vring address              40     u32 index, u32 flags, u64 descriptor, u64 used,
                                  u64 available, u64 log (addresses in front-end user space)
memory regions             8+32n  u32 num regions, u32 padding, n x region
one region                 32     u64 guest address, u64 size, u64 user address,
                                  u64 mmap offset
single memory region       40     u64 padding, region
device config space        12+n   u32 offset, u32 size, u32 flags, n bytes
log description            16     u64 mmap size, u64 mmap offset
inflight description       24     u64 mmap size, u64 mmap offset, u16 num queues, u16 queue
                                  size, 4 bytes of padding (QEMU's ``VhostUserInflight`` is
                                  not packed)
=========================  =====  ===========================================================

Rules: decoding never trusts a value; the protocol layer (``messages``) checks every size
before it parses, and the session checks every value after.
"""

from __future__ import annotations

import struct

import construct as cs

__all__ = [
    "HEADER",
    "U64",
    "VhostVringState",
    "VhostVringAddr",
    "VhostUserMemoryRegion",
    "VhostUserMemory",
    "VhostUserMemRegMsg",
    "VhostUserConfigHeader",
    "VhostUserLog",
    "VhostUserInflight",
    "VRING_STATE_SIZE",
    "VRING_ADDR_SIZE",
    "MEMORY_REGION_SIZE",
    "MEMORY_HEADER_SIZE",
    "MEM_REG_MSG_SIZE",
    "LOG_SIZE",
    "INFLIGHT_SIZE",
]

HEADER = struct.Struct("=III")
"""The message header: request, flags, size."""

U64 = struct.Struct("=Q")
"""A ``u64`` payload (features, a vring index for KICK/CALL/ERR, an ack)."""

VhostVringState = cs.Struct(
    "index" / cs.Int32un,
    "num" / cs.Int32un,
)
"""``struct vhost_vring_state``."""

VhostVringAddr = cs.Struct(
    "index" / cs.Int32un,
    "flags" / cs.Int32un,
    "desc_user_addr" / cs.Int64un,
    "used_user_addr" / cs.Int64un,
    "avail_user_addr" / cs.Int64un,
    "log_guest_addr" / cs.Int64un,
)
"""``struct vhost_vring_addr`` (note the order: descriptor, used, available)."""

VhostUserMemoryRegion = cs.Struct(
    "guest_phys_addr" / cs.Int64un,
    "memory_size" / cs.Int64un,
    "userspace_addr" / cs.Int64un,
    "mmap_offset" / cs.Int64un,
)
"""``VhostUserMemoryRegion``."""

VhostUserMemory = cs.Struct(
    "nregions" / cs.Int32un,
    "padding" / cs.Int32un,
    "regions" / cs.Array(cs.this.nregions, VhostUserMemoryRegion),
)
"""``VhostUserMemory``: the SET_MEM_TABLE payload (as many regions as ``nregions``)."""

VhostUserMemRegMsg = cs.Struct(
    "padding" / cs.Int64un,
    "region" / VhostUserMemoryRegion,
)
"""``VhostUserMemRegMsg``: the ADD_MEM_REG / REM_MEM_REG payload."""

VhostUserConfigHeader = cs.Struct(
    "offset" / cs.Int32un,
    "size" / cs.Int32un,
    "flags" / cs.Int32un,
)
"""The fixed part of ``VhostUserConfig``; ``size`` bytes of configuration follow."""

VhostUserLog = cs.Struct(
    "mmap_size" / cs.Int64un,
    "mmap_offset" / cs.Int64un,
)
"""``VhostUserLog``: the SET_LOG_BASE payload (the log is mapped from the message's fd)."""

VhostUserInflight = cs.Struct(
    "mmap_size" / cs.Int64un,
    "mmap_offset" / cs.Int64un,
    "num_queues" / cs.Int16un,
    "queue_size" / cs.Int16un,
    "padding" / cs.Padding(4),
)
"""``VhostUserInflight``: GET_INFLIGHT_FD / SET_INFLIGHT_FD payload and reply."""

VRING_STATE_SIZE = VhostVringState.sizeof()
VRING_ADDR_SIZE = VhostVringAddr.sizeof()
MEMORY_REGION_SIZE = VhostUserMemoryRegion.sizeof()
MEMORY_HEADER_SIZE = 8
MEM_REG_MSG_SIZE = VhostUserMemRegMsg.sizeof()
LOG_SIZE = VhostUserLog.sizeof()
INFLIGHT_SIZE = VhostUserInflight.sizeof()
