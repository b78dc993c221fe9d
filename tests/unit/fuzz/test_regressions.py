"""Regressions found by the fuzzing campaign, one test per bug, named for it.

Each test reproduces the finding directly on the code that had the bug (and fails without
the fix); ``test_regression_reproducers_replay_clean`` also replays every committed
reproducer under ``fuzz/regressions/<target>/`` through its fuzz target; the harness has
no workarounds, so a reproducer that fires again fails that test.
"""

from __future__ import annotations

import dataclasses

import os
from pathlib import Path

import pytest

from devmodels import Machine, SnapshotError, from_dict, to_dict
from devmodels.ahci import AhciController, AtaDisk
from devmodels.ahci import regs as ahci_regs
from devmodels.backends import LoopbackBackend, MemoryDiskBackend
from devmodels.pci import defs as pcidefs
from mpqemu import FramingError, MessageFramer
from mpqemu import defs as m
from mpqemu.layouts import MSG_HEADER, encode_message
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as t
from fuzz import load_executor
from fuzz._runner import FUZZ_DIR, TARGETS
from virtio.blk import VirtioBlkDevice
from virtio.device import RecordingTransport, VirtioDeviceState
from virtio.net import VirtioNetDevice
from virtio.queue import Virtqueue, errors as vq_errors
from virtio.queue.ring import IMPLEMENTATIONS
from virtio.testing import make_driver


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


def test_regression_vhost_user_fd_limit_closes_completed_messages_fds() -> None:
    """Descriptors sent ahead of a message's bytes wait in the reader; the message
    completes in a read whose leftover bytes bring more descriptors than one message may
    carry. The connection is then closed, and the completed message (holding the early
    descriptors) never reaches the session: its descriptors must be closed too
    (fuzz/regressions/vhost_user/fd-limit-leaks-completed-message-fds, found in the
    session-2 campaign)."""
    from virtio.vhost_user.defs import VHOST_USER_MAX_FDS, VHOST_USER_VERSION
    from virtio.vhost_user.layouts import HEADER
    from virtio.vhost_user.messages import MessageReader, ProtocolError

    early = [os.eventfd(0) for _ in range(3)]
    late = [os.eventfd(0) for _ in range(VHOST_USER_MAX_FDS + 1)]
    reader = MessageReader()
    assert reader.feed(b"", early) == []  # descriptors with no bytes (a legal recvmsg)
    set_owner = HEADER.pack(3, VHOST_USER_VERSION, 0)
    with pytest.raises(ProtocolError):
        reader.feed(set_owner + set_owner[:8], late)  # one message done, the next begun
    reader.close()
    leaked = [fd for fd in early + late if _is_open(fd)]
    for fd in leaked:
        os.close(fd)
    assert leaked == [], "descriptors of a message dropped with the connection stayed open"


# -- snapshot contract: restore(state()) accepts and reproduces every state ----------------------


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def ring(request: pytest.FixtureRequest) -> object:
    return IMPLEMENTATIONS[request.param]


def _clone(queue: Virtqueue, ring: object) -> Virtqueue:
    """A fresh queue restored from ``queue``'s state through plain data."""
    clone = Virtqueue(queue.max_size, packed=queue.packed, ring=ring)
    clone.restore(from_dict(type(queue.state()), to_dict(queue.state())))
    assert clone.state() == queue.state()
    return clone


def test_regression_virtqueue_size_zero_snapshot(ring: object) -> None:
    """A queue size of 0 (the setter takes 0..0xFFFF; the ring breaks on first use) made a
    state ``restore`` refused (fuzz/regressions/virtio_split/queue-size-zero-snapshot)."""
    machine = Machine(ram_size=1 << 20, ram_backing="bytearray")
    for packed in (False, True):
        queue = Virtqueue(8, packed=packed, ring=ring)
        queue.size = 0
        clone = _clone(queue, ring)
        for q in (queue, clone):
            q.ready = True
            assert q.pop_batch(machine.memory, 8) == []
            assert isinstance(q.broken_reason, vq_errors.QueueSizeError)
        assert clone.state() == queue.state()
    machine.close()


def test_regression_packed_size_below_positions_snapshot(ring: object) -> None:
    """A stopped packed queue resized below its ring positions made a state ``restore``
    refused (fuzz/regressions/virtio_packed/size-below-positions-snapshot,
    fuzz/regressions/virtio_mmio/queue-num-below-positions-snapshot); both copies must
    then break on first use the same way."""
    machine = Machine(ram_size=1 << 20, ram_backing="bytearray")
    memory = machine.memory
    driver = make_driver(memory, 8, packed=True)
    queue = Virtqueue(8, packed=True, ring=ring)
    driver.configure(queue)
    for _ in range(3):
        driver.add([b"req"], [8])
    driver.kick()
    chains = queue.pop_batch(memory, 8)
    queue.push_batch(memory, [(c, 0) for c in chains])
    assert queue.next_avail == 6  # two descriptors a buffer
    queue.ready = False  # MMIO QueueReady = 0, then QueueNum = 1
    queue.size = 1
    clone = _clone(queue, ring)
    for q in (queue, clone):
        q.ready = True
        assert q.pop_batch(memory, 8) == []
        assert "positions" in str(q.broken_reason)
    assert clone.state() == queue.state()
    machine.close()


