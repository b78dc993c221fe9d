"""Constants of QEMU 7.2's multi-process ("mpqemu") protocol. Constants only.

Names follow ``include/hw/remote/mpqemu-link.h`` of QEMU 7.2 (the enum ``MPQemuCmd``,
``REMOTE_MAX_FDS``, ``MPQEMU_MSG_HDR_SIZE``). Later QEMU releases trimmed the command set;
these are the values 7.2's ``x-pci-proxy-dev`` sends.

The protocol is host-local: structures are laid out as the C compiler of an LP64 Linux
host lays them out (``int`` 4 bytes, ``size_t``/``hwaddr``/``off_t`` 8 bytes, native byte
order), which ``layouts.py`` spells out with explicit padding.
"""

from __future__ import annotations

__all__ = [
    "MPQEMU_CMD_SYNC_SYSMEM",
    "MPQEMU_CMD_RET",
    "MPQEMU_CMD_PCI_CFGWRITE",
    "MPQEMU_CMD_PCI_CFGREAD",
    "MPQEMU_CMD_BAR_WRITE",
    "MPQEMU_CMD_BAR_READ",
    "MPQEMU_CMD_SET_IRQFD",
    "MPQEMU_CMD_DEVICE_RESET",
    "MPQEMU_CMD_MAX",
    "CMD_NAMES",
    "REMOTE_MAX_FDS",
    "MPQEMU_MSG_HDR_SIZE",
    "MPQEMU_MSG_DATA_SIZE",
    "MPQEMU_RET_ERROR",
    "PCI_CONFIG_SPACE_SIZE",
]

# enum MPQemuCmd (mpqemu-link.h)
MPQEMU_CMD_SYNC_SYSMEM = 0
MPQEMU_CMD_RET = 1
MPQEMU_CMD_PCI_CFGWRITE = 2
MPQEMU_CMD_PCI_CFGREAD = 3
MPQEMU_CMD_BAR_WRITE = 4
MPQEMU_CMD_BAR_READ = 5
MPQEMU_CMD_SET_IRQFD = 6
MPQEMU_CMD_DEVICE_RESET = 7
MPQEMU_CMD_MAX = 8

CMD_NAMES: dict[int, str] = {
    MPQEMU_CMD_SYNC_SYSMEM: "SYNC_SYSMEM",
    MPQEMU_CMD_RET: "RET",
    MPQEMU_CMD_PCI_CFGWRITE: "PCI_CFGWRITE",
    MPQEMU_CMD_PCI_CFGREAD: "PCI_CFGREAD",
    MPQEMU_CMD_BAR_WRITE: "BAR_WRITE",
    MPQEMU_CMD_BAR_READ: "BAR_READ",
    MPQEMU_CMD_SET_IRQFD: "SET_IRQFD",
    MPQEMU_CMD_DEVICE_RESET: "DEVICE_RESET",
}

# The size of MPQemuMsg.fds[]: at most this many descriptors travel with one message.
REMOTE_MAX_FDS = 8

# offsetof(MPQemuMsg, data.u64): int cmd (4) + padding (4) + size_t size (8).
MPQEMU_MSG_HDR_SIZE = 16

# sizeof(MPQemuMsg.data): the largest member is SyncSysmemMsg, 3 arrays of 8 u64 = 192.
# mpqemu_msg_recv rejects a header whose size field exceeds it.
MPQEMU_MSG_DATA_SIZE = 192

# The u64 a RET carries for a failed config or BAR access (message.c: UINT64_MAX).
MPQEMU_RET_ERROR = (1 << 64) - 1

# x-pci-proxy-dev is a conventional PCI device: QEMU's host bridge only forwards config
# offsets below 256 to it.
PCI_CONFIG_SPACE_SIZE = 256
