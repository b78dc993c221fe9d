"""Guest errors of the e1000 model, one class per rule of the 8254x SDM a driver can break.

Rules:

1. Every class here is a ``GuestError``: it names driver misbehaviour and carries the
   fields needed to act on it. None escapes a device entry point; the device turns each
   into the architected behaviour (a dropped packet with DD written back, a counted miss,
   MDIC.ERROR) plus a ``e1000.guest_error`` trace event.
2. Host misuse raises ``devmodels.UsageError``; backend failures ``devmodels.HostError``.
"""

from __future__ import annotations

from .._errors import GuestError

__all__ = [
    "E1000GuestError",
    "DescriptorRingError",
    "TxDescriptorError",
    "TsoContextError",
    "FrameTooLongError",
]


class E1000GuestError(GuestError):
    """Base of the e1000 guest errors."""


class DescriptorRingError(E1000GuestError):
    """A ring register is unusable (SDM §3.2.6/§3.3.1: head or tail past the ring, a ring
    outside guest RAM).

    Attributes:
        ring: ``"rx"`` or ``"tx"``.
        index: the offending head/tail value.
    """

    def __init__(self, ring: str, index: int, reason: str) -> None:
        self.ring = ring
        self.index = index
        super().__init__(f"{ring} ring: {reason} (index {index})")


class TxDescriptorError(E1000GuestError):
    """A transmit descriptor cannot be processed (bad type, buffer outside RAM).

    Attributes:
        index: the descriptor's ring index.
    """

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        super().__init__(f"tx descriptor {index}: {reason}")


class TsoContextError(E1000GuestError):
    """The TCP segmentation context cannot describe the packet (SDM §3.5: MSS 0, HDRLEN
    past the packet, header fields outside the header). Counted in TSCTFC."""


class FrameTooLongError(E1000GuestError):
    """A packet assembled from descriptors exceeds the device's bound.

    Attributes:
        length: bytes gathered when the bound was crossed.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        super().__init__(f"transmit packet of {length} bytes exceeds the device limit")