def test_regression_packed_resize_with_buffers_in_flight_breaks_at_once(ring: object) -> None:
    """The in-flight table belongs to the size its buffers were taken under: resizing a
    packed ring that holds buffers breaks it when the size is written, so the snapshot
    never has to carry a table of another size."""
    machine = Machine(ram_size=1 << 20, ram_backing="bytearray")
    memory = machine.memory
    driver = make_driver(memory, 8, packed=True)
    queue = Virtqueue(8, packed=True, ring=ring)
    driver.configure(queue)
    driver.add([b"req"], [8, 8])
    driver.kick()
    assert len(queue.pop_batch(memory, 8)) == 1
    queue.size = 4
    assert isinstance(queue.broken_reason, vq_errors.QueueSizeError)
    assert "in flight" in str(queue.broken_reason)
    clone = _clone(queue, ring)
    assert clone.broken and clone.in_flight == queue.in_flight == 1
    machine.close()


def test_regression_split_shrunk_with_chains_in_flight_snapshot(ring: object) -> None:
    """A split queue shrunk below the chains it holds (rule 2 of ``virtqueue``) made a
    state ``restore`` refused: chains were popped under a valid size, only the maximum
    bounds them."""
    machine = Machine(ram_size=1 << 20, ram_backing="bytearray")
    memory = machine.memory
    driver = make_driver(memory, 8, in_order=True)
    queue = Virtqueue(8, ring=ring)
    driver.configure(queue)
    queue.in_order = True
    for _ in range(5):
        driver.add([b"x"], [])
    driver.kick()
    assert len(queue.pop_batch(memory, 8)) == 5
    queue.ready = False
    queue.size = 2
    clone = _clone(queue, ring)
    assert clone.in_flight == 5
    machine.close()


def test_regression_broken_reason_survives_restore(ring: object) -> None:
    """``restore`` re-worded the broken reason ("broken before the snapshot: ..."), so
    ``restore(state()) != state()`` (fuzz/regressions/virtio_split/broken-reason-rewritten)."""
    machine = Machine(ram_size=1 << 20, ram_backing="bytearray")
    memory = machine.memory
    driver = make_driver(memory, 8)
    queue = Virtqueue(8, ring=ring)
    driver.configure(queue)
    driver.raw_publish([9])  # a head past the table
    queue.pop_batch(memory, 8)
    assert queue.broken
    clone = _clone(queue, ring)
    reason = clone.broken_reason
    assert isinstance(reason, vq_errors.RestoredBrokenError) and reason.restored
    assert str(reason) == str(queue.broken_reason)
    assert _clone(clone, ring).state() == queue.state()
    machine.close()


@pytest.mark.parametrize("kind", ["blk", "net"])
def test_regression_virtio_device_section_through_plain_data(kind: str) -> None:
    """``from_dict(VirtioDeviceState, ...)`` left the device's own section a dict, which
    ``restore`` refused (fuzz/regressions/virtio_blk/snapshot-section-dict). The section is
    typed now (issue 15): it decodes with the device's ``state_type``
    (``VirtioDeviceState[VirtioBlkState]``), an unparameterized decode is refused instead
    of yielding a dict, and a section of the wrong shape is still rejected."""
    machine = Machine(ram_size=1 << 20, ram_backing="bytearray")
    ends = LoopbackBackend.pair()

    def build() -> VirtioBlkDevice | VirtioNetDevice:
        if kind == "blk":
            device: VirtioBlkDevice | VirtioNetDevice = VirtioBlkDevice(machine.memory, MemoryDiskBackend(1 << 20))
        else:
            device = VirtioNetDevice(machine.memory, ends[0])
        device.attach(RecordingTransport())
        return device

    device = build()
    if kind == "blk":
        device.write_config(32, 1, 0)  # writeback off: the section is not the default
    before = device.state()
    with pytest.raises(SnapshotError, match="not bound") as info:
        from_dict(VirtioDeviceState, to_dict(before))
    assert info.value.field == "state.device"
    typed = from_dict(device.state_type, to_dict(before))
    assert isinstance(typed.device, type(before.device))
    other = build()
    other.restore(typed)
    assert other.state() == before
    broken = dataclasses.replace(typed.device, version=99)
    with pytest.raises(SnapshotError) as info:
        build().restore(dataclasses.replace(typed, device=broken))
    assert info.value.field.startswith("device")
    with pytest.raises(SnapshotError) as info:
        build().restore(dataclasses.replace(typed, device=to_dict(typed.device)))
    assert info.value.field == "device"
    for end in ends:
        end.close()
    machine.close()


def test_regression_ahci_snapshot_with_commands_waiting_for_link() -> None:
    """Commands issued on a started port whose link is not up yet (staggered spin-up: no
    PxCMD.SUD) wait for the link; ``restore`` refused that quiesced state
    (fuzz/regressions/ahci/snapshot-pxci-issued). The restored port must start them when
    the link comes up, exactly as the original does."""
    machine = Machine(ram_size=1 << 20, ram_backing="bytearray")

    def build() -> AhciController:
        hba = AhciController(machine.memory, ports=1)
        hba.attach(0, AtaDisk(MemoryDiskBackend(1 << 20)))
        return hba

    port0 = ahci_regs.PORT_BASE
    hba = build()
    hba.write(port0 + ahci_regs.PxCMD, 4, ahci_regs.PxCMD_ST)
    hba.write(port0 + ahci_regs.PxCI, 4, 1)
    hba.poll()
    assert not hba.busy and hba.read(port0 + ahci_regs.PxCI, 4) == 1
    before = hba.state()
    clone = build()
    clone.restore(from_dict(type(before), to_dict(before)))
    assert to_dict(clone.state()) == to_dict(before)
    for h in (hba, clone):
        h.write(port0 + ahci_regs.PxCMD, 4, ahci_regs.PxCMD_ST | ahci_regs.PxCMD_SUD)
        h.poll()
    # Bus mastering is off: both fail the command the same way once it starts.
    assert hba.read(port0 + ahci_regs.PxIS, 4) != 0
    assert to_dict(clone.state()) == to_dict(hba.state())
    machine.close()
