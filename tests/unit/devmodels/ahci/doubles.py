"""Test doubles for the AHCI tests: a scriptable in-memory block backend and a rig.

``ScriptedDisk`` implements ``devmodels.backends.BlockBackend`` on a bytearray. In ``auto``
mode requests complete (in submission order) the next time ``completions()`` is called; in
manual mode they wait until the test calls ``release(order)``, so tests can return NCQ
completions out of order or keep requests in flight across a reset. The data moves at
completion time, like a real asynchronous backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from devmodels import GuestMemory, MemoryRegion
from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom
from devmodels.ahci.testing import AhciDriver
from devmodels.backends import BlockCompletion, BlockOp, BlockRequest, BlockStatus

RAM_SIZE = 16 << 20
DMA_BASE = 8 << 20  # the driver's structures and buffers live in the upper half


class ScriptedDisk:
    """A ``BlockBackend`` double (see the module docstring)."""

    def __init__(
        self,
        size: int,
        *,
        readonly: bool = False,
        block: int = 512,
        discard: bool = True,
        auto: bool = True,
        data: bytes = b"",
        claimed: int | None = None,
    ) -> None:
        self.data = bytearray(size)
        self._claimed = claimed  # report a larger capacity than is stored (reads past: IO_ERROR)
        self.data[: len(data)] = data
        self._readonly = readonly
        self._block = block
        self._discard = discard
        self.auto = auto
        self.pending: list[tuple[BlockRequest, GuestMemory]] = []
        self.ready: list[BlockCompletion] = []
        self.log: list[tuple[BlockOp, int, int]] = []  # executed (op, offset, length)
        self.fail: set[BlockOp] = set()
        self.durable = bytearray(size)  # what a FLUSH made durable

    capacity = property(lambda self: self._claimed or len(self.data))
    readonly = property(lambda self: self._readonly)
    logical_block_size = property(lambda self: self._block)
    supports_discard = property(lambda self: self._discard)

    def submit(self, request: BlockRequest, memory: GuestMemory) -> None:
        self.pending.append((request, memory))

    def _execute(self, request: BlockRequest, memory: GuestMemory) -> BlockCompletion:
        self.log.append((request.op, request.offset, request.length))
        if request.op in self.fail:
            return BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, "scripted failure")
        end = request.offset + request.length
        if end > len(self.data):
            return BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, "past the end")
        if request.op is BlockOp.READ:
            pos = request.offset
            for gpa, length in request.segments:
                memory.write(gpa, self.data[pos : pos + length])
                pos += length
        elif request.op is BlockOp.WRITE:
            if self._readonly:
                return BlockCompletion(request.tag, BlockStatus.IO_ERROR, 0, "read-only")
            pos = request.offset
            for gpa, length in request.segments:
                self.data[pos : pos + length] = memory.read(gpa, length)
                pos += length
        elif request.op is BlockOp.FLUSH:
            self.durable[:] = self.data
        elif request.op in (BlockOp.DISCARD, BlockOp.WRITE_ZEROES):
            self.data[request.offset : end] = bytes(request.length)
        return BlockCompletion(request.tag, BlockStatus.OK, request.length)

    def release(self, order: Iterable[int] | None = None) -> None:
        """Complete pending requests, in ``order`` (indexes into ``pending``) or all in order."""
        chosen = list(range(len(self.pending))) if order is None else list(order)
        done = [self.pending[i] for i in chosen]
        self.pending = [p for i, p in enumerate(self.pending) if i not in chosen]
        for request, memory in done:
            self.ready.append(self._execute(request, memory))

    def completions(self) -> list[BlockCompletion]:
        if self.auto:
            self.release()
        ready, self.ready = self.ready, []
        return ready

    def drain(self) -> None:
        self.release()

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        pass

    def close(self) -> None:
        self.drain()


class Rig:
    """A controller on 16 MiB of RAM with a disk on port 0 and a CD on port 1, and a driver."""

    def __init__(
        self,
        *,
        disk: ScriptedDisk | None = None,
        cd: ScriptedDisk | None = None,
        ports: int = 2,
        msi: bool = False,
        start: bool = True,
    ) -> None:
        self.memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM_SIZE)])
        self.disk = disk if disk is not None else ScriptedDisk(4 << 20)
        self.cd = cd if cd is not None else ScriptedDisk(2 << 20, readonly=True, data=_iso_pattern(2 << 20))
        self.hba = AhciController(self.memory, ports=ports, msi=msi)
        self.ata = AtaDisk(self.disk)
        self.atapi = AtapiCdrom(self.cd)
        self.hba.attach(0, self.ata)
        if ports > 1:
            self.hba.attach(1, self.atapi)
        self.driver = AhciDriver.for_controller(self.hba, self.memory, DMA_BASE, RAM_SIZE - DMA_BASE)
        if start:
            self.driver.reset_hba()
            for port in range(min(ports, 2)):
                self.driver.start_port(port)


def _iso_pattern(size: int) -> bytes:
    """Each 2048-byte block starts with its block number, so reads are easy to check."""
    out = bytearray(size)
    for block in range(size // 2048):
        out[block * 2048 : block * 2048 + 8] = block.to_bytes(8, "little")
        out[block * 2048 + 8 : block * 2048 + 16] = b"ISOBLOCK"
    return bytes(out)
