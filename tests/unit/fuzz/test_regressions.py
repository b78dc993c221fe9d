"""Regressions found by the fuzzing campaign, one test per bug, named for it.

Each test reproduces the finding directly on the code that had the bug (and fails without
the fix); ``test_regression_reproducers_replay_clean`` also replays every committed
reproducer under ``fuzz/regressions/<target>/`` through its fuzz target. Reproducers of
findings routed to other owners replay clean because the harness works around them
(``fuzz._rig.STRICT``); with ``DEVMODELS_FUZZ_STRICT=1`` they fire.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devmodels import Machine
from devmodels.pci import defs as pcidefs
from devmodels.qemu.mpqemu import FramingError, MessageFramer
from devmodels.qemu.mpqemu import defs as m
from devmodels.qemu.mpqemu.layouts import MSG_HEADER, encode_message
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as t
from fuzz import load_executor
from fuzz._runner import FUZZ_DIR, TARGETS


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_regression_mpqemu_framing_error_closes_completed_messages_fds() -> None:
    """A FramingError after a message completed in the same ``feed`` leaked that message's fds.

    Found by the mpqemu target (fd-leak): descriptors sent ahead of a message's bytes wait
    in the framer, the message completes, and a later oversized header in the same read
    raised with the completed message (and its descriptors) dropped on the floor.
    """
    framer = MessageFramer()
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    message = encode_message(m.MPQEMU_CMD_DEVICE_RESET)
    assert framer.feed(message[:5], [fd]) == []
    with pytest.raises(FramingError):
        framer.feed(message[5:] + MSG_HEADER.pack(m.MPQEMU_CMD_BAR_READ, 1 << 20))
    framer.close()
    if _is_open(fd):
        os.close(fd)
        pytest.fail("the descriptor of the message completed before the bad header leaked")


def test_regression_testdev_dma_address_dword_writes() -> None:
    """DMA_SRC/DMA_DST dropped 32-bit writes (only 8-byte accesses reached them).

    Found by ``tests/property/test_stateful_testdev.py``: a driver programming the 64-bit
    addresses as two dwords (as a 32-bit guest, or QEMU's edu driver, does) copied from 0.
    """
    machine = Machine(ram_size=1 << 16, ram_backing="bytearray")
    device = PciTestDevice(machine.memory)
    device.config_write(pcidefs.PCI_COMMAND, 2, pcidefs.PCI_COMMAND_MASTER)
    machine.memory.write(0x1230, b"payload")
    for reg, value in ((t.DMA_SRC, 0x1230), (t.DMA_DST, 0x4560)):
        device.registers.write(reg, 4, value)
        device.registers.write(reg + 4, 4, 0)
    device.registers.write(t.DMA_LEN, 4, 7)
    device.registers.write(t.DMA_CMD, 4, t.DMA_CMD_START)
    assert device.registers.read(t.DMA_SRC, 8) == 0x1230
    assert machine.memory.read(0x4560, 7) == b"payload"
    machine.close()


def _reproducers() -> list[Path]:
    return sorted(p for p in (FUZZ_DIR / "regressions").glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", _reproducers(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regression_reproducers_replay_clean(path: Path) -> None:
    assert path.parent.name in TARGETS, f"{path} is under a directory that names no target"
    load_executor(path.parent.name)(path.read_bytes(), check_memory=True)


def test_regression_vhost_user_feed_fatal_closes_completed_messages_fds() -> None:
    """A message whose descriptor came with its first bytes completes in the same read as
    a header the protocol cannot frame past: the completed message never reaches the
    session, so its descriptor must be closed, not leaked
    (fuzz/regressions/vhost_user/feed-fatal-leaks-fds)."""
    from virtio.vhost_user.defs import VHOST_USER_VERSION
    from virtio.vhost_user.layouts import HEADER
    from virtio.vhost_user.messages import MessageReader, ProtocolError

    set_owner = HEADER.pack(3, VHOST_USER_VERSION, 0)  # VHOST_USER_SET_OWNER, no payload
    bad = HEADER.pack(3, VHOST_USER_VERSION, 1 << 30)  # payload size past the protocol's limit
    fd = os.eventfd(0)
    reader = MessageReader()
    assert reader.feed(set_owner[:6], [fd]) == []
    with pytest.raises(ProtocolError):
        reader.feed(set_owner[6:] + bad)
    reader.close()
    with pytest.raises(OSError):
        os.fstat(fd)
