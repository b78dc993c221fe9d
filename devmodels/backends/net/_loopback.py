"""Two in-memory network backends wired back to back, for tests and in-process setups.

Rules:

1. ``LoopbackBackend.pair()`` makes ends A and B: a frame sent on one is received on the
   other, in order. Each end's inbox holds at most ``capacity`` frames; what happens when
   it is full is the ``overflow`` policy: ``"drop-newest"`` (the arriving frame is lost),
   ``"drop-oldest"`` (the oldest queued frame is lost) — both counted in the *receiving*
   end's ``dropped`` and ``send`` returns ``True`` — or ``"backpressure"`` (``send``
   returns ``False``, nothing is lost).
2. Each end has an eventfd, readable while its inbox is non-empty (``fileno()``), and calls
   its ``notify`` hook on the sender's thread when a frame lands in an empty inbox.
3. With ``offloads`` given, either end may carry a virtio-net header (``set_vnet_hdr``). A
   frame keeps its header across the wire; an end without a header receives it finished
   (``strip_vnet_header``: checksum completed, GSO frames dropped and counted), and an end
   with a header receives a zero header before a frame sent without one.
4. Frames sent after the peer closed are lost and counted in the sender's ``dropped``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Literal, TYPE_CHECKING

from ..._errors import UsageError
from .._net import NetOffloads
from ._packets import VNET_HDR_SIZE, strip_vnet_header

__all__ = ["LoopbackBackend", "Overflow"]

Overflow = Literal["drop-newest", "drop-oldest", "backpressure"]
_OVERFLOWS = ("drop-newest", "drop-oldest", "backpressure")
_ZERO_HDR = bytes(VNET_HDR_SIZE)
_log = logging.getLogger(__name__)


class _Wire:
    """The lock both ends of a pair share."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


class LoopbackBackend:
    """One end of an in-memory link; make a linked pair with ``LoopbackBackend.pair()``."""

    def __init__(self, wire: _Wire, *, capacity: int, overflow: Overflow, offloads: NetOffloads) -> None:
        self._wire = wire
        self._capacity = capacity
        self._overflow = overflow
        self._offloads = offloads
        # (vnet header or None, frame body); the header is kept so rule 3 can convert.
        self._inbox: deque[tuple[bytes | None, bytes]] = deque()
        self._peer: LoopbackBackend | None = None
        self._vnet = False
        self._dropped = 0
        self._notify: Callable[[], None] | None = None
        self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False

    @classmethod
    def pair(
        cls,
        *,
        capacity: int = 256,
        overflow: Overflow = "drop-newest",
        offloads: NetOffloads | None = None,
    ) -> tuple[LoopbackBackend, LoopbackBackend]:
        """Two connected ends.

        Args:
            capacity: frames each end's inbox holds (rule 1).
            overflow: the full-inbox policy (rule 1).
            offloads: what both ends may carry in a virtio-net header (rule 3); none by default.

        Raises:
            UsageError: a bad argument.
        """
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise UsageError(f"capacity must be a positive integer, got {capacity!r}")
        if overflow not in _OVERFLOWS:
            raise UsageError(f"overflow must be one of {_OVERFLOWS}, got {overflow!r}")
        wire = _Wire()
        offloads = offloads if offloads is not None else NetOffloads()
        a = cls(wire, capacity=capacity, overflow=overflow, offloads=offloads)
        b = cls(wire, capacity=capacity, overflow=overflow, offloads=offloads)
        a._peer, b._peer = b, a
        return a, b

    # -- NetBackend -----------------------------------------------------------------------

    @property
    def offloads(self) -> NetOffloads:
        """What this end can carry in a virtio-net header (given to ``pair``)."""
        return self._offloads

    @property
    def dropped(self) -> int:
        """Frames lost at this end: inbox overflow, GSO frames it could not take, or sent
        after the peer closed."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Frames waiting in this end's inbox."""
        with self._wire.lock:
            return len(self._inbox)

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Pass one frame to the peer; ``False`` only under ``"backpressure"`` when it is full.

        Raises:
            UsageError: this end is closed.
        """
        data = bytes(frame)
        header: bytes | None = None
        with self._wire.lock:
            if self._closed:
                raise UsageError("loopback backend is closed")
            if self._vnet:
                if len(data) < VNET_HDR_SIZE:
                    self._dropped += 1  # no header at all: nothing sensible to deliver
                    return True
                header, data = data[:VNET_HDR_SIZE], data[VNET_HDR_SIZE:]
            peer = self._peer
            if peer is None or peer._closed:
                self._dropped += 1
                return True
            inbox = peer._inbox
            if len(inbox) >= peer._capacity:
                if self._overflow == "backpressure":
                    return False
                peer._dropped += 1
                if self._overflow == "drop-newest":
                    return True
                inbox.popleft()
            inbox.append((header, data))
            wake = len(inbox) == 1
            notify = peer._notify
            if wake:
                os.eventfd_write(peer._event, 1)
        if wake and notify is not None:
            try:
                notify()
            except Exception:  # the peer's hook failing is not the sender's error
                _log.exception("loopback notify hook raised")
        return True

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` frames, oldest first.

        Raises:
            UsageError: this end is closed.
        """
        out: list[bytes] = []
        with self._wire.lock:
            if self._closed:
                raise UsageError("loopback backend is closed")
            while self._inbox and len(out) < limit:
                header, data = self._inbox.popleft()
                if self._vnet:
                    out.append((header or _ZERO_HDR) + data)
                elif header is None:
                    out.append(data)
                else:
                    finished = strip_vnet_header(header + data)
                    if finished is None:
                        self._dropped += 1
                    else:
                        out.append(finished)
            if not self._inbox:
                try:
                    os.eventfd_read(self._event)
                except BlockingIOError:
                    pass
        return out

    def set_vnet_hdr(self, enabled: bool) -> None:
        """Frames at this end carry a 12-byte virtio-net header (rule 3).

        Raises:
            UsageError: enabling it on a pair made without offloads.
        """
        if enabled and not self._offloads.any:
            raise UsageError("this loopback pair carries no virtio-net header (pair(offloads=...))")
        with self._wire.lock:
            self._vnet = bool(enabled)

    def fileno(self) -> int | None:
        """An eventfd that is readable while frames are waiting."""
        return None if self._closed else self._event

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Called on the sender's thread when a frame lands in this end's empty inbox."""
        with self._wire.lock:
            self._notify = notify

    def close(self) -> None:
        """Drop queued frames and release the eventfd. Idempotent."""
        with self._wire.lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.clear()
            self._notify = None
        os.close(self._event)

    def __enter__(self) -> LoopbackBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # the static proof that LoopbackBackend implements the interface
    from .._net import NetBackend

    def _implements(backend: LoopbackBackend) -> NetBackend:
        return backend
