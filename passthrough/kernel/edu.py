"""An end-to-end check of kernel VFIO: QEMU's ``edu`` device driven through ``VfioPciDevice``.

Run inside a Linux guest where the edu function is bound to vfio-pci behind an IOMMU::

    python3 -m passthrough.kernel.edu 0000:00:03.0

The device is opened with ``open_pci_device``, plugged into a devmodels ``Machine`` whose
RAM is mapped for DMA, enumerated by the firmware code, then driven like a guest driver
would (register map from QEMU ``docs/specs/edu.rst``): identification and liveness
registers, factorial, DMA both ways through the IOMMU, INTx and MSI arriving on eventfds.
Each step prints ``DEVMODELS-CHECK <name> <PASS|FAIL> [detail]`` (the guest harness
protocol); the exit status is 0 when all passed. Waits for the device are bounded.
"""

from __future__ import annotations

import select
import sys
import time
from collections.abc import Callable, Sequence

from devmodels import DevmodelsError, Machine

from ..device import VfioPciDevice
from .device import open_pci_device
from .ops import KernelOps

__all__ = ["EDU_VENDOR_ID", "EDU_DEVICE_ID", "run_checks", "main"]

EDU_VENDOR_ID = 0x1234
EDU_DEVICE_ID = 0x11E8

# docs/specs/edu.rst "MMIO area spec"
ID = 0x00
LIVENESS = 0x04
FACTORIAL = 0x08
STATUS = 0x20
IRQ_STATUS = 0x24
IRQ_RAISE = 0x60
IRQ_ACK = 0x64
DMA_SRC = 0x80
DMA_DST = 0x88
DMA_COUNT = 0x90
DMA_CMD = 0x98
STATUS_COMPUTING = 0x01
DMA_CMD_START = 0x01
DMA_CMD_FROM_DEVICE = 0x02
DMA_CMD_IRQ = 0x04
DMA_IRQ_VALUE = 0x100
EDU_BUFFER = 0x40000

Report = Callable[[str, bool, str], None]
_WAIT = 20.0  # seconds; TCG is slow, and a lost interrupt must end the check, not hang it


def _print_report(name: str, ok: bool, detail: str = "") -> None:
    print(f"DEVMODELS-CHECK {name} {'PASS' if ok else 'FAIL'} {detail}".rstrip(), flush=True)


def _wait_fds(fds: Sequence[int], timeout: float) -> bool:
    ready, _, _ = select.select(list(fds), [], [], timeout)
    return bool(ready)


