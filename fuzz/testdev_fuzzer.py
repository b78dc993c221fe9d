#!/usr/bin/env python3
"""Fuzz target: the devmodels PCI test device (registers, DMA engine, MSI/MSI-X, INTx).

OSS-Fuzz layout: ``TestOneInput`` plus ``atheris.Setup``/``atheris.Fuzz`` under ``main``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    from devmodels import Machine
    from devmodels.testdev import PciTestDevice, PciTestDeviceState
    from devmodels.testdev import regs as r
    from fuzz._execute import run_input
    from fuzz._rig import RAM_SIZE, Finding, PciRig


class TestdevRig(PciRig):
    """The test device on bus 0; healthy means ID reads its magic and DMA works."""

    def __init__(self) -> None:
        machine = Machine(ram_size=RAM_SIZE, ram_backing="bytearray")
        self.device = PciTestDevice(machine.memory)
        super().__init__(machine, self.device, PciTestDeviceState)

    def health_check(self) -> None:
        # after reset the BARs are unassigned: reprogram BAR0 and decode as a driver would
        self.config_write(0x10, 4, 0xC000_0000)
        self.config_write(0x04, 2, 0b110)
        bus = self.machine.mmio
        if bus.read(0xC000_0000 + r.ID, 4) != r.TESTDEV_MAGIC:
            raise Finding("reset", "ID register does not read its magic after reset")
        self.machine.memory.write(0x100, b"health")
        bus.write(0xC000_0000 + r.DMA_SRC, 8, 0x100)
        bus.write(0xC000_0000 + r.DMA_DST, 8, 0x200)
        bus.write(0xC000_0000 + r.DMA_LEN, 4, 6)
        bus.write(0xC000_0000 + r.DMA_CMD, 4, r.DMA_CMD_START)
        if self.machine.memory.read(0x200, 6) != b"health":
            raise Finding("reset", "DMA does not work after reset")


def build() -> TestdevRig:
    """A fresh rig (one per input: runs are deterministic)."""
    return TestdevRig()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    run_input(build, data)


if __name__ == "__main__":
    fuzz_main(TestOneInput)
