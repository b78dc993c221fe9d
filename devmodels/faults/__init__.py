"""Fault injection: devices that fail the way real parts fail, driven by a plan.

- ``plan``: the fault kinds (``disk.*``, ``net.*``, ``pci.*``) and ``FaultPlan``, as
  dataclasses and as JSON (``from_dict``/``to_dict``), reproducible by seed.
- ``engine``: ``FaultEngine``, the faults in effect on one device: windows, per-event
  decisions, timers, the actuators device hooks register for state faults.
- ``block``: ``FaultyBlockBackend`` (media errors, slow, stuck and torn requests).
- ``net``: ``FaultyNetBackend`` (dropped, corrupted, duplicated, reordered frames; no
  frames while the link is down).
- ``pci``: ``PciFaults`` (a device that stops answering, lost interrupts), between a
  function and its server.
- ``served``: ``FaultyServedDevice``, the device plus its engine on the serving loop.
- ``control``: the control socket and ``FaultClient`` (add/remove/arm/list while the guest runs).

Device hooks live in the devices' packages (``devmodels.e1000.faults``,
``devmodels.ahci.faults``, ``virtio.net.faults``): they import this package, never the
other way round. ``docs/faults.md`` lists every fault and what the real hardware does.
"""

from .block import FaultyBlockBackend
from .control import FaultClient, FaultControlServer
from .engine import ActiveFault, Actuator, FaultEngine
from .net import CorruptFrame, FaultyNetBackend, LinkActuator, overrun_frame
from .pci import PciFaults
from .plan import (
    KINDS,
    EventFault,
    Fault,
    FaultPlan,
    FrameCorrupt,
    FrameDrop,
    FrameDuplicate,
    FrameReorder,
    LinkDown,
    LostInterrupt,
    MediaError,
    NoResponse,
    RxOverrun,
    SlowIo,
    StateFault,
    StuckIo,
    TornWrite,
    TxHang,
)
from .served import FaultyServedDevice

__all__ = [
    "ActiveFault",
    "Actuator",
    "CorruptFrame",
    "EventFault",
    "Fault",
    "FaultClient",
    "FaultControlServer",
    "FaultEngine",
    "FaultPlan",
    "FaultyBlockBackend",
    "FaultyNetBackend",
    "FaultyServedDevice",
    "FrameCorrupt",
    "FrameDrop",
    "FrameDuplicate",
    "FrameReorder",
    "KINDS",
    "LinkActuator",
    "LinkDown",
    "LostInterrupt",
    "MediaError",
    "NoResponse",
    "PciFaults",
    "RxOverrun",
    "SlowIo",
    "StateFault",
    "StuckIo",
    "TornWrite",
    "TxHang",
    "overrun_frame",
]