def run_checks(bdf: str, report: Report = _print_report, ops: KernelOps | None = None) -> bool:
    """Drive the edu function at ``bdf``; report each step; return whether all passed."""
    results: list[bool] = []

    def check(name: str, ok: bool, detail: str = "") -> bool:
        results.append(ok)
        report(name, ok, detail)
        return ok

    try:
        device = VfioPciDevice(open_pci_device(bdf, ops), name="edu")
    except DevmodelsError as exc:
        check("vfio.open", False, str(exc))
        return False
    machine = Machine(ram_size=16 << 20, ram_backing="anonymous")
    try:
        check("vfio.open", True, f"{device.config_read(0, 4):08x} irq={device.irq_mode}")
        device.map_memory(machine.memory)
        check("vfio.dma_map", True, f"{machine.memory.size:#x} bytes at iova 0")
        machine.add_pci(device)
        info = next(i for i in machine.enumerate() if i.vendor_id == EDU_VENDOR_ID)
        bar0 = next(b.address for b in info.bars if b.index == 0)
        assert bar0 is not None
        mmio = machine.mmio

        def reg(offset: int, size: int = 4) -> int:
            return mmio.read(bar0 + offset, size)

        def set_reg(offset: int, value: int, size: int = 4) -> None:
            mmio.write(bar0 + offset, size, value)

        def poll(offset: int, mask: int) -> bool:
            deadline = time.monotonic() + _WAIT
            while reg(offset) & mask:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.005)
            return True

        ident = reg(ID)
        check("edu.id", ident & 0xFF == 0xED, f"{ident:#010x}")
        set_reg(LIVENESS, 0x1234_5678)
        check("edu.liveness", reg(LIVENESS) == 0xEDCB_A987, f"{reg(LIVENESS):#010x}")
        set_reg(FACTORIAL, 10)
        done = poll(STATUS, STATUS_COMPUTING)
        check("edu.factorial", done and reg(FACTORIAL) == 3628800, f"10! = {reg(FACTORIAL)}")

        pattern = bytes((i * 7 + 3) & 0xFF for i in range(256))
        machine.memory.write(0x10000, pattern)
        set_reg(DMA_SRC, 0x10000, 8)
        set_reg(DMA_DST, EDU_BUFFER, 8)
        set_reg(DMA_COUNT, len(pattern), 8)
        set_reg(DMA_CMD, DMA_CMD_START, 8)
        to_device = poll(DMA_CMD, DMA_CMD_START)
        set_reg(DMA_SRC, EDU_BUFFER, 8)
        set_reg(DMA_DST, 0x20000, 8)
        set_reg(DMA_CMD, DMA_CMD_START | DMA_CMD_FROM_DEVICE, 8)
        from_device = poll(DMA_CMD, DMA_CMD_START)
        copied = machine.memory.read(0x20000, len(pattern))
        check("edu.dma", to_device and from_device and copied == pattern, f"{sum(a == b for a, b in zip(copied, pattern, strict=True))}/256 bytes")

        gsi = info.interrupt_line
        set_reg(IRQ_RAISE, 0x1)
        fired = _wait_fds(device.interrupt_fds(), _WAIT) and device.service_interrupts() > 0
        check("edu.intx", fired and machine.irq.levels.get(gsi, False), f"mode={device.irq_mode} gsi={gsi}")
        status = reg(IRQ_STATUS)  # the handler's read: EOI, the host unmasks INTx
        set_reg(IRQ_ACK, status)
        if _wait_fds(device.interrupt_fds(), 0.5):  # re-fired before the ack landed: EOI again
            device.service_interrupts()
            reg(IRQ_STATUS)
        check("edu.intx_ack", not machine.irq.levels.get(gsi, False), f"status was {status:#x}")

        msi = device.msi
        if check("edu.msi_cap", msi is not None, "MSI capability presented") and msi is not None:
            address, data = 0xFEE0_0000, 0x4041
            machine.config_write(0, info.devfn, msi.offset + 4, 4, address)
            machine.config_write(0, info.devfn, msi.offset + 8, 4, 0)
            machine.config_write(0, info.devfn, msi.offset + (12 if msi.is_64bit else 8), 2, data)
            machine.config_write(0, info.devfn, msi.offset + 2, 2, 0x0001)
            check("edu.msi_enable", device.irq_mode == "msi", f"mode={device.irq_mode}")
            set_reg(IRQ_RAISE, 0x2)
            got = _wait_fds(device.interrupt_fds(), _WAIT) and device.service_interrupts() > 0
            check("edu.msi", got and (address, data) in machine.irq.msi, f"{machine.irq.msi[-1:]}")
            set_reg(IRQ_ACK, 0x2)
            before = len(machine.irq.msi)
            set_reg(DMA_SRC, 0x10000, 8)
            set_reg(DMA_DST, EDU_BUFFER, 8)
            set_reg(DMA_COUNT, 64, 8)
            set_reg(DMA_CMD, DMA_CMD_START | DMA_CMD_IRQ, 8)
            got = _wait_fds(device.interrupt_fds(), _WAIT) and device.service_interrupts() > 0
            irq_status = reg(IRQ_STATUS)
            check("edu.dma_msi", got and len(machine.irq.msi) > before and irq_status & DMA_IRQ_VALUE != 0, f"status={irq_status:#x}")
            set_reg(IRQ_ACK, irq_status)
        check("vfio.host_errors", device.host_error is None, str(device.host_error or ""))
        device.unmap_memory(machine.memory)
    except DevmodelsError as exc:
        check("edu.error", False, f"{type(exc).__name__}: {exc}")
    finally:
        device.close()
        machine.close()
    return all(results)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m passthrough.kernel.edu BDF``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m passthrough.kernel.edu BDF", file=sys.stderr)
        return 2
    return 0 if run_checks(args[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
