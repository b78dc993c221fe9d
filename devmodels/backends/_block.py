"""The block backend interface shared by virtio-blk, AHCI and vhost-user-blk.

Rules:

1. A device never does file I/O. It turns a guest command into ``BlockRequest`` objects,
   hands them to ``submit`` and later collects ``BlockCompletion`` objects with
   ``completions()`` on its own thread of control (sans-IO: h11 ``send``/``next_event``).
2. ``submit`` never blocks on I/O and never raises for guest-caused conditions; range
   checks against ``capacity`` are the device's job (it knows the architected error), and a
   backend that still sees a bad range completes it with ``BlockStatus.IO_ERROR``.
3. Data moves zero-copy between the backing store and guest RAM: the request carries
   ``(gpa, length)`` segments and the backend takes ``memory.views(...)`` for the duration
   of the I/O only. The VMM must ``drain()`` before it removes guest RAM regions.
4. ``notify`` (optional) is called when completions become ready, so a VMM loop can wake
   (write an eventfd, set a threading.Event): from a worker thread, or from inside
   ``submit`` for a request completed at once (rejected, or a page-cache read served
   inline). Either way it must not call into the device.
5. A short read past the end of the backing file is an ``IO_ERROR``, never garbage; FLUSH
   completes only after every write completed before it is durable (fdatasync).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .._memory import GuestMemory

__all__ = ["BlockOp", "BlockStatus", "BlockRequest", "BlockCompletion", "BlockBackend"]


class BlockOp(enum.Enum):
    """What a request does."""

    READ = "read"
    WRITE = "write"
    FLUSH = "flush"
    DISCARD = "discard"
    WRITE_ZEROES = "write-zeroes"


class BlockStatus(enum.Enum):
    """How a request ended."""

    OK = "ok"
    IO_ERROR = "io-error"
    UNSUPPORTED = "unsupported"


@dataclass
class BlockRequest:
    """One request.

    Attributes:
        op: the operation.
        offset: byte offset in the disk (multiple of ``logical_block_size`` for I/O).
        length: bytes (for READ/WRITE the sum of the segment lengths; for DISCARD and
            WRITE_ZEROES the range length; 0 for FLUSH).
        segments: ``(gpa, length)`` pieces of guest RAM to read into or write from.
        tag: the device's own identifier, returned in the completion.
        unmap: for WRITE_ZEROES, the device allows deallocation (punch hole).
    """

    op: BlockOp
    offset: int
    length: int
    segments: Sequence[tuple[int, int]] = ()
    tag: object = None
    unmap: bool = False


@dataclass
class BlockCompletion:
    """The result of one request."""

    tag: object
    status: BlockStatus
    transferred: int = 0
    error: str = field(default="", compare=False)


class BlockBackend(Protocol):
    """A disk image the devices read and write."""

    @property
    def capacity(self) -> int:
        """Size in bytes."""
        ...

    @property
    def readonly(self) -> bool:
        """Writes, discards and write-zeroes are refused."""
        ...

    @property
    def logical_block_size(self) -> int:
        """Usually 512."""
        ...

    @property
    def supports_discard(self) -> bool:
        """DISCARD does something (punches holes)."""
        ...

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        """Start a request (rules 1–3)."""
        ...

    def completions(self) -> list[BlockCompletion]:
        """Every completion ready now (non-blocking); each is returned once."""
        ...

    def drain(self) -> None:
        """Wait until every submitted request has completed (reset, RAM removal)."""
        ...

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Set the wake-up hook of rule 4."""
        ...

    def close(self) -> None:
        """Drain and release the backing store."""
        ...
