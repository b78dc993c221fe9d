"""vhost-user back-end (QEMU ``docs/interop/vhost-user.rst``) for any devmodels virtio device.

- ``VhostUserServer``: UNIX socket server and event loop (kick/call eventfds, one
  front-end at a time, survives front-ends going away).
- ``VhostUserSession``: the protocol state machine of one connection, driving a
  ``VirtioDevice`` (features, memory table, vrings, config space).
- ``MessageReader`` / ``encode*`` / ``decode*``: message framing and payloads (sans-IO).
- ``MemoryTable``: the front-end's memfd regions mapped into the device's ``GuestMemory``,
  with user-address translation for ring addresses.
- ``glue``: the device's wake-ups on the loop (``ServedGlue``: any ``ServedDevice``).
- ``inflight``, ``inflight_split``, ``inflight_packed``: inflight I/O tracking, so that a
  back-end started after a crash resubmits what its predecessor held (session rule 7).
- ``dirty_log``, ``atomic_bits``: the shared dirty log of a migrating front-end (rule 8);
  ``tap``: what a running ring's pops and pushes are recorded through.
- ``testing``: a fake front-end (``FakeFrontEnd``) over shared memfd RAM.
- ``defs``: protocol constants. The command is ``devmodels vhost-user`` (``harness.serve``).

The rule every part keeps (and every device served here must keep, ``virtio.device``):
no guest action and no front-end message may end the server process or stall its rings
beyond a stated bound. Malformed messages are refused or end that connection only
(``session`` rule 1); malformed rings take the device to DEVICE_NEEDS_RESET, which the
guest's reset leaves (``session`` rule 6); a front-end that does not read its replies is
disconnected past a bound (``backend`` rule 2); a driver's late notification-suppression
store delays a ring by at most a second (``backend`` rule 5). A ``UsageError`` that a
guest or a front-end can reach is a bug.
"""

from . import defs
from .backend import SessionTransport, VhostUserServer
from .dirty_log import DirtyLog, LogError
from .glue import DeviceGlue, ServedGlue
from .inflight import InflightBuffer, InflightError
from .memory import MappedRegion, MemoryTable, MemoryTableError
from .messages import (
    ConfigAccess,
    InflightArea,
    LogArea,
    Message,
    MessageReader,
    ProtocolError,
    Region,
    VringAddr,
    decode_config,
    decode_inflight,
    decode_log,
    decode_mem_reg,
    decode_memory,
    decode_u64,
    decode_vring_addr,
    decode_vring_state,
    encode,
    encode_config,
    encode_inflight,
    encode_log,
    encode_mem_reg,
    encode_memory,
    encode_u64,
    encode_vring_addr,
    encode_vring_state,
)
from .session import PROTOCOL_FEATURES, UNSUPPORTED_TRANSPORT_FEATURES, VhostUserSession, VringState

__all__ = [
    "defs",
    "VhostUserServer",
    "SessionTransport",
    "VhostUserSession",
    "VringState",
    "PROTOCOL_FEATURES",
    "UNSUPPORTED_TRANSPORT_FEATURES",
    "DeviceGlue",
    "ServedGlue",
    "DirtyLog",
    "LogError",
    "InflightBuffer",
    "InflightError",
    "InflightArea",
    "LogArea",
    "encode_inflight",
    "encode_log",
    "decode_inflight",
    "decode_log",
    "MemoryTable",
    "MemoryTableError",
    "MappedRegion",
    "Message",
    "MessageReader",
    "ProtocolError",
    "Region",
    "VringAddr",
    "ConfigAccess",
    "encode",
    "encode_u64",
    "encode_vring_state",
    "encode_vring_addr",
    "encode_config",
    "encode_memory",
    "encode_mem_reg",
    "decode_u64",
    "decode_vring_state",
    "decode_vring_addr",
    "decode_memory",
    "decode_mem_reg",
    "decode_config",
]
