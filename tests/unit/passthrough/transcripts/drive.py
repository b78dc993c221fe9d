"""What our ``VfioUserClient`` does to libvfio-user's ``samples/server`` (see README.md).

The same steps ran against the real server to record ``libvfio-user-server*.json`` and
run again in ``test_transcripts.py`` against the recorded replies. Run by hand::

    python3 tests/unit/passthrough/transcripts/drive.py SOURCE.sock DESTINATION.sock

Device facts used (libvfio-user ``samples/server.c``): BAR0 holds a ``time_t``; writing
one arms a timer after which the server raises INTx and does DMA, first directly into
the second DMA region, then by ``DMA_WRITE``/``DMA_READ`` messages into the first; BAR1
is mappable in two sparse areas; migration carries BAR1 and BAR0.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable

from devmodels import MemoryRegion
from passthrough.defs import VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD
from passthrough.user import VfioUserClient

__all__ = ["PAGE", "MARK", "run_source", "run_destination"]

PAGE = 0x1000
MARK = b"devmodels was here"


def run_source(
    client: VfioUserClient, when: int, served: Callable[[], bool] | None = None, log: Callable[[str], None] = print
) -> tuple[bytes, list[bytes]]:
    """Probe, map, interrupt, DMA-log, migrate out; return the device state and the bitmaps.

    ``served`` says when the server's DMA messages are all done (default: 1 s of quiet
    after the interrupt).
    """
    log(f"version {client.version} server caps {client.server_caps}")
    log(f"device {client.device_info()}")
    for index in range(9):
        log(f"region {index} {client.region_info(index)}")
    area = client.region_mmap(1, 0, PAGE)
    log(f"BAR1 first sparse area mapped: {area is not None}")
    if area is not None:
        area.close()
    for index in range(5):
        log(f"irq {index} {client.irq_info(index)}")
    config = client.region_read(7, 0, 64)
    log(f"vendor {int.from_bytes(config[0:2], 'little'):#x} device {int.from_bytes(config[2:4], 'little'):#x}")
    client.reset()
    ram = [MemoryRegion.memfd(PAGE * i, PAGE) for i in range(2)]
    for i, region in enumerate(ram):
        client.dma_map(region, PAGE * i)
    intx = os.eventfd(0, os.EFD_NONBLOCK)
    client.set_irqs(0, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[intx])
    log(f"DMA logging page size {client.dma_logging_start([])}")
    client.region_write(0, 0, when.to_bytes(8, "little"))
    log(f"BAR0 reads {int.from_bytes(client.region_read(0, 0, 8), 'little')}")
    deadline = time.monotonic() + 10
    quiet_since = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([client.fileno(), intx], [], [], 0.1)
        if client.fileno() in ready:
            log(f"served {client.service()} server commands")
            quiet_since = None
        if intx in ready:
            log(f"INTx {os.eventfd_read(intx)}")
        if served is not None:
            if served():
                break
        elif not ready:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:
                break
    os.close(intx)
    bitmaps = [client.dma_logging_report(PAGE * i, PAGE) for i in range(2)]
    log(f"dirty bitmaps {[b.hex() for b in bitmaps]}")
    client.dma_logging_stop()
    for i in range(2):
        client.dma_unmap(PAGE * i, PAGE)
    for region in ram:
        region.close()
    client.region_write(1, 0, MARK)
    state = client.save_device_state()
    log(f"saved {len(state)} bytes of device state")
    client.close()
    return state, bitmaps


def run_destination(client: VfioUserClient, state: bytes, log: Callable[[str], None] = print) -> bytes:
    """Migrate ``state`` in; return the start of BAR1 afterwards."""
    client.load_device_state(state)
    start = client.region_read(1, 0, len(MARK))
    log(f"restored BAR1 starts {start!r}")
    client.close()
    return start


if __name__ == "__main__":
    source, destination = sys.argv[1:3]
    saved, _ = run_source(VfioUserClient.connect(source), int(time.time()) + 1)
    run_destination(VfioUserClient.connect(destination), saved)
