"""Register map of the devmodels PCI test device (BAR0, 4 KiB). Constants only.

The device is ours (no datasheet): an ID register, a scratch register, an interrupt
block (status, raise, acknowledge) and a one-shot DMA copy engine, like QEMU's ``edu``.
"""

from __future__ import annotations

__all__ = [
    "TESTDEV_VENDOR_ID",
    "TESTDEV_DEVICE_ID",
    "TESTDEV_CLASS",
    "TESTDEV_MAGIC",
    "ID",
    "SCRATCH",
    "IRQ_STATUS",
    "IRQ_RAISE",
    "IRQ_ACK",
    "DMA_SRC",
    "DMA_DST",
    "DMA_LEN",
    "DMA_CMD",
    "DMA_STATUS",
    "DMA_CMD_START",
    "DMA_STATUS_IDLE",
    "DMA_STATUS_DONE",
    "DMA_STATUS_ERROR",
    "IRQ_DMA_DONE",
    "IRQ_DMA_ERROR",
    "DMA_MAX_LEN",
    "BAR0_SIZE",
    "BAR1_SIZE",
    "BAR2_SIZE",
    "MSIX_VECTORS",
]

TESTDEV_VENDOR_ID = 0x1234  # the "no vendor" ID QEMU's test devices use
TESTDEV_DEVICE_ID = 0xDE70
TESTDEV_CLASS = 0x00FF00  # unclassified, "other"
TESTDEV_MAGIC = 0x7E57_DE70

ID = 0x00
SCRATCH = 0x04
IRQ_STATUS = 0x08
IRQ_RAISE = 0x0C
IRQ_ACK = 0x10
DMA_SRC = 0x20
DMA_DST = 0x28
DMA_LEN = 0x30
DMA_CMD = 0x34
DMA_STATUS = 0x38

DMA_CMD_START = 0b1
DMA_STATUS_IDLE = 0
DMA_STATUS_DONE = 1
DMA_STATUS_ERROR = 2

IRQ_DMA_DONE = 0b0001
IRQ_DMA_ERROR = 0b0010

DMA_MAX_LEN = 1 << 20  # bounded work per command

BAR0_SIZE = 0x1000
BAR1_SIZE = 0x10
BAR2_SIZE = 0x1000
MSIX_VECTORS = 2
