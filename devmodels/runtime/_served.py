"""What a serving loop needs from a device: one protocol every device implements.

Rules:

1. Every device a loop serves — out of process (mpqemu, vfio-user, vhost-user) or inside an
   in-process VMM — implements ``ServedDevice``: the descriptors it waits on now and what to
   call when each is ready (``watched_fds``), its next timer deadline (``next_deadline``,
   then ``tick``), its posted work (``posted``, ``run_posted``), and ``quiesce``. The device
   stays sans-IO (CONVENTIONS: sans-io): the descriptors belong to its
   backends, and time comes in through ``tick(now_ns)``.
2. Backends that complete on threads of their own call the waker the loop binds
   (``bind_waker``). The waker only wakes the loop; the loop's thread then calls
   ``run_posted``. Nothing calls into a device from another thread.
3. ``watched_fds`` is asked again after every batch of work: a device that cannot take
   input now (a NIC without receive buffers) leaves that descriptor out instead of having the
   loop spin on it, and asks for it again once the guest gives it room.
4. Posted work: a register write that starts long work (fetching commands, walking rings)
   may leave it for ``run_posted``, which the loop calls once the access has been answered —
   the posted write of PCI: the guest runs on while the device works. A device runs its
   posted work before any later access and before a snapshot, so the guest observes its
   accesses in order. ``run_posted`` also collects completions the waker announced.
5. ``quiesce()`` finishes everything in flight (waits for the backends, runs posted work)
   so that a ``state()`` taken next describes a device with nothing half done.
6. ``ServedDeviceDefaults`` is the device that needs none of this (no backends, no timers,
   no posted work): a base class provides it, devices override what they use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

__all__ = ["ServedDevice", "ServedDeviceDefaults", "Waker"]

Waker = Callable[[], None]
"""Called by backend threads when a device has completions to collect (rule 2)."""


@runtime_checkable
class ServedDevice(Protocol):
    """What a serving loop needs from a device (rules 1–5)."""

    def bind_waker(self, wake: Waker | None) -> None:
        """Give the device the thread-safe callable its backends call when they complete
        work for it (``None`` unbinds); rule 2."""
        ...

    def watched_fds(self) -> Mapping[int, Callable[[], None]]:
        """Descriptors to watch for readability now, each with what to call (rule 3)."""
        ...

    def next_deadline(self) -> int | None:
        """When ``tick`` is due next (absolute ``time.monotonic_ns``), or None."""
        ...

    def tick(self, now_ns: int) -> None:
        """The device's clock moves to ``now_ns``: expired timers fire."""
        ...

    @property
    def posted(self) -> bool:
        """Whether posted work waits for ``run_posted`` (rule 4)."""
        ...

    def run_posted(self) -> bool:
        """Run posted work and collect completions (rule 4); whether there was any."""
        ...

    def quiesce(self) -> None:
        """Finish everything in flight (rule 5)."""
        ...


class ServedDeviceDefaults:
    """``ServedDevice`` for a device with no backends, timers or posted work (rule 6)."""

    def bind_waker(self, wake: Waker | None) -> None:
        """Nothing completes on another thread."""

    def watched_fds(self) -> Mapping[int, Callable[[], None]]:
        """Nothing to watch."""
        return {}

    def next_deadline(self) -> int | None:
        """No timers."""
        return None

    def tick(self, now_ns: int) -> None:
        """No timers to fire."""

    @property
    def posted(self) -> bool:
        """Never any posted work."""
        return False

    def run_posted(self) -> bool:
        """Nothing to run."""
        return False

    def quiesce(self) -> None:
        """Nothing in flight."""
