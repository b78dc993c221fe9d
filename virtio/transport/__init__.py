"""Virtio transports: PCI (modern, §4.1) and MMIO (version 2, §4.2).

Both carry a ``virtio.device.VirtioDevice`` and translate their registers into its
transport-neutral entry points; each implements the device's ``Transport`` protocol
(``signal_used``, ``signal_config``, ``device_reset``) to deliver interrupts.
"""

from .mmio import MMIO_WINDOW_MIN, VirtioMmioDevice, VirtioMmioState
from .pci import NOTIFY_OFF_MULTIPLIER, PCI_CLASS_OF, VirtioPciFunction, VirtioPciState

__all__ = [
    "MMIO_WINDOW_MIN",
    "VirtioMmioDevice",
    "VirtioMmioState",
    "NOTIFY_OFF_MULTIPLIER",
    "PCI_CLASS_OF",
    "VirtioPciFunction",
    "VirtioPciState",
]
