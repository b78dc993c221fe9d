"""virtio-net under faults (``virtio.net.faults``): the link status and its configuration
interrupt, a receive burst, and what the device cannot do."""

from __future__ import annotations

import pytest

from devmodels import GuestMemory, MemoryRegion, UsageError
from devmodels.backends import LoopbackBackend
from devmodels.faults import FaultEngine, FaultyNetBackend, LinkDown, RxOverrun, TxHang
from virtio.device import RecordingTransport
from virtio.net import VirtioNetDevice
from virtio.net.faults import VirtioNetFaults
from virtio.net.testing import NetDriver

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def rig() -> tuple[VirtioNetDevice, RecordingTransport, FaultEngine, Clock, NetDriver]:
    clock = Clock()
    engine = FaultEngine(clock=clock)
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 4 << 20)])
    ours, _ = LoopbackBackend.pair()
    device = VirtioNetDevice(memory, FaultyNetBackend(ours, engine))  # type: ignore[arg-type]
    transport = RecordingTransport()
    device.attach(transport)
    driver = NetDriver(device)
    VirtioNetFaults(device, engine)
    return device, transport, engine, clock, driver


def test_link_down_and_up_notify_the_driver() -> None:
    device, transport, engine, clock, _ = rig()
    engine.add(LinkDown(for_ms=20))
    assert not device.link_up and transport.config == 1
    clock.now = 20 * MS
    engine.tick()
    assert device.link_up and transport.config == 2


def test_an_overrun_holds_what_it_can_and_drops_the_rest() -> None:
    device, _, engine, _, _ = rig()
    engine.add(RxOverrun(frames=device.rx_hold + 600, size=100))
    # 16 receive buffers posted take 16 frames, the device holds rx_hold - 16 more, drops 600
    assert device.stats.rx_frames == 16 and device.held == device.rx_hold - 16
    assert device.stats.rx_dropped == 600


def test_a_tx_hang_is_refused_on_virtio_net() -> None:
    _, _, engine, _, _ = rig()
    with pytest.raises(UsageError, match="cannot apply net.tx-hang"):
        engine.add(TxHang())
