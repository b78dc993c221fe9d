"""A remote device process for QEMU 7.2's multi-process PCI proxy (``x-pci-proxy-dev``).

QEMU forwards one PCI function's config-space and BAR accesses over a UNIX socket using
its private mpqemu protocol (``include/hw/remote/mpqemu-link.h``); this package is the
other end, serving any devmodels ``PciFunction``:

- ``defs`` / ``layouts``: the protocol's constants and wire structures;
- ``RemotePciEndpoint``: one message in, the reply out (config, BARs, guest RAM table,
  INTx irqfds, reset);
- ``MessageFramer``: the byte stream split into messages, descriptors attributed;
- ``MpqemuServer`` / ``serve``: the non-blocking socket side on an ``EventLoop``;
- ``HiddenCapabilities``: the config view without MSI/MSI-X (the 7.2 proxy delivers
  INTx only, and under TCG not even that, since its irqfd is wired only through KVM);
- ``IrqfdLevelSink``: INTx as an irqfd plus a resample fd;
- ``testing.FakeProxy``: the QEMU side, for tests.

The command that serves a device this way is ``devmodels mpqemu`` (``harness.serve``).
"""

from . import defs, layouts
from .config import DEFAULT_HIDDEN, ConfigView, HiddenCapabilities
from .endpoint import EndpointStats, RemotePciEndpoint
from .framing import FramingError, Message, MessageFramer
from .irqfd import IntxPort, IrqfdLevelSink
from .server import MpqemuServer, serve
from .sysmem import SysmemError, SysmemTable

__all__ = [
    "defs",
    "layouts",
    "DEFAULT_HIDDEN",
    "ConfigView",
    "HiddenCapabilities",
    "EndpointStats",
    "RemotePciEndpoint",
    "FramingError",
    "Message",
    "MessageFramer",
    "IntxPort",
    "IrqfdLevelSink",
    "MpqemuServer",
    "serve",
    "SysmemError",
    "SysmemTable",
]
