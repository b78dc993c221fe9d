"""A guest doing I/O through an emulated device, migrated between two ``devmodels vfio-user``
processes: testdev, e1000 and AHCI (``vfio_user`` rule 3 moves them).

Rules:

1. Each scenario runs the device's own guest-side driver simulator over the VMM's buses
   (``devmodels.testdev`` registers, ``E1000Driver``, ``AhciDriver``) exactly as in
   process: I/O before the migration, verified.
2. While RAM is copied the guest makes the device write guest RAM (the precopy window):
   a testdev DMA, frames arriving from the wire into the e1000's receive ring, an AHCI
   READ DMA issued just before. The guest CPU writes only device registers then, so what
   reaches the destination's RAM from that window came through the device's dirty log.
3. After the switch-over the guest's driver state moves with it (the driver is guest
   memory and CPU state), it first checks what the device did in the precopy window, then
   does more I/O through the destination server, verified: the device state the source
   had (registers, rings, ports, disk positions) is the destination's.
4. Every check that fails raises ``MigrationCheckFailed`` naming what differed.
5. Backends are shared the way migrating VMs share them: the e1000 of either server is
   connected to one wire (a seqpacket socket this module listens on) and AHCI's disk is
   one image file both servers open (shared storage).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devmodels import DevmodelsError
from devmodels.ahci import defs as ad
from devmodels.ahci import regs as ar
from devmodels.ahci.fis import TaskFile
from devmodels.ahci.testing import AhciDriver
from devmodels.e1000 import regs as er
from devmodels.e1000.testing import E1000Driver
from devmodels.testdev import regs as tr

from .vfio_user import Downtime, ServerProcess, Vmm, migrate

__all__ = ["MigrationCheckFailed", "Result", "SCENARIOS", "run"]

_RAM = 16 << 20
_WAIT = 20.0


class MigrationCheckFailed(DevmodelsError):
    """The guest saw something after the migration that it did not before (rule 4)."""


@dataclass
class Result:
    """One migration: its downtime and what the guest checked."""

    device: str
    downtime: Downtime
    checks: list[str] = field(default_factory=list)


def _expect(what: str, got: object, want: object, checks: list[str]) -> None:
    if got != want:
        raise MigrationCheckFailed(f"{what}: got {got!r}, expected {want!r}")
    checks.append(what)


def _until(condition: Callable[[], bool], what: str, timeout: float = _WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise MigrationCheckFailed(f"timed out waiting for {what}")
        time.sleep(0.001)


class _Clock:
    """The e1000's timers run in its server; the driver's VMM-side clock has nothing to do."""

    def tick(self, now_ns: int) -> None:
        """Nothing: the server's loop ticks the device."""

    def next_deadline(self) -> int | None:
        """None: see ``tick``."""
        return None


# -- testdev ---------------------------------------------------------------------------------


def _testdev(workdir: Path, copy_dirty: bool) -> Result:
    checks: list[str] = []
    with _pair(workdir, "testdev", []) as (source, destination, _):
        def dma(vmm: Vmm, src: int, dst: int, length: int) -> None:
            bar0 = vmm.bar(0)
            for reg, value, size in ((tr.DMA_SRC, src, 8), (tr.DMA_DST, dst, 8), (tr.DMA_LEN, length, 4),
                                     (tr.DMA_CMD, tr.DMA_CMD_START, 4)):
                vmm.machine.mmio.write(bar0 + reg, size, value)

        mem = source.machine.memory
        mem.write(0x1000, b"before the migration".ljust(256, b"."))
        dma(source, 0x1000, 0x3000, 256)
        _expect("testdev: DMA before", mem.read(0x3000, 256), mem.read(0x1000, 256), checks)
        source.machine.mmio.write(source.bar(0) + tr.SCRATCH, 4, 0x5CA7C4)
        mem.write(0x5000, b"in the precopy window".ljust(4096, b"!"))

        downtime = migrate(source, destination, during_precopy=lambda: dma(source, 0x5000, 0x7000, 4096),
                           copy_dirty=copy_dirty)
        dst = destination.machine.memory
        _expect("testdev: the precopy-window DMA reached the destination RAM", dst.read(0x7000, 4096),
                b"in the precopy window".ljust(4096, b"!"), checks)
        bar0 = destination.bar(0)
        _expect("testdev: SCRATCH", destination.machine.mmio.read(bar0 + tr.SCRATCH, 4), 0x5CA7C4, checks)
        _expect("testdev: DMA_STATUS", destination.machine.mmio.read(bar0 + tr.DMA_STATUS, 4), tr.DMA_STATUS_DONE,
                checks)
        _expect("testdev: DMA_DST", destination.machine.mmio.read(bar0 + tr.DMA_DST, 4), 0x7000, checks)
        dst.write(0x9000, b"after the migration".ljust(512, b"?"))
        dma(destination, 0x9000, 0xB000, 512)
        _expect("testdev: DMA after", dst.read(0xB000, 512), dst.read(0x9000, 512), checks)
    return Result("testdev", downtime, checks)


