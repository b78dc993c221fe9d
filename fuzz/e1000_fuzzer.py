#!/usr/bin/env python3
"""Fuzz target: the e1000 (82540EM) with an in-memory loopback cable.

Ops: BAR0 registers (region 0) and the IOADDR/IODATA window (region 1), config space
(MSI offered, so the fuzzer can switch it on), guest RAM, ``TICK`` (the interrupt
moderation timers) and ``BACKEND``:

- ``event % 4 == 0``: a frame arrives from the wire (``receive_frame``);
- ``1``: the peer sends a frame and the VMM pulls it (``receive_pending``);
- ``2``: the cable is plugged (``event & 4``) or pulled (``set_link``);
- ``3``: the peer drains what the device transmitted.

A frame is ``14 + (arg >> 20)`` bytes of guest RAM from ``arg & 0xFFFFF`` (up to 4 KiB, so
oversized frames are reachable). Healthy after reset means: the in-package driver
simulator (``devmodels.e1000.testing.E1000Driver``) resets the MAC, reads the EEPROM,
opens the rings, transmits a frame that reaches the peer and receives one from it.

OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    from typing import Any

    from devmodels import Machine
    from devmodels.backends import LoopbackBackend
    from devmodels.e1000 import DEFAULT_MAC, E1000, E1000State
    from devmodels.e1000 import regs as r
    from devmodels.e1000.testing import DriverError, E1000Driver
    from devmodels.pci import defs as pci
    from fuzz._execute import run_input
    from fuzz._ops import OpKind
    from fuzz._record import Recorder, record
    from fuzz._rig import RAM_SIZE, Finding, PciRig

_DMA_BASE = 0x20000  # the driver simulator's rings and buffers (inside the 1 MiB of RAM)
_PEER = bytes.fromhex("020000000001")
_FRAME = _PEER + DEFAULT_MAC + b"\x08\x00" + bytes(range(46))  # device -> peer
_REPLY = DEFAULT_MAC + _PEER + b"\x88\xb5" + b"health" * 10  # peer -> device


class E1000Rig(PciRig):
    """An e1000 on bus 0 whose cable ends in an in-memory peer."""

    def __init__(self) -> None:
        machine = Machine(ram_size=RAM_SIZE, ram_backing="bytearray")
        self.wire, self.peer = LoopbackBackend.pair(capacity=16)
        self.device = E1000(machine.memory, self.wire, msi=True)
        super().__init__(machine, self.device, E1000State)
        self.now = 0

    def tick(self, delta_ns: int) -> None:
        """Time moves on by ``delta_ns``; expired moderation timers fire."""
        self.now += delta_ns
        self.device.tick(self.now)

    def _frame(self, arg: int) -> bytes:
        length = 14 + (arg >> 20)
        gpa = min(arg & 0xF_FFFF, self.machine.memory.size - length)
        return self.machine.memory.read(gpa, length)

    def backend_event(self, event: int, arg: int) -> None:
        """Wire events (module docstring)."""
        kind = event % 4
        if kind == 0:
            self.device.receive_frame(self._frame(arg))
        elif kind == 1:
            self.peer.send(self._frame(arg))
            self.device.receive_pending(1 + (event >> 2) % 8)
        elif kind == 2:
            self.device.set_link(bool(event & 4))
        else:
            self.peer.receive(64)

    def driver(self) -> E1000Driver:
        """A driver simulator bound to the current BAR assignment (no probe: cheap)."""
        driver = E1000Driver(self.machine, self.device, tx_ring=8, rx_ring=8, dma_base=_DMA_BASE)
        driver.devfn = self.devfn
        driver.bar0 = self.regions[0][1]
        driver.io = self.regions[1][1]
        driver.mac = DEFAULT_MAC
        return driver

    def health_check(self) -> None:
        """After reset: MAC reset, EEPROM, open, one frame each way (module docstring)."""
        self.peer.receive(1 << 10)  # frames the program transmitted
        self.wire.receive(1 << 10)  # frames the program left queued towards the device
        self.device.set_link(True)
        # Reset unassigned the BARs: program them back where enumeration put them.
        self.config_write(pci.PCI_BASE_ADDRESS_0, 4, self.regions[0][1])
        self.config_write(pci.PCI_BASE_ADDRESS_0 + 4, 4, self.regions[1][1] | 1)
        driver = self.driver()
        command = pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_IO | pci.PCI_COMMAND_MASTER
        self.config_write(pci.PCI_COMMAND, 2, command)
        try:
            driver.reset_hw()
            words = [self._eerd(driver, i) for i in range(3)]
            if bytes(b for w in words for b in (w & 0xFF, w >> 8)) != DEFAULT_MAC:
                raise Finding("reset", f"EEPROM MAC words read {words} after reset")
            driver.open(itr=0)
            if not driver.check_link():
                raise Finding("reset", "no link after reset with the cable plugged")
            driver.xmit(_FRAME)
            driver.run_timers()
            sent = self.peer.receive(8)
            if sent != [_FRAME]:
                raise Finding("reset", f"transmit after reset delivered {sent!r}")
            self.peer.send(_REPLY)
            self.device.receive_pending()
            driver.run_timers()
            got = [f.data for f in driver.clean_rx()]
            if got != [_REPLY]:
                raise Finding("reset", f"receive after reset gave {got!r}")
        except DriverError as exc:
            raise Finding("reset", f"driver simulator failed after reset: {exc}") from exc

    @staticmethod
    def _eerd(driver: E1000Driver, word: int) -> int:
        """One EEPROM word through EERD (the bit-banged path is in a seed; it costs 100 accesses)."""
        driver.ew32(r.EERD, r.EERD_START | word << r.EERD_ADDR_SHIFT)
        value = driver.er32(r.EERD)
        if not value & r.EERD_DONE:
            raise Finding("reset", "EERD does not complete after reset")
        return value >> r.EERD_DATA_SHIFT

    def close(self) -> None:
        """Release RAM and both cable ends."""
        super().close()
        self.wire.close()
        self.peer.close()


def build() -> E1000Rig:
    """A fresh rig (one per input: runs are deterministic)."""
    return E1000Rig()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    run_input(build, data)


# -- seeds: recorded from the driver simulator (fuzz._record) ------------------------------


def _opened(rec: Recorder, **options: Any) -> E1000Driver:
    rig = rec.rig
    assert isinstance(rig, E1000Rig)
    driver = rig.driver()
    command = pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_IO | pci.PCI_COMMAND_MASTER
    rec.machine.config_write(0, rig.devfn, pci.PCI_COMMAND, 2, command)
    driver.open(**options)
    driver.check_link()
    return driver


def _seed_tx(rec: Recorder) -> None:
    driver = _opened(rec, itr=0)
    driver.xmit(_FRAME)
    rec.op(OpKind.TICK, 100_000)
    driver.handle_irq()
    rec.op(OpKind.BACKEND, 3, 0)


def _seed_rx(rec: Recorder) -> None:
    driver = _opened(rec, itr=0)
    gpa = 0x8_0000
    rec.machine.memory.write(gpa, _REPLY)
    rec.op(OpKind.BACKEND, 1, gpa | (len(_REPLY) - 14) << 20)
    rec.op(OpKind.BACKEND, 0, gpa | (len(_REPLY) - 14) << 20)
    rec.op(OpKind.TICK, 100_000)
    driver.handle_irq()


def _tcp_frame(payload: int) -> bytes:
    ip = bytes.fromhex("4500") + (40 + payload).to_bytes(2, "big") + bytes.fromhex("00014000400600000a0000010a000002")
    tcp = bytes.fromhex("04d2162e0000000100000000501020000000") + bytes(2)
    return _PEER + DEFAULT_MAC + b"\x08\x00" + ip + tcp + bytes(i & 0xFF for i in range(payload))


def _seed_tso(rec: Recorder) -> None:
    driver = _opened(rec, itr=0)
    driver.xmit(_tcp_frame(200), tso_mss=64)
    rec.op(OpKind.TICK, 1_000_000)
    driver.handle_irq()


def _seed_csum_vlan(rec: Recorder) -> None:
    driver = _opened(rec, itr=0)
    rec.machine.mmio.write(driver.bar0 + r.CTRL, 4, driver.er32(r.CTRL) | r.CTRL_VME)
    driver.xmit(_tcp_frame(40), csum_start=34, csum_offset=16, vlan=0x123)
    rec.op(OpKind.TICK, 1_000_000)
    driver.handle_irq()


def _seed_loopback(rec: Recorder) -> None:
    driver = _opened(rec, itr=0)
    driver.ew32(r.RCTL, driver.er32(r.RCTL) | r.RCTL_LBM_MAC)
    driver.xmit(_REPLY)
    rec.op(OpKind.TICK, 1_000_000)
    driver.handle_irq()


def _seed_moderation(rec: Recorder) -> None:
    driver = _opened(rec, itr=8000, rdtr=16, radv=64, tidv=32, tadv=128)
    driver.xmit(_FRAME)
    gpa = 0x8_0000
    rec.machine.memory.write(gpa, _REPLY)
    rec.op(OpKind.BACKEND, 1, gpa | (len(_REPLY) - 14) << 20)
    for step in (1_000, 30_000, 200_000, 2_000_000):
        rec.op(OpKind.TICK, step)
    driver.handle_irq()


def _seed_eeprom_phy(rec: Recorder) -> None:
    rig = rec.rig
    assert isinstance(rig, E1000Rig)
    driver = rig.driver()
    command = pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_IO
    rec.machine.config_write(0, rig.devfn, pci.PCI_COMMAND, 2, command)
    driver.reset_hw()
    driver.read_eeprom(0)
    driver.ew32(r.EERD, r.EERD_START | 1 << r.EERD_ADDR_SHIFT)
    driver.er32(r.EERD)
    for reg in range(0, 32, 3):
        driver.read_phy(reg)
    driver.write_phy(0, 0x9140)
    driver.write_reg_io(r.IMS, 0xFFFF)
    rec.machine.pio.read(driver.io + r.IODATA, 4)


def _seed_msi(rec: Recorder) -> None:
    rig = rec.rig
    assert isinstance(rig, E1000Rig)
    msi = rig.device.msi
    assert msi is not None
    base = msi.offset
    rec.machine.config_write(0, rig.devfn, base + 4, 4, 0xFEE0_0000)
    rec.machine.config_write(0, rig.devfn, base + 12, 2, 0x41)
    rec.machine.config_write(0, rig.devfn, base + 2, 2, 1)
    driver = _opened(rec, itr=0)
    driver.xmit(_FRAME)
    rec.op(OpKind.TICK, 100_000)
    rec.op(OpKind.SNAPSHOT)
    driver.handle_irq()


SEEDS = {
    "tx-frame": _seed_tx,
    "rx-frame": _seed_rx,
    "tso": _seed_tso,
    "csum-vlan": _seed_csum_vlan,
    "mac-loopback": _seed_loopback,
    "moderation-timers": _seed_moderation,
    "eeprom-phy-io": _seed_eeprom_phy,
    "msi": _seed_msi,
}


def seeds() -> dict[str, bytes]:
    """The committed seed corpus, regenerated (``python -m fuzz seeds e1000``)."""
    return {name: record(build, script) for name, script in SEEDS.items()}


if __name__ == "__main__":
    fuzz_main(TestOneInput)
