"""virtio-net's side of fault injection (``devmodels.faults``).

Rules:

1. ``net.link-down``: the device clears VIRTIO_NET_S_LINK_UP in its configuration and,
   once the driver is running, notifies it with a configuration change interrupt
   (virtio 1.2 §5.1.4, §4.1.4.5); when the window closes it sets the bit again. Linux
   reads the status and turns the carrier off and on. Over vhost-user the front-end owns
   the configuration space: the frames are still lost (the backend wrapper), but the
   driver is not told.
2. ``net.rx-overrun``: ``frames`` broadcast frames arrive at once; the device holds what
   its receive queue cannot take yet up to ``rx_hold`` frames and drops the rest, counted
   in ``stats.rx_dropped`` (virtio-net has no architected counter for it).
3. ``net.tx-hang`` has no virtio-net hook: a device adding this fault gets a ``UsageError``
   from the engine.
"""

from __future__ import annotations

from devmodels.faults import ActiveFault, FaultEngine, LinkActuator, overrun_frame
from devmodels.faults.plan import RxOverrun

from .defs import VIRTIO_NET_HDR_SIZE
from .device import VirtioNetDevice

__all__ = ["VirtioNetFaults"]

class _Overrun:
    def __init__(self, device: VirtioNetDevice) -> None:
        self.device = device

    def start(self, active: ActiveFault) -> None:
        fault = active.fault
        assert isinstance(fault, RxOverrun)  # registered for this kind only
        frame = overrun_frame(fault.size)
        if self.device.vnet:
            frame = bytes(VIRTIO_NET_HDR_SIZE) + frame
        self.device.receive([frame] * fault.frames)

    def stop(self, active: ActiveFault) -> None:
        """Nothing to undo: the burst has arrived."""


class VirtioNetFaults:
    """The hooks of rules 1–2 on ``device``, registered with ``engine``."""

    def __init__(self, device: VirtioNetDevice, engine: FaultEngine) -> None:
        self.device = device
        engine.add_actuator("net.link-down", LinkActuator(device))
        engine.add_actuator("net.rx-overrun", _Overrun(device))
