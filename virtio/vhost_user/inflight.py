"""The inflight buffer: where a back-end records the requests it holds, so that a back-end
started after it crashed can resubmit them (vhost-user.rst § Inflight I/O tracking).

With VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD the back-end allocates the buffer (a memfd) when
the front-end asks for it (GET_INFLIGHT_FD: how many queues, how large), the front-end keeps
it and hands it to every back-end it connects to afterwards (SET_INFLIGHT_FD), including
one started after the previous one was killed. The buffer is one region per queue::

    | queue0 region | queue1 region | ... | queueN region |

laid out as the protocol document's ``QueueRegionSplit`` or ``QueueRegionPacked``
(``inflight_split``, ``inflight_packed`` track one queue each).

Rules:

1. Every region is ``region_size(queue_size)`` bytes: room for the larger (packed) layout,
   rounded up to ``VHOST_USER_INFLIGHT_ALIGN``, so the same buffer serves either layout.
   A buffer handed back (``adopt``) may have any stride the message allows
   (``mmap_size / num_queues``); a queue whose region is too small for its layout is not
   tracked.
2. Nothing the front-end sends is trusted: ``create`` and ``adopt`` check the description
   (1..``VIRTQUEUE_MAX_SIZE`` entries per queue, a bounded number of queues, the
   descriptor a regular file at least ``offset + size`` long) and raise ``InflightError``
   having kept nothing; the regions' contents are checked by the trackers before they are
   used (a region that does not hold together is started afresh, never resubmitted from).
3. The buffer is mapped shared: a store reaches the front-end's copy at once, so a
   back-end killed at any instruction leaves what it had recorded so far.
4. Descriptors are the caller's: ``create`` returns a new memfd for the reply (the caller
   sends and closes it); ``adopt`` closes the descriptor once mapped (or refused).
5. A shared mapping past the end of its file faults (SIGBUS: the whole server dies) on
   access, and the front-end holds the file. ``create`` seals the memfd it answers at its
   size (``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``), so the buffer QEMU hands back is
   one nobody can truncate; ``adopt`` adds ``F_SEAL_SHRINK`` to a file that allows it
   before checking its size (``shared_file.map_shared``). A file that cannot be sealed
   is used as it is, as guest RAM's are (``memory`` rule 1).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from dataclasses import dataclass, field

from .defs import VHOST_USER_INFLIGHT_ALIGN, VIRTQUEUE_MAX_SIZE
from .messages import close_fds
from .shared_file import map_shared

__all__ = ["InflightBuffer", "InflightError", "Recovery", "region_size", "SPLIT_HEADER", "SPLIT_DESC",
           "PACKED_HEADER", "PACKED_DESC", "MAX_QUEUES"]

# QueueRegionSplit: u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16
# used_idx, then DescStateSplit[desc_num] of 16 bytes (u8 inflight, 5 bytes padding, u16
# next, u64 counter).
SPLIT_HEADER = 16
SPLIT_DESC = 16
# QueueRegionPacked: u64 features, u16 version, desc_num, free_head, old_free_head,
# used_idx, old_used_idx, u8 used_wrap_counter, old_used_wrap_counter, 7 bytes padding (the
# array that follows is 8-byte aligned: 32), then DescStatePacked[desc_num] of 32 bytes (u8
# inflight, u8 padding, u16 next, last, num, u64 counter, u16 id, flags, u32 len, u64 addr).
PACKED_HEADER = 32
PACKED_DESC = 32

MAX_QUEUES = 256
"""The most queues an inflight description may name (vring indices are 8 bits)."""


class InflightError(Exception):
    """An inflight description or buffer the back-end refuses (rule 2)."""


def region_size(queue_size: int) -> int:
    """Bytes of one queue's region in a buffer this back-end allocates (rule 1)."""
    need = max(SPLIT_HEADER + SPLIT_DESC * queue_size, PACKED_HEADER + PACKED_DESC * queue_size)
    return -(-need // VHOST_USER_INFLIGHT_ALIGN) * VHOST_USER_INFLIGHT_ALIGN


def _check_shape(num_queues: int, queue_size: int) -> None:
    if not 1 <= num_queues <= MAX_QUEUES:
        raise InflightError(f"{num_queues} queues (1..{MAX_QUEUES})")
    if not 1 <= queue_size <= VIRTQUEUE_MAX_SIZE:
        raise InflightError(f"queue size {queue_size} (1..{VIRTQUEUE_MAX_SIZE})")


@dataclass(frozen=True)
class Recovery:
    """What a tracker found in a region left by a previous back-end.

    Attributes:
        used: where the device's used position is (split: the used index; packed: the
            ring position of the next used descriptor).
        used_wrap: packed: the device ring wrap counter there (split: True).
        resubmit: the buffers still in flight, in the order they were taken (split: head
            descriptor indices; packed: each buffer's descriptors, 16 bytes each, in
            ``pvirtq_desc`` layout, its buffer id in the last).
        counts: packed: descriptors of each resubmitted buffer (split: empty).
        ids: packed: buffer id of each resubmitted buffer (split: empty).
    """

    used: int
    used_wrap: bool = True
    resubmit: tuple[int | bytes, ...] = ()
    counts: tuple[int, ...] = field(default=())
    ids: tuple[int, ...] = field(default=())


class InflightBuffer:
    """The whole shared buffer, mapped (rules 1–4). Build it with ``adopt``."""

    def __init__(self, mapping: mmap.mmap, start: int, size: int, num_queues: int, queue_size: int) -> None:
        self.mapping = mapping
        self.start = start
        self.size = size
        self.num_queues = num_queues
        self.queue_size = queue_size
        self.stride = size // num_queues

    @staticmethod
    def create(num_queues: int, queue_size: int) -> tuple[int, int]:
        """A new zeroed buffer for GET_INFLIGHT_FD: ``(memfd, mmap_size)`` (rule 4).

        Raises:
            InflightError: a bad shape; OSError: no memfd.
        """
        _check_shape(num_queues, queue_size)
        size = num_queues * region_size(queue_size)
        fd = os.memfd_create("vhost-user-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)  # rule 5
        except OSError:
            os.close(fd)
            raise
        return fd, size

    @classmethod
    def adopt(cls, fd: int, size: int, offset: int, num_queues: int, queue_size: int) -> InflightBuffer:
        """Map the buffer SET_INFLIGHT_FD hands over (rules 2 and 4). ``fd`` is consumed.

        Raises:
            InflightError: the description or the descriptor is unusable; nothing is kept.
        """
        try:
            _check_shape(num_queues, queue_size)
            if not 1 <= size <= num_queues * region_size(VIRTQUEUE_MAX_SIZE):
                raise InflightError(f"inflight buffer of {size} bytes")
            if size // num_queues < SPLIT_HEADER + SPLIT_DESC * queue_size:
                raise InflightError(f"{size} bytes cannot hold {num_queues} queue regions of {queue_size} entries")
            if offset < 0 or offset > 1 << 62:
                raise InflightError(f"inflight offset {offset:#x}")
            mapping, start = map_shared(fd, offset, size, what="inflight", noun="the inflight buffer",
                                        error=InflightError)
        finally:
            close_fds([fd])
        return cls(mapping, start, size, num_queues, queue_size)

    def region(self, index: int, need: int) -> int | None:
        """The offset in ``mapping`` of queue ``index``'s region if it exists and holds
        ``need`` bytes (rule 1), else ``None``."""
        if not 0 <= index < self.num_queues or self.stride < need:
            return None
        return self.start + index * self.stride

    def close(self) -> None:
        """Unmap the buffer."""
        if not self.mapping.closed:
            self.mapping.close()