# -- e1000 -----------------------------------------------------------------------------------


def _frame(mac: bytes, source: int, text: bytes) -> bytes:
    return mac + bytes([2, 0, 0, 0, 0, source]) + b"\x88\xb5" + text.ljust(64, b"\0")


def _e1000(workdir: Path, copy_dirty: bool) -> Result:
    checks: list[str] = []
    wire_path = workdir / "wire.sock"
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)) as wire:
        wire.bind(str(wire_path))
        wire.listen(2)
        wire.settimeout(_WAIT)
        with _pair(workdir, "e1000", ["--backend", f"socket:{wire_path}"], accept=wire) as (source, destination, links):
            src_link, dst_link = links
            driver = E1000Driver(source.machine, _Clock())  # type: ignore[arg-type]
            driver.probe()
            driver.open()
            _until(driver.check_link, "the e1000 link to come up")
            mac = driver.mac

            def received(drv: E1000Driver, count: int) -> list[bytes]:
                frames: list[bytes] = []

                def enough() -> bool:
                    frames.extend(f.data for f in drv.clean_rx())
                    return len(frames) >= count

                _until(enough, f"{count} received frames")
                return frames

            sent = _frame(b"\xff" * 6, 1, b"from the guest, before")
            driver.xmit(sent)
            _expect("e1000: transmit before", src_link.recv(4096)[: len(sent)], sent, checks)
            src_link.send(_frame(mac, 1, b"to the guest, before"))
            _expect("e1000: receive before", received(driver, 1), [_frame(mac, 1, b"to the guest, before")], checks)
            driver.clean_tx()

            def frame_arrives() -> None:
                # The wire delivers while RAM is copied: the device writes the buffer and
                # the descriptor (RXD DD), which the guest only reads.
                src_link.send(_frame(mac, 2, b"to the guest, in the precopy window"))
                gpa = driver.rx_ring + 16 * driver.rx_clean
                _until(lambda: bool(source.machine.memory.load_u8(gpa + 12) & er.RXD_STAT_DD),
                       "the precopy-window frame in the receive ring")

            downtime = migrate(source, destination, during_precopy=frame_arrives, copy_dirty=copy_dirty)
            after = E1000Driver(destination.machine, _Clock())  # type: ignore[arg-type]
            for name in ("bar0", "io", "gsi", "devfn", "mac", "link", "tx_next", "tx_clean", "tx_watch", "rx_clean"):
                setattr(after, name, getattr(driver, name))  # the guest's driver state moves with its RAM
            got = [f.data for f in after.clean_rx()]
            _expect("e1000: the precopy-window frame is in the destination's ring", got,
                    [_frame(mac, 2, b"to the guest, in the precopy window")], checks)
            _expect("e1000: RCTL on the destination", after.er32(er.RCTL) & er.RCTL_EN, er.RCTL_EN, checks)
            sent = _frame(b"\xff" * 6, 3, b"from the guest, after")
            after.xmit(sent)
            _expect("e1000: transmit after, by the destination", dst_link.recv(4096)[: len(sent)], sent, checks)
            dst_link.send(_frame(mac, 3, b"to the guest, after"))
            _expect("e1000: receive after", received(after, 1), [_frame(mac, 3, b"to the guest, after")], checks)
            after.clean_tx()
            _expect("e1000: transmit ring cleaned", after.tx_clean, after.tx_next, checks)
    return Result("e1000", downtime, checks)


# -- AHCI ------------------------------------------------------------------------------------

_DISK = 8 << 20
_SECTORS = 16


def _pattern(seed: int) -> bytes:
    return bytes((i * seed + (i >> 9)) & 0xFF for i in range(_SECTORS * 512))


def _ahci_driver(vmm: Vmm) -> AhciDriver:
    abar = vmm.bar(ar.AHCI_ABAR_INDEX)
    bus = vmm.machine.mmio
    return AhciDriver(lambda offset, size: bus.read(abar + offset, size),
                      lambda offset, size, value: bus.write(abar + offset, size, value),
                      vmm.machine.memory, 0x100000, 0x400000, lambda: time.sleep(0.0005))


