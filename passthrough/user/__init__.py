"""vfio-user (QEMU ``docs/interop/vfio-user.rst``): serve a devmodels function, or use one.

- ``VfioUserServer``: serves any ``PciFunction`` over a connected socket (``serve``) or a
  listening one (``serve_forever``); client DMA windows are mapped into the device's
  ``GuestMemory`` (``DmaMemory`` also reaches fd-less windows by message).
- ``VfioUserClient``: a connection to a server, usable as the backend of
  ``passthrough.VfioPciDevice``.
- ``framing``/``negotiate``: the message layer and ``VFIO_USER_VERSION`` (the reply
  lists only what the client proposed, each number the smaller of the two sides').
- ``features``/``dirty``: ``DEVICE_FEATURE`` (migration, DMA dirty-page logging).
"""

from .client import ClientDmaWindow, VfioUserClient
from .dirty import DirtyLog
from .dma import DmaChannel, DmaMemory, DmaTable, DmaWindow
from .framing import HEADER_SIZE, Message, MessageSocket, VfioUserFramingError
from .irqs import MSI_TAG_ADDRESS, IntxEventfd, ServerInterrupts, VectorEventfds
from .negotiate import VersionCapabilities, VersionError, decode_version, encode_version, negotiate
from .server import VfioUserServer, access_pieces

__all__ = [
    "ClientDmaWindow",
    "VfioUserClient",
    "DirtyLog",
    "DmaChannel",
    "DmaMemory",
    "DmaTable",
    "DmaWindow",
    "HEADER_SIZE",
    "Message",
    "MessageSocket",
    "VfioUserFramingError",
    "MSI_TAG_ADDRESS",
    "IntxEventfd",
    "ServerInterrupts",
    "VectorEventfds",
    "VersionCapabilities",
    "VersionError",
    "decode_version",
    "encode_version",
    "negotiate",
    "VfioUserServer",
    "access_pieces",
]
