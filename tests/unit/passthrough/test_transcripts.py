"""Recorded conversations with QEMU 11.1 and libvfio-user, replayed (transcripts/README.md).

CI cannot build libvfio-user or always run QEMU 11.1, so what each peer sent and accepted
was recorded once by hand and is replayed here:

- a client's transcript (QEMU's ``vfio-user-pci``, libvfio-user's ``samples/client``) is
  sent to a fresh ``VfioUserServer`` serving the testdev, message by message with fresh
  descriptors of the recorded kinds; each reply must be what the peer accepted: the same
  success or errno, the same size (libvfio-user's client takes any other size for a broken
  connection), the same fixed fields, a VERSION reply within the proposal;
- a server's transcript (libvfio-user's ``samples/server``) is played by a scripted server
  to our ``VfioUserClient`` running ``drive.py``: every request the client makes must be
  byte-for-byte the one libvfio-user answered, and the client must take the recorded
  answers (padded migration data, a region info needing a larger ``argsz``, server DMA).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from devmodels.testdev import PciTestDevice
from passthrough.defs import (
    VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_USER_DEVICE_FEATURE,
    VFIO_USER_DEVICE_GET_INFO,
    VFIO_USER_DEVICE_GET_IRQ_INFO,
    VFIO_USER_DEVICE_GET_REGION_INFO,
    VFIO_USER_DEVICE_SET_IRQS,
    VFIO_USER_DMA_MAP,
    VFIO_USER_F_NO_REPLY,
    VFIO_USER_F_TYPE_REPLY,
    VFIO_USER_MIG_DATA_READ,
    VFIO_USER_REGION_READ,
    VFIO_USER_REGION_WRITE,
    VFIO_USER_VERSION,
)
from passthrough.layouts import vfio_irq_info, vfio_region_info, vfio_user_mig_data, vfio_user_region_access
from passthrough.user import DmaMemory, VfioUserClient, VfioUserServer, decode_version
from passthrough.user.framing import Message, MessageSocket
from passthrough.user.testing import RawPeer, ServerThread
from tests.unit.passthrough.transcripts import drive
from tests.unit.passthrough.transcripts.transcript import WireMessage, load

HERE = Path(__file__).parent / "transcripts"
CLIENT_TRANSCRIPTS = ["qemu-11.1-client.json", "libvfio-user-client.json", "libvfio-user-client-destination.json"]
RERECORD = "the testdev or the server changed what it answers; re-record per transcripts/README.md if intended"


def _fds_like(message: WireMessage) -> list[int]:
    """Fresh descriptors of the recorded kinds: memfds of the recorded sizes, else eventfds."""
    fds = []
    for size in message.fd_sizes:
        if size is None:
            fds.append(os.eventfd(0, os.EFD_NONBLOCK))
        else:
            fd = os.memfd_create("transcript")
            os.ftruncate(fd, size)
            fds.append(fd)
    return fds


def _replies(messages: list[WireMessage]) -> list[tuple[WireMessage, WireMessage | None]]:
    """Each client command with the server's recorded reply to it (``None``: no reply)."""
    pairs = []
    for i, command in enumerate(messages):
        if not command.from_client or command.is_reply:
            continue
        answer = next(
            (m for m in messages[i + 1 :] if not m.from_client and m.is_reply and (m.msg_id, m.command) == (command.msg_id, command.command)),
            None,
        )
        pairs.append((command, answer))
    return pairs


def _capabilities(payload: bytes) -> tuple[int, int, dict[str, object]]:
    """Major, minor and the raw ``capabilities`` object of a VERSION payload."""
    major, minor = struct.unpack_from("=HH", payload)
    text = payload[4:].rstrip(b"\0")
    return major, minor, json.loads(text).get("capabilities", {}) if text else {}


