"""No lost wakeups through the in-process transports (``VirtioDevice`` rule 9).

- The queue-notify path (virtio-pci notify write, virtio-mmio QueueNotify): a driver that
  adds a buffer while the device pops (QEMU 11.1's vfio-user client posts BAR writes, so
  the guest keeps adding while the device works) compares against the old ``avail_event``
  and does not notify; the device must process that buffer anyway, and the next one's
  notification must come. The driver's add is scripted at the device's first read of an
  indirect table (the memory's ``translate`` hook).
- ``VirtioDevice.recheck``: a used buffer notification that a driver asked for with a late
  store (its used_event store passed its load of the used index) is sent, and buffers made
  available without a notification are processed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devmodels import Machine
from devmodels._memory import Access
from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED
from virtio.features import bit
from virtio.transport.testing import ECHO_F_XOR

from .conftest import make_mmio, make_pci
from .test_end_to_end import RING, V1, bring_up, xor


class Interleave:
    """Identity ``translate`` hook running ``action`` at the device's first read in the
    driver's data arena once set: the indirect table it walks while popping (the chain's
    data is read later, by the device's handler)."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.action: Callable[[], None] | None = None

    def __call__(self, gpa: int, length: int, access: Access) -> int:
        action = self.action
        if action is not None and access is Access.READ and self.start <= gpa < self.end:
            self.action = None
            action()
        return gpa


def rig_for(machine: Machine, transport: str, packed: bool) -> Any:
    offered = RING | bit(VIRTIO_F_RING_PACKED)
    return make_pci(machine, features=offered) if transport == "pci" else make_mmio(machine, features=offered)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_a_buffer_added_while_the_device_pops_is_processed(machine: Machine, transport: str, packed: bool) -> None:
    rig = rig_for(machine, transport, packed)
    features = V1 | RING | bit(ECHO_F_XOR) | (bit(VIRTIO_F_RING_PACKED) if packed else 0)
    assert features & bit(VIRTIO_F_EVENT_IDX)
    ring = bring_up(rig.driver, machine, features, size=8)[0]
    posted: list[int] = []  # notifications the driver sent while the device was busy

    def notify_if_asked() -> None:
        if ring.kick():
            rig.driver.notify(0)

    ring.add([b"warm", b"-up"], [8])
    notify_if_asked()
    assert [u.read(machine.memory) for u in ring.reap()] == [xor(b"warm-up")]

    def meanwhile() -> None:
        ring.add([b"sec", b"ond"], [8])
        if ring.kick():
            posted.append(0)  # a posted write: it reaches the device after this pop

    hook = Interleave(ring.data_base, ring.data_end)
    machine.memory.translate = hook
    try:
        ring.add([b"fir", b"st"], [8], indirect=True)
        hook.action = meanwhile
        notify_if_asked()
        assert hook.action is None, "the device never read the indirect table"
        for index in posted:
            rig.driver.notify(index)
        ring.add([b"thi", b"rd"], [8])
        notify_if_asked()
    finally:
        machine.memory.translate = None
    got = [u.read(machine.memory) for u in ring.reap()]
    assert got == [xor(b"first"), xor(b"second"), xor(b"third")]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_recheck_sends_the_notification_a_late_used_event_store_asked_for(machine: Machine, packed: bool) -> None:
    rig = make_pci(machine, features=RING | bit(VIRTIO_F_RING_PACKED))
    features = V1 | RING | bit(ECHO_F_XOR) | (bit(VIRTIO_F_RING_PACKED) if packed else 0)
    ring = bring_up(rig.driver, machine, features, size=8, msix=True)[0]
    # The device reads a suppression value that does not ask for this buffer yet; the
    # driver's new one, asking for it, becomes visible after the device decided.
    if packed:
        ring.set_interrupts(True, at=(ring.next_used + 3, ring.used_wrap))  # past its 3 descriptors
    else:
        ring.set_interrupts(True, used_event=(ring.last_used + 1) & 0xFFFF)
    ring.add([b"lat", b"e"], [8])
    assert ring.kick()
    rig.driver.notify(0)
    assert machine.irq.msi == []
    rig.device.recheck()
    assert machine.irq.msi == []  # nothing owed yet
    ring.set_interrupts(True)  # the late store lands
    rig.device.recheck()
    assert [m.data for m in machine.irq.msi] == [0x51]  # queue 0's vector, once
    rig.device.recheck()
    assert len(machine.irq.msi) == 1
    assert [u.read(machine.memory) for u in ring.reap()] == [xor(b"late")]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_recheck_processes_buffers_made_available_without_a_notification(machine: Machine, transport: str,
                                                                          packed: bool) -> None:
    rig = rig_for(machine, transport, packed)
    features = V1 | RING | bit(ECHO_F_XOR) | (bit(VIRTIO_F_RING_PACKED) if packed else 0)
    ring = bring_up(rig.driver, machine, features, size=8)[0]
    rig.device.recheck()  # nothing there: nothing happens
    assert ring.reap() == []
    ring.add([b"no ", b"kick"], [8])
    ring.kick()  # its stale view of avail_event said "no notification"
    rig.device.recheck()
    assert [u.read(machine.memory) for u in ring.reap()] == [xor(b"no kick")]
