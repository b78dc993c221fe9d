"""What the driver simulators share: their errors.

Every package ships a guest-side driver simulator beside its device
(``devmodels.e1000.testing``, ``devmodels.ahci.testing``, ``virtio.testing``,
``virtio.blk.testing``, ``virtio.net.testing``, ``virtio.transport.testing``). They raise:

- ``UsageError`` when the simulator itself is called wrongly (a bad argument, a full
  arena, no function at the address given);
- ``DriverError`` when the device did not behave as a driver of its specification
  expects: what a real driver would log and fail on (a probe that finds no valid
  EEPROM, a refused feature set, a bounded wait that ran out);
- ``DeviceProtocolError``, a ``DriverError``, when the device wrote something no correct
  device writes (a used id that is not outstanding, a length beyond the buffer).

None of them is an ``AssertionError``: they survive ``python -O`` and tell a test
failure caused by the device from one caused by the test.
"""

from __future__ import annotations

from ._errors import DevmodelsError

__all__ = ["DriverError", "DeviceProtocolError"]


class DriverError(DevmodelsError):
    """The device did not do what a driver of its specification expects."""


class DeviceProtocolError(DriverError):
    """The device wrote something that no correct device writes."""
