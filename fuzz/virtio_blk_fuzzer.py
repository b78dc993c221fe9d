#!/usr/bin/env python3
"""Fuzz target: virtio-blk behind the modern virtio PCI transport, on a 1 MiB memory disk.

The device offers packed rings, EVENT_IDX, INDIRECT_DESC, RING_RESET, FLUSH, CONFIG_WCE,
DISCARD and WRITE_ZEROES with two request queues, so every request type and both ring
layouts are reachable. ``PUMP`` runs the VMM's completion processing
(``process_completions``, ``run_pending``); the rest of the ops are ``fuzz._virtio``'s.
Healthy after reset means: a driver negotiates VERSION_1 and GET_ID returns the serial.

OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    from typing import Any

    from devmodels import GuestMemory
    from devmodels.backends import MemoryDiskBackend
    from fuzz._execute import run_input
    from fuzz._ops import OpKind
    from fuzz._record import Recorder, record
    from fuzz._virtio import VirtioPciRig, ack_interrupts, bring_up
    from virtio.blk import VirtioBlkDevice
    from virtio.blk import defs as b
    from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET

SERIAL = b"fuzz-disk"
DISK_SIZE = 1 << 20
_HDR = struct.Struct("<IIQ")
_DWZ = struct.Struct("<QII")


def _make_blk(memory: GuestMemory) -> VirtioBlkDevice:
    return VirtioBlkDevice(memory, MemoryDiskBackend(DISK_SIZE), num_queues=2, queue_size=64, serial=SERIAL)


def _get_id(ring: Any) -> bytes:
    ring.add([_HDR.pack(b.VIRTIO_BLK_T_GET_ID, 0, 0)], [b.VIRTIO_BLK_ID_BYTES, 1])
    return b"GET_ID"


class BlkRig(VirtioPciRig):
    """virtio-blk on bus 0 (module docstring)."""

    def __init__(self) -> None:
        super().__init__(_make_blk, (_get_id, SERIAL.ljust(b.VIRTIO_BLK_ID_BYTES, b"\0") + bytes([b.VIRTIO_BLK_S_OK])))

    def close(self) -> None:
        """Release RAM and the disk."""
        super().close()
        self.device.backend.close()  # type: ignore[attr-defined]


def build() -> BlkRig:
    """A fresh rig (one per input: runs are deterministic)."""
    return BlkRig()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    run_input(build, data)


# -- seeds (recorded with fuzz._record) -----------------------------------------------------

_DATA = 0x60000  # data buffers the seeds fill with RAM_FILL (one op instead of 64 stores)


def _request(rec: Recorder, driver: Any, ring: Any, header: bytes, readable: list[Any], writable: list[Any],
             **options: Any) -> None:
    ring.add([header, *readable], [*writable, 1], **options)
    ring.kick()
    driver.notify(0)
    rec.op(OpKind.PUMP)
    ack_interrupts(driver)
    ring.reap()


def _seed_write_read(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 0)
    rec.machine.memory.fill(_DATA, 1024, 0x5A)
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_OUT, 0, 2), [(_DATA, 1024)], [])
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_IN, 0, 2), [], [512, 512])
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_FLUSH, 0, 0), [], [])


def _seed_packed_indirect(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 1 << VIRTIO_F_RING_PACKED | 1 << VIRTIO_F_INDIRECT_DESC | 1 << VIRTIO_F_EVENT_IDX)
    rec.machine.memory.fill(_DATA, 512, 0x33)
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_OUT, 0, 7), [(_DATA, 512)], [], indirect=True)
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_IN, 0, 7), [], [512], indirect=True)


def _seed_discard_zeroes(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 1 << b.VIRTIO_BLK_F_DISCARD | 1 << b.VIRTIO_BLK_F_WRITE_ZEROES)
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_DISCARD, 0, 0), [_DWZ.pack(8, 16, 0)], [])
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_WRITE_ZEROES, 0, 0),
             [_DWZ.pack(32, 8, b.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)], [])


def _seed_errors(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 0)
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_IN, 0, DISK_SIZE // 512 - 1), [], [1024])  # past the end
    _request(rec, driver, ring, _HDR.pack(0x55, 0, 0), [], [16])  # unsupported type
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_IN, 0, 0)[:8], [], [512])  # short header


def _seed_writeback_config(rec: Recorder) -> None:
    driver, (ring,) = bring_up(rec, 1 << b.VIRTIO_BLK_F_CONFIG_WCE | 1 << b.VIRTIO_BLK_F_FLUSH)
    driver.read_config(0, 8)
    driver.write_config(b.VIRTIO_BLK_CONFIG_WRITEBACK, 1, 0)  # writethrough
    rec.machine.memory.fill(_DATA, 512, 0x77)
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_OUT, 0, 0), [(_DATA, 512)], [])
    _request(rec, driver, ring, _HDR.pack(b.VIRTIO_BLK_T_GET_ID, 0, 0), [], [20])


def _seed_two_queues_reset(rec: Recorder) -> None:
    driver, rings = bring_up(rec, 1 << VIRTIO_F_RING_RESET, queues=2)
    rec.machine.memory.fill(_DATA, 512, 0x11)
    for index, ring in enumerate(rings):
        ring.add([_HDR.pack(b.VIRTIO_BLK_T_OUT, 0, index), (_DATA, 512)], [1])
        ring.kick()
        driver.notify(index)
    rec.op(OpKind.SNAPSHOT)
    rec.op(OpKind.PUMP)
    driver.write_common("queue_select", 1)
    driver.write_common("queue_reset", 1)
    rings[0].reap()


SEEDS = {
    "write-read-flush": _seed_write_read,
    "packed-indirect": _seed_packed_indirect,
    "discard-write-zeroes": _seed_discard_zeroes,
    "errors": _seed_errors,
    "writeback-config": _seed_writeback_config,
    "two-queues-reset": _seed_two_queues_reset,
}


def seeds() -> dict[str, bytes]:
    """The committed seed corpus, regenerated (``python -m fuzz seeds virtio_blk``)."""
    return {name: record(build, script) for name, script in SEEDS.items()}


if __name__ == "__main__":
    fuzz_main(TestOneInput)
