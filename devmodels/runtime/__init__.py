"""Serving devices: the one protocol every device implements for a loop, the runner, the loop.

- ``ServedDevice`` (protocol) and ``ServedDeviceDefaults``: what a loop needs from a device
  (its descriptors, deadline, posted work, quiesce); see ``_served``.
- ``DeviceRunner``: one device on one ``EventLoop``; every server uses it (``_runner``).
- ``EventLoop``/``Timer``: a small ``selectors`` loop with timers and a thread-safe wake-up
  (``_loop``).
"""

from ._loop import Callback, EventLoop, Timer
from ._runner import DeviceRunner
from ._served import ServedDevice, ServedDeviceDefaults, Waker

__all__ = ["Callback", "EventLoop", "Timer", "DeviceRunner", "ServedDevice", "ServedDeviceDefaults", "Waker"]