def _ahci(workdir: Path, copy_dirty: bool) -> Result:
    checks: list[str] = []
    image = workdir / "disk.img"
    image.write_bytes(bytes(_DISK))
    with _pair(workdir, "ahci", ["--backend", f"file:{image}"]) as (source, destination, _):
        driver = _ahci_driver(source)
        driver.reset_hba()
        driver.start_port(0)
        result, ident = driver.identify(0)
        _expect("ahci: IDENTIFY before", result.ok, True, checks)
        out, back, late = driver.alloc(_SECTORS * 512), driver.alloc(_SECTORS * 512), driver.alloc(_SECTORS * 512)
        source.machine.memory.write(out, _pattern(3))
        _expect("ahci: WRITE DMA before", driver.rw_dma(0, 100, _SECTORS, out, write=True).ok, True, checks)
        _expect("ahci: READ DMA before", driver.rw_dma(0, 100, _SECTORS, back, write=False).ok, True, checks)
        _expect("ahci: data read back before", source.machine.memory.read(back, _SECTORS * 512), _pattern(3), checks)
        # A READ DMA whose table the guest built before the copy; issued in the window.
        tf = TaskFile(command=ad.ATA_CMD_READ_EXT, lba=100, count=_SECTORS, device=ad.ATA_LBA)
        driver.prepare(0, 1, tf, [(late, _SECTORS * 512)])

        def read_in_window() -> None:
            driver.issue(0, 1 << 1)

        downtime = migrate(source, destination, during_precopy=read_in_window, copy_dirty=copy_dirty)
        after = _ahci_driver(destination)
        after.clb, after.fb, after.tables, after._next = driver.clb, driver.fb, driver.tables, driver._next
        _expect("ahci: the window's command completed", after.wait_slot(0, 1).ok, True, checks)
        _expect("ahci: its data is in the destination's RAM", destination.machine.memory.read(late, _SECTORS * 512),
                _pattern(3), checks)
        destination.machine.memory.write(out, _pattern(5))
        _expect("ahci: WRITE DMA after", after.rw_dma(0, 300, _SECTORS, out, write=True).ok, True, checks)
        _expect("ahci: READ DMA after", after.rw_dma(0, 100, _SECTORS, back, write=False).ok, True, checks)
        _expect("ahci: the source's writes read back", destination.machine.memory.read(back, _SECTORS * 512),
                _pattern(3), checks)
        _expect("ahci: FLUSH after", after.flush(0).ok, True, checks)
    data = image.read_bytes()
    _expect("ahci: the image holds both writes", (data[100 * 512 : (100 + _SECTORS) * 512],
                                                 data[300 * 512 : (300 + _SECTORS) * 512]),
            (_pattern(3), _pattern(5)), checks)
    return Result("ahci", downtime, checks)


# -- plumbing --------------------------------------------------------------------------------


@dataclass
class _Side:
    server: ServerProcess
    vmm: Vmm | None = None
    peer: socket.socket | None = None


@contextlib.contextmanager
def _pair(workdir: Path, device: str, args: list[str], *,
          accept: socket.socket | None = None) -> Iterator[tuple[Vmm, Vmm, list[socket.socket]]]:
    """Both servers (source, then destination), their VMMs, and each server's end of the
    wire when ``accept`` listens for them (rule 5)."""
    sides: list[_Side] = []
    try:
        for name in ("source", "destination"):
            server = ServerProcess(workdir / f"{name}.sock", device, args, log=workdir / f"{name}.log")
            side = _Side(server)
            sides.append(side)
            if accept is not None:
                side.peer, _ = accept.accept()
                side.peer.settimeout(_WAIT)
            side.vmm = Vmm.connect(server.socket_path, _RAM)
        assert sides[0].vmm is not None and sides[1].vmm is not None
        yield sides[0].vmm, sides[1].vmm, [side.peer for side in sides if side.peer is not None]
        for side in sides:
            if not side.server.alive:
                raise MigrationCheckFailed(f"{device}: a server died: {side.server.log_tail()}")
    finally:
        for side in reversed(sides):
            if side.vmm is not None:
                side.vmm.close()
            if side.peer is not None:
                side.peer.close()
            side.server.stop()


SCENARIOS: dict[str, Callable[[Path, bool], Result]] = {"testdev": _testdev, "e1000": _e1000, "ahci": _ahci}


def run(device: str, workdir: Path, *, copy_dirty: bool = True) -> Result:
    """Run the scenario of ``device`` in ``workdir`` (rules 1–5).

    Raises:
        MigrationCheckFailed: the guest saw a difference.
        KeyError: no scenario for ``device``.
    """
    return SCENARIOS[device](workdir, copy_dirty)
