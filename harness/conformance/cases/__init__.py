"""Conformance cases, one module per device (each with a ``cases()`` provider)."""

from ._served import ATTACHMENTS, POLLED_INTX_APPEND, PROXY, VFIO_USER, ServedCase

__all__ = ["ATTACHMENTS", "POLLED_INTX_APPEND", "PROXY", "VFIO_USER", "ServedCase"]
