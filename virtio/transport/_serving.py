"""A transport is served by serving its device (``devmodels.runtime.ServedDevice``).

``VirtioPciFunction`` and ``VirtioMmioDevice`` answer every ``ServedDevice`` question with
their device's answer, so a VMM loop can serve the transport it plugged into its buses
(``DeviceRunner(function, loop)``) and reach the device's backends, timers and posted work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..device import VirtioDevice

__all__ = ["ServedThroughDevice"]


class ServedThroughDevice:
    """``ServedDevice`` by delegation to ``self.device``."""

    device: VirtioDevice

    def bind_waker(self, wake: Callable[[], None] | None) -> None:
        """The device's."""
        self.device.bind_waker(wake)

    def watched_fds(self) -> Mapping[int, Callable[[], None]]:
        """The device's."""
        return self.device.watched_fds()

    def next_deadline(self) -> int | None:
        """The device's."""
        return self.device.next_deadline()

    def tick(self, now_ns: int) -> None:
        """The device's."""
        self.device.tick(now_ns)

    @property
    def posted(self) -> bool:
        """The device's."""
        return self.device.posted

    def run_posted(self) -> bool:
        """The device's."""
        return self.device.run_posted()

    def quiesce(self) -> None:
        """The device's."""
        self.device.quiesce()
