"""The demo: an in-process machine with a PCI host bridge and the test device.

It does what firmware and a guest driver would: enumerates bus 0 through config cycles,
assigns BARs, then uses the device (MMIO and port I/O registers, a DMA copy in guest RAM,
MSI-X and INTx interrupts) and prints what it saw.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._machine import Machine
from .pci import defs
from .testdev import PciTestDevice
from .testdev import regs as r

__all__ = ["main", "run_demo"]

_CLASS_NAMES = {0x0600: "host bridge", 0x00FF: "unclassified", 0x0200: "ethernet", 0x0106: "SATA"}


def run_demo() -> list[str]:
    """Build the machine, exercise the device, return the report lines."""
    lines: list[str] = []
    with Machine(ram_size=16 << 20) as machine:
        device = PciTestDevice(machine.memory)
        machine.add_pci(device)
        found = machine.enumerate()
        lines.append("PCI bus 0 (enumerated through 0xCF8/0xCFC config cycles):")
        lines.append(f"  {'BDF':<8} {'ID':<10} {'class':<22} {'IRQ':<5} BARs")
        for info in found:
            kind = _CLASS_NAMES.get(info.class_code >> 8, "?")
            bars = ", ".join(f"BAR{b.index} {b.kind} {b.size:#x}@{b.address:#x}" for b in info.bars if b.address is not None)
            irq = f"{info.interrupt_line}" if info.interrupt_pin else "-"
            lines.append(
                f"  {info.bdf:<8} {info.vendor_id:04x}:{info.device_id:04x}  {info.class_code:06x} {kind:<14} {irq:<5} {bars or '-'}"
            )
        dev = next(i for i in found if i.vendor_id == r.TESTDEV_VENDOR_ID)
        bar0 = next(b.address for b in dev.bars if b.index == 0)
        bar1 = next(b.address for b in dev.bars if b.index == 1)
        assert bar0 is not None and bar1 is not None
        mmio, pio = machine.mmio, machine.pio
        lines.append("")
        lines.append(f"testdev ID via MMIO: {mmio.read(bar0 + r.ID, 4):#010x}, via port I/O: {pio.read(bar1 + r.ID, 4):#010x}")
        mmio.write(bar0 + r.SCRATCH, 4, 0xC0FFEE)
        lines.append(f"scratch round trip: {mmio.read(bar0 + r.SCRATCH, 4):#x}")

        payload = b"devmodels DMA " * 16
        machine.memory.write(0x10000, payload)
        mmio.write(bar0 + r.DMA_SRC, 8, 0x10000)
        mmio.write(bar0 + r.DMA_DST, 8, 0x20000)
        mmio.write(bar0 + r.DMA_LEN, 4, len(payload))
        mmio.write(bar0 + r.DMA_CMD, 4, r.DMA_CMD_START)
        copied = machine.memory.read(0x20000, len(payload)) == payload
        gsi = dev.interrupt_line
        lines.append(
            f"DMA copy of {len(payload)} bytes: status={mmio.read(bar0 + r.DMA_STATUS, 4)} "
            f"data {'matches' if copied else 'DIFFERS'}; INTx GSI {gsi} level={machine.irq.levels.get(gsi, False)}"
        )
        mmio.write(bar0 + r.IRQ_ACK, 4, 0xFFFF_FFFF)
        lines.append(f"after IRQ_ACK: GSI {gsi} level={machine.irq.levels.get(gsi, False)}")

        msix_cap = device.caps.find(defs.PCI_CAP_ID_MSIX)
        assert msix_cap is not None
        bar2 = next(b.address for b in dev.bars if b.index == 2)
        assert bar2 is not None
        mmio.write(bar2 + 0, 4, 0xFEE0_0000)
        mmio.write(bar2 + 8, 4, 0x4041)
        mmio.write(bar2 + 12, 4, 0)
        machine.config_write(0, dev.devfn, msix_cap + 2, 2, defs.PCI_MSIX_FLAGS_ENABLE)
        mmio.write(bar0 + r.IRQ_RAISE, 4, 0b100)
        msg = machine.irq.msi[-1] if machine.irq.msi else None
        lines.append(f"MSI-X vector 0 after IRQ_RAISE: {f'address={msg.address:#x} data={msg.data:#x}' if msg else 'none'}")
    return lines


def main(argv: Sequence[str] = ()) -> int:
    """``devmodels demo``."""
    parser = argparse.ArgumentParser(prog="devmodels demo", description=__doc__)
    parser.parse_args(list(argv))
    print("\n".join(run_demo()))
    return 0
