"""What the vhost-user event loop watches for a device besides its kicks.

Devices are sans-IO and every one implements ``devmodels.runtime.ServedDevice``: the
descriptors it wants watched now, a waker its backends' threads call, and ``run_posted``
to collect what they announced. ``ServedGlue`` is that protocol's adapter to this loop.

Rules:

1. ``sources()`` returns ``{fd: callback}`` for the descriptors to watch *now*: the
   device's own (``watched_fds``, e.g. a network backend while the device wants frames)
   and the waker's eventfd. The loop asks after every batch of events, so a device can
   stop being woken (a NIC with no receive buffers leaves its backend's descriptor
   unwatched instead of spinning on it).
2. Callbacks run on the loop thread; the waker only writes an eventfd (it runs on a
   backend's thread and never calls into the device); the eventfd's callback runs the
   device's ``run_posted``.
3. ``close`` unbinds the waker and releases the eventfd (never the backend, which the
   caller owns).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from devmodels.runtime import ServedDevice

__all__ = ["DeviceGlue", "ServedGlue"]


class DeviceGlue(Protocol):
    """The device-specific descriptors of the loop (rules 1–3)."""

    def sources(self) -> dict[int, Callable[[], None]]:
        """Descriptors to watch for readability now, with their callbacks."""
        ...

    def close(self) -> None:
        """Release what the glue created."""
        ...


class ServedGlue:
    """Any ``ServedDevice`` on the vhost-user loop (rules 1–3)."""

    def __init__(self, device: ServedDevice) -> None:
        self.device = device
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        device.bind_waker(self._wake)

    def _wake(self) -> None:  # any thread (rule 2)
        try:
            os.eventfd_write(self._fd, 1)
        except (BlockingIOError, OSError):
            pass  # saturated (a wake-up is pending) or closed during teardown

    def sources(self) -> dict[int, Callable[[], None]]:
        """The device's descriptors and the waker's eventfd (rule 1)."""
        sources = dict(self.device.watched_fds())
        if self._fd >= 0:
            sources[self._fd] = self._on_wake
        return sources

    def _on_wake(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            pass
        self.device.run_posted()

    def close(self) -> None:
        """Unbind the waker and close the eventfd (rule 3)."""
        if self._fd >= 0:
            self.device.bind_waker(None)
            os.close(self._fd)
            self._fd = -1
