"""What the vhost-user event loop watches for a device besides its kicks.

Devices are sans-IO: a block device learns of completions when it is told
(``process_completions``), a network device receives when it is told (``poll_rx``). A
*glue* object owns the descriptors that tell it: an eventfd the block backend's worker
threads write (``BlockBackend`` rule 4), or the network backend's own descriptor.

Rules:

1. ``sources()`` returns ``{fd: callback}`` for the descriptors to watch *now*; the loop
   asks after every batch of events, so a device can stop being woken (a NIC with no
   receive buffers leaves its backend's descriptor unwatched instead of spinning on it).
2. Callbacks run on the loop thread; a backend's notify hook only writes an eventfd (it
   runs on the backend's thread and must not call into the device).
3. ``close`` releases what the glue created (never the backend, which the caller owns).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["DeviceGlue", "NullGlue", "BlockGlue", "NetGlue", "glue_for"]


class DeviceGlue(Protocol):
    """The device-specific descriptors of the loop (rules 1–3)."""

    def sources(self) -> dict[int, Callable[[], None]]:
        """Descriptors to watch for readability now, with their callbacks."""
        ...

    def close(self) -> None:
        """Release what the glue created."""
        ...


class NullGlue:
    """A device woken only by its kicks."""

    def sources(self) -> dict[int, Callable[[], None]]:
        """Nothing to watch."""
        return {}

    def close(self) -> None:
        """Nothing to release."""


def _drain_eventfd(fd: int) -> None:
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass


class _Notifier:
    """An eventfd a backend thread writes and the loop watches."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def notify(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except (BlockingIOError, OSError):
            pass  # saturated (a wake-up is pending) or closed during teardown

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class BlockGlue:
    """Wakes a block device when its backend has completions (``set_notify``)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self._notifier = _Notifier()
        device.backend.set_notify(self._notifier.notify)

    def sources(self) -> dict[int, Callable[[], None]]:
        """The completion eventfd."""
        return {self._notifier.fd: self._on_ready}

    def _on_ready(self) -> None:
        _drain_eventfd(self._notifier.fd)
        self.device.process_completions()

    def close(self) -> None:
        """Unhook the backend and close the eventfd."""
        self.device.backend.set_notify(None)
        self._notifier.close()


class NetGlue:
    """Wakes a network device when frames arrive, while it can take them (rule 1)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self._notifier: _Notifier | None = None
        fd = device.backend.fileno()
        if fd is None:
            self._notifier = _Notifier()
            device.backend.set_notify(self._notifier.notify)
            fd = self._notifier.fd
        self._fd = fd

    def sources(self) -> dict[int, Callable[[], None]]:
        """The backend's descriptor, only while the device wants frames."""
        return {self._fd: self._on_ready} if self.device.wants_rx else {}

    def _on_ready(self) -> None:
        if self._notifier is not None:
            _drain_eventfd(self._notifier.fd)
        self.device.poll_rx()

    def close(self) -> None:
        """Unhook the backend (if hooked) and close the eventfd."""
        if self._notifier is not None:
            self.device.backend.set_notify(None)
            self._notifier.close()


def glue_for(device: Any) -> DeviceGlue:
    """The glue a device needs: block and network devices are recognised by their methods."""
    if hasattr(device, "process_completions") and hasattr(device, "backend"):
        return BlockGlue(device)
    if hasattr(device, "poll_rx") and hasattr(device, "backend"):
        return NetGlue(device)
    return NullGlue()
