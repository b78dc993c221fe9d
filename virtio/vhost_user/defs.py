"""vhost-user protocol constants (QEMU ``docs/interop/vhost-user.rst``). No logic lives here.

Names are the protocol document's (``VHOST_USER_SET_MEM_TABLE``,
``VHOST_USER_PROTOCOL_F_REPLY_ACK``); numbers are request ids, flag masks and *bit
numbers* for feature bits (``1 << VHOST_USER_F_PROTOCOL_FEATURES`` is the mask).
"""

from __future__ import annotations

# -- message header (§ Message Specification / Header) -----------------------------------
VHOST_USER_HDR_SIZE = 12  # u32 request, u32 flags, u32 size
VHOST_USER_VERSION = 0x1
VHOST_USER_VERSION_MASK = 0b0000_0011
VHOST_USER_REPLY_MASK = 0b0000_0100
VHOST_USER_NEED_REPLY_MASK = 0b0000_1000

# The largest payload this back-end accepts. QEMU's ``VhostUserMsg`` union is at most a
# memory table (8 + 8 * 32 bytes) or a config access (12 + 256 bytes); anything longer is
# not a message this protocol defines, and reading it would let a peer grow our buffer.
VHOST_USER_MAX_PAYLOAD = 4096
# SCM_RIGHTS descriptors per message: a SET_MEM_TABLE carries one per region.
VHOST_MEMORY_BASELINE_NREGIONS = 8
VHOST_USER_MAX_FDS = VHOST_MEMORY_BASELINE_NREGIONS
# Regions this back-end keeps at once with CONFIGURE_MEM_SLOTS (GET_MAX_MEM_SLOTS reply).
VHOST_USER_MAX_MEM_SLOTS = 32
VHOST_USER_MAX_CONFIG_SIZE = 256
VHOST_USER_CONFIG_HDR_SIZE = 12

# -- SET_VRING_KICK / CALL / ERR u64 payload ----------------------------------------------
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 1 << 8

# -- vring address flags (vhost_vring_addr.flags) ------------------------------------------
VHOST_VRING_F_LOG = 0

# -- dirty logging (§ Migration) -----------------------------------------------------------
VHOST_LOG_PAGE = 0x1000  # one log bit per page of guest-physical address space
# The largest log this back-end maps: one bit per 4 KiB page, so 32 MiB covers 1 TiB of
# guest addresses. A larger SET_LOG_BASE is refused (and the front-end cannot migrate).
VHOST_USER_MAX_LOG_SIZE = 32 << 20

# -- inflight I/O tracking (§ Inflight I/O tracking) ----------------------------------------
VHOST_USER_INFLIGHT_VERSION = 1
VHOST_USER_INFLIGHT_ALIGN = 64  # each queue region starts on a 64-byte boundary
VIRTQUEUE_MAX_SIZE = 32768  # the largest queue_size an inflight description may name

# -- SET_CONFIG flags ----------------------------------------------------------------------
VHOST_SET_CONFIG_TYPE_MASTER = 0  # front-end message for a driver-writable field
VHOST_SET_CONFIG_TYPE_MIGRATION = 1

# -- the virtio feature bit that announces protocol features -------------------------------
VHOST_USER_F_PROTOCOL_FEATURES = 30
VHOST_F_LOG_ALL = 26

# -- protocol feature bits ------------------------------------------------------------------
VHOST_USER_PROTOCOL_F_MQ = 0
VHOST_USER_PROTOCOL_F_LOG_SHMFD = 1
VHOST_USER_PROTOCOL_F_RARP = 2
VHOST_USER_PROTOCOL_F_REPLY_ACK = 3
VHOST_USER_PROTOCOL_F_MTU = 4
VHOST_USER_PROTOCOL_F_SLAVE_REQ = 5
VHOST_USER_PROTOCOL_F_CROSS_ENDIAN = 6
VHOST_USER_PROTOCOL_F_CRYPTO_SESSION = 7
VHOST_USER_PROTOCOL_F_PAGEFAULT = 8
VHOST_USER_PROTOCOL_F_CONFIG = 9
VHOST_USER_PROTOCOL_F_SLAVE_SEND_FD = 10
VHOST_USER_PROTOCOL_F_HOST_NOTIFIER = 11
VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 12
VHOST_USER_PROTOCOL_F_RESET_DEVICE = 13
VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS = 14
VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15
VHOST_USER_PROTOCOL_F_STATUS = 16

# -- front-end request ids ------------------------------------------------------------------
VHOST_USER_NONE = 0
VHOST_USER_GET_FEATURES = 1
VHOST_USER_SET_FEATURES = 2
VHOST_USER_SET_OWNER = 3
VHOST_USER_RESET_OWNER = 4
VHOST_USER_SET_MEM_TABLE = 5
VHOST_USER_SET_LOG_BASE = 6
VHOST_USER_SET_LOG_FD = 7
VHOST_USER_SET_VRING_NUM = 8
VHOST_USER_SET_VRING_ADDR = 9
VHOST_USER_SET_VRING_BASE = 10
VHOST_USER_GET_VRING_BASE = 11
VHOST_USER_SET_VRING_KICK = 12
VHOST_USER_SET_VRING_CALL = 13
VHOST_USER_SET_VRING_ERR = 14
VHOST_USER_GET_PROTOCOL_FEATURES = 15
VHOST_USER_SET_PROTOCOL_FEATURES = 16
VHOST_USER_GET_QUEUE_NUM = 17
VHOST_USER_SET_VRING_ENABLE = 18
VHOST_USER_SEND_RARP = 19
VHOST_USER_NET_SET_MTU = 20
VHOST_USER_SET_SLAVE_REQ_FD = 21
VHOST_USER_IOTLB_MSG = 22
VHOST_USER_SET_VRING_ENDIAN = 23
VHOST_USER_GET_CONFIG = 24
VHOST_USER_SET_CONFIG = 25
VHOST_USER_CREATE_CRYPTO_SESSION = 26
VHOST_USER_CLOSE_CRYPTO_SESSION = 27
VHOST_USER_POSTCOPY_ADVISE = 28
VHOST_USER_POSTCOPY_LISTEN = 29
VHOST_USER_POSTCOPY_END = 30
VHOST_USER_GET_INFLIGHT_FD = 31
VHOST_USER_SET_INFLIGHT_FD = 32
VHOST_USER_GPU_SET_SOCKET = 33
VHOST_USER_RESET_DEVICE = 34
VHOST_USER_VRING_KICK = 35
VHOST_USER_GET_MAX_MEM_SLOTS = 36
VHOST_USER_ADD_MEM_REG = 37
VHOST_USER_REM_MEM_REG = 38
VHOST_USER_SET_STATUS = 39
VHOST_USER_GET_STATUS = 40

REQUEST_NAMES: dict[int, str] = {
    value: name[len("VHOST_USER_"):]
    for name, value in dict(globals()).items()
    if name.startswith("VHOST_USER_")
    and isinstance(value, int)
    and not name.startswith(("VHOST_USER_PROTOCOL_F_", "VHOST_USER_F_", "VHOST_USER_MAX", "VHOST_USER_INFLIGHT_"))
    and not name.endswith(("_MASK", "_SIZE"))
    and name != "VHOST_USER_VERSION"
}
"""Request id -> name without the ``VHOST_USER_`` prefix (for traces and errors)."""


def request_name(request: int) -> str:
    """``"SET_MEM_TABLE"`` for 5, ``"request 99"`` for an unknown id."""
    return REQUEST_NAMES.get(request, f"request {request}")


__all__ = [name for name in dir() if name.isupper() and not name.startswith("_")] + ["request_name"]
