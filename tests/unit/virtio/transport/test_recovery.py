"""Every ring error is recoverable by a device reset, on both in-process transports.

For each malformed ring the device can detect (a descriptor loop, a ``next`` out of range,
an available index that jumps more than the queue size, an indirect table of a bad length,
one outside RAM and one inside the function's own BAR; for packed rings an out-of-range
buffer id and a list longer than the ring), on virtio-pci and virtio-mmio, split and
packed: the device sets DEVICE_NEEDS_RESET and processes nothing more; the driver writes
status 0 and initializes the device again; one valid request then works on every queue.
"""

from __future__ import annotations

from typing import Any

import pytest

from devmodels import Machine
from virtio.defs import DEVICE_NEEDS_RESET, VIRTIO_F_RING_PACKED
from virtio.features import bit
from virtio.testing import MALFORMED, malform
from virtio.transport.testing import ECHO_F_XOR

from .conftest import MMIO_BASE, make_mmio, make_pci
from .test_end_to_end import LIVE, RING, V1, bring_up, send, xor

def cases() -> list[Any]:
    out = []
    for transport in ("pci", "mmio"):
        for packed in (False, True):
            layout = "packed" if packed else "split"
            out += [pytest.param(transport, packed, kind, id=f"{transport}-{layout}-{kind}") for kind in MALFORMED[packed]]
    return out


@pytest.mark.parametrize(("transport", "packed", "kind"), cases())
def test_every_ring_error_is_left_by_a_device_reset(machine: Machine, transport: str, packed: bool,
                                                     kind: str) -> None:
    features = V1 | RING | bit(ECHO_F_XOR) | (bit(VIRTIO_F_RING_PACKED) if packed else 0)
    offered = RING | bit(VIRTIO_F_RING_PACKED)
    if transport == "pci":
        rig: Any = make_pci(machine, features=offered)
        bar = rig.driver.bar_address(0)
    else:
        rig = make_mmio(machine, features=offered)
        bar = MMIO_BASE
    driver, device = rig.driver, rig.device
    rings = bring_up(driver, machine, features, size=8)
    malform(rings[0], kind, foreign=bar)  # indirect_foreign: a table inside the BAR
    driver.notify(0)
    assert driver.read_status() == LIVE | DEVICE_NEEDS_RESET, kind
    assert device.error is not None
    send(driver, rings[1], 1, [b"ignored"])  # sticky: nothing is processed
    assert rings[1].reap() == []
    rings = bring_up(driver, machine, features, size=8)  # status 0, then §3.1.1 again
    assert device.error is None and not any(q.broken for q in device.queues)
    for q, ring in enumerate(rings):
        send(driver, ring, q, [b"works again %d" % q])
        assert [u.read(machine.memory) for u in ring.reap()] == [xor(b"works again %d" % q)]
