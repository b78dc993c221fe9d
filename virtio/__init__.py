"""virtio: VIRTIO 1.2 devices for devmodels (queues, transports, device framework).

The queue layer is re-exported here; transports live in ``virtio.transport`` and the
device base class in ``virtio.device``.
"""

from .queue import Chain, Virtqueue, VirtqueueState
from .device import NullTransport, QueueArea, RecordingTransport, Transport, VirtioDevice, VirtioDeviceState

__all__ = ["Chain", "Virtqueue", "VirtqueueState"]
__all__ += ["NullTransport", "QueueArea", "RecordingTransport", "Transport", "VirtioDevice", "VirtioDeviceState"]