def _check_version(sent: WireMessage, got: Message) -> None:
    """vfio-user.rst "VFIO_USER_VERSION": same major, minor <= proposed, a subset of names,
    and numbers the proposer accepts (QEMU: none above its own; pgsizes multiples of 4 KiB)."""
    major, minor, proposal = _capabilities(sent.payload)
    got_major, got_minor, caps = _capabilities(got.payload)
    decode_version(got.payload)  # well-formed
    assert got_major == major and got_minor <= minor
    assert set(caps) <= set(proposal), f"capabilities not proposed: {sorted(set(caps) - set(proposal))}"
    for name in ("max_msg_fds", "max_data_xfer_size", "max_dma_maps"):
        if name in caps:
            assert caps[name] <= proposal[name], name  # type: ignore[operator]
    if "pgsizes" in caps:
        assert caps["pgsizes"] & ~proposal["pgsizes"] == 0 and caps["pgsizes"] % 4096 == 0  # type: ignore[operator]


def _check_reply(sent: WireMessage, recorded: WireMessage, got: Message) -> None:
    what = f"reply to {sent.command} (msg {sent.msg_id:#x})"
    assert (got.is_error, got.error_no) == (recorded.is_error, recorded.error_no), what
    if recorded.is_error:
        return
    if sent.command == VFIO_USER_VERSION:
        _check_version(sent, got)
        return
    assert len(got.payload) == len(recorded.payload), f"{what}: size; {RERECORD}"
    command = sent.command
    if command == VFIO_USER_REGION_READ:
        assert got.payload[: vfio_user_region_access.size] == recorded.payload[: vfio_user_region_access.size], what
    elif command == VFIO_USER_DEVICE_GET_REGION_INFO:
        got_info, rec_info = vfio_region_info.unpack(got.payload), vfio_region_info.unpack(recorded.payload)
        assert (got_info.argsz, got_info.index) == (rec_info.argsz, rec_info.index), what
    elif command == VFIO_USER_DEVICE_GET_IRQ_INFO:
        got_irq, rec_irq = vfio_irq_info.unpack(got.payload), vfio_irq_info.unpack(recorded.payload)
        if rec_irq.index in (VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX):  # the protocol's, not the device's
            assert got_irq == rec_irq, what
        assert (got_irq.argsz, got_irq.index) == (rec_irq.argsz, rec_irq.index), what
    elif command == VFIO_USER_MIG_DATA_READ:
        argsz, size = vfio_user_mig_data.unpack(got.payload)
        assert argsz == vfio_user_mig_data.size + size and size <= vfio_user_mig_data.unpack(sent.payload).size, what
    elif command not in (VFIO_USER_DEVICE_GET_INFO,):
        # Echoes and empty replies (REGION_WRITE, DMA_MAP/UNMAP, SET_IRQS, RESET, DEVICE_FEATURE,
        # MIG_DATA_WRITE) must be exactly what the peer accepted.
        assert got.payload == recorded.payload, f"{what}; {RERECORD}"
    else:
        assert got.payload == recorded.payload, f"{what}; {RERECORD}"


@pytest.mark.parametrize("name", CLIENT_TRANSCRIPTS)
def test_client_transcript_against_our_server(name: str) -> None:
    meta, messages = load(HERE / name)
    memory = DmaMemory()
    server = VfioUserServer(PciTestDevice(memory), memory)
    thread = ServerThread(server)
    peer = RawPeer(thread.start())
    replayed = 0
    try:
        for sent, recorded in _replies(messages):
            fds = _fds_like(sent)
            peer.send(sent.command, sent.payload, msg_id=sent.msg_id, flags=sent.flags, fds=fds)
            for fd in fds:
                os.close(fd)
            if sent.flags & VFIO_USER_F_NO_REPLY:
                assert recorded is None
                continue
            got = peer.recv()
            assert got is not None and got.is_reply and (got.msg_id, got.command) == (sent.msg_id, sent.command)
            assert recorded is not None, f"{name}: the peer got no reply to {sent.command} (msg {sent.msg_id:#x})"
            _check_reply(sent, recorded, got)
            got.close_fds()
            replayed += 1
    finally:
        peer.close()
        assert thread.join()
    assert thread.error is None
    assert server.rejected == sum(1 for m in messages if not m.from_client and m.is_error)
    assert replayed > 5, meta


# -- libvfio-user's server, played to our client -------------------------------------------------


class RecordedServer:
    """Plays a server transcript to whoever connects: checks each request, sends each reply."""

    def __init__(self, messages: list[WireMessage]) -> None:
        self.messages = messages
        self.client_sock, self._sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(10)
        self.position = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def server_commands_done(self) -> bool:
        """Whether every server-to-client command has been sent and answered."""
        last = max((i for i, m in enumerate(self.messages) if m.from_client and m.is_reply), default=-1)
        return self.position > last

    def _run(self) -> None:
        conn = MessageSocket(self._sock, max_payload=1 << 24, max_fds=64)
        ids: dict[int, int] = {}
        try:
            for position, m in enumerate(self.messages):
                self.position = position
                if m.from_client:
                    got = conn.recv()
                    assert got is not None, f"client closed before message {self.position}"
                    got.close_fds()
                    assert (got.command, got.is_reply, len(got.fds)) == (m.command, m.is_reply, m.fds), f"message {self.position}"
                    assert got.payload == m.payload, f"message {self.position} ({m.command}) differs from what libvfio-user answered"
                    ids[m.msg_id] = got.msg_id
                else:
                    fds = _fds_like(m)
                    msg_id = ids.get(m.msg_id, m.msg_id) if m.is_reply else m.msg_id
                    conn.send(msg_id, m.command, m.payload, flags=m.flags, error_no=m.error_no, fds=fds)
                    for fd in fds:
                        os.close(fd)
            self.position = len(self.messages)
            assert conn.recv() is None, "the client sent more than the transcript holds"
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            conn.close()


def test_libvfio_user_server_transcripts_against_our_client() -> None:
    _, source = load(HERE / "libvfio-user-server.json")
    _, destination = load(HERE / "libvfio-user-server-destination.json")
    when = next(
        int.from_bytes(m.payload[16:24], "little") for m in source
        if m.from_client and m.command == VFIO_USER_REGION_WRITE and vfio_user_region_access.unpack(m.payload).region == 0
    )
    log: list[str] = []
    played = RecordedServer(source)
    client = VfioUserClient(played.client_sock, timeout=10)
    state, bitmaps = drive.run_source(client, when, served=lambda: played.server_commands_done, log=log.append)
    played.thread.join(10)
    assert played.error is None, played.error
    region = next(line for line in log if line.startswith("region 1 "))
    assert "sparse_areas=((0, 4096), (8192, 4096))" in region  # the region info asked again with argsz 0x50
    assert [bits.hex() for bits in bitmaps] == ["0000000000000000", "0100000000000000"]
    assert len(state) == 0x4000 + 8  # BAR1 and BAR0 of the sample server, read from padded replies
    played = RecordedServer(destination)
    start = drive.run_destination(VfioUserClient(played.client_sock, timeout=10), state, log=log.append)
    played.thread.join(10)
    assert played.error is None, played.error
    assert start == drive.MARK


def test_transcripts_hold_what_they_claim() -> None:
    """The recordings themselves: QEMU's proposal, and no error the peer did not expect."""
    _, qemu = load(HERE / "qemu-11.1-client.json")
    proposal = _capabilities(qemu[0].payload)[2]
    assert set(proposal) == {"max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes", "migration", "write_multiple"}
    assert proposal["max_msg_fds"] == 16
    assert not any(m.is_error for m in qemu)
    assert any(m.flags & VFIO_USER_F_NO_REPLY and m.command == VFIO_USER_REGION_WRITE for m in qemu)  # posted writes
    assert any(m.command == VFIO_USER_DMA_MAP and m.fds == 1 for m in qemu)
    _, lvu = load(HERE / "libvfio-user-client.json")
    errors = [m for m in lvu if m.is_error]
    # Its only expected error: the sample client reads region 0xdeadbeef and wants EINVAL.
    assert [(m.command, m.error_no) for m in errors] == [(VFIO_USER_REGION_READ, errno.EINVAL)]
    assert any(m.command == VFIO_USER_DEVICE_FEATURE for m in lvu) and any(m.command == VFIO_USER_DEVICE_SET_IRQS for m in lvu)
    assert all(m.flags & 0xF in (0, VFIO_USER_F_TYPE_REPLY) for m in lvu)
