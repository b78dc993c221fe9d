"""A hostile or broken peer: every malformed message is refused (an error reply or no
reply, as the command dictates) or ends the connection cleanly; the server never raises and
never leaks a descriptor. After each refusal the server still answers a valid message."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmodels.pci import defs as p
from mpqemu import defs as d
from mpqemu.layouts import (
    encode_message,
    pack_bar_access,
    pack_header,
    pack_pci_conf_data,
    pack_sync_sysmem,
)
from mpqemu.server import OUTPUT_LIMIT, RECV_SIZE
from mpqemu.testing import Harness
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r

ERR = d.MPQEMU_RET_ERROR
BAR0 = 0xFEBF_0000


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def h():
    before = _fds()
    harness = Harness(factory=PciTestDevice)
    yield harness
    harness.close()
    assert _fds() == before, "descriptors leaked"


def _still_answers(h: Harness) -> None:
    assert h.proxy.config_read(p.PCI_VENDOR_ID, 2) == r.TESTDEV_VENDOR_ID


def _eventfds(n: int) -> list[int]:
    return [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]


def _send_and_close(h: Harness, cmd: int, payload: bytes, fds: list[int]) -> None:
    try:
        h.proxy.send(cmd, payload, fds)
    finally:
        for fd in fds:
            os.close(fd)


# -- framing ------------------------------------------------------------------------------


def test_short_header_then_eof_disconnects_cleanly(h: Harness) -> None:
    h.proxy.send_raw(pack_header(d.MPQEMU_CMD_PCI_CFGREAD, 12)[:10])
    assert not h.server.closed
    h.proxy.sock.shutdown(socket.SHUT_WR)
    h.pump()
    assert h.server.closed


def test_stalled_message_does_not_stall_the_loop(h: Harness) -> None:
    raw = encode_message(d.MPQEMU_CMD_PCI_CFGREAD, pack_pci_conf_data(p.PCI_VENDOR_ID, 0, 2))
    fired: list[bool] = []
    h.server.loop.call_later(0, lambda: fired.append(True))
    h.proxy.send_raw(raw[:20])  # header and a bit of the data, then nothing
    h.pump()
    assert fired == [True] and not h.server.closed
    h.proxy.send_raw(raw[20:])
    assert h.proxy.recv_reply().value == r.TESTDEV_VENDOR_ID


def test_oversized_size_field_disconnects_and_closes_its_fds(h: Harness) -> None:
    fds = _eventfds(2)
    h.proxy.send_raw(pack_header(d.MPQEMU_CMD_BAR_READ, 1 << 40), fds)
    for fd in fds:
        os.close(fd)
    assert h.server.closed
    assert h.proxy.closed_by_server()


def test_eof_between_messages_is_a_clean_disconnect(h: Harness) -> None:
    _still_answers(h)
    h.proxy.sock.shutdown(socket.SHUT_WR)
    h.pump()
    assert h.server.closed and h.server.stats.refused == 0


# -- per-command validation ---------------------------------------------------------------


@pytest.mark.parametrize("cmd", [d.MPQEMU_CMD_MAX, 99, -1, 2**31 - 1])
def test_unknown_command_gets_an_error_reply(h: Harness, cmd: int) -> None:
    assert h.proxy.request(cmd, b"\x00" * 7).value == ERR
    _still_answers(h)


def test_ret_from_the_peer_is_dropped_without_reply(h: Harness) -> None:
    h.proxy.send(d.MPQEMU_CMD_RET, struct.pack("=Q", 0))
    _still_answers(h)  # the next reply is this request's, not one for the RET
    assert h.server.stats.refused == 1


@pytest.mark.parametrize(
    ("cmd", "payload"),
    [
        (d.MPQEMU_CMD_PCI_CFGREAD, bytes(8)),
        (d.MPQEMU_CMD_PCI_CFGWRITE, bytes(16)),
        (d.MPQEMU_CMD_BAR_READ, bytes(12)),
        (d.MPQEMU_CMD_BAR_WRITE, b""),
        (d.MPQEMU_CMD_DEVICE_RESET, bytes(8)),
    ],
)
def test_wrong_payload_size_gets_an_error_reply(h: Harness, cmd: int, payload: bytes) -> None:
    assert h.proxy.request(cmd, payload).value == ERR
    _still_answers(h)


@pytest.mark.parametrize(
    ("addr", "length"),
    [(0x1000, 4), (0x100, 1), (0xFD, 4), (0xFFFF_FFFF, 1), (0, 0), (0, 3), (0, 8), (0, -1)],
)
def test_config_access_outside_config_space_or_of_bad_length(h: Harness, addr: int, length: int) -> None:
    assert h.proxy.request(d.MPQEMU_CMD_PCI_CFGREAD, pack_pci_conf_data(addr, 0, length)).value == ERR
    assert h.proxy.request(d.MPQEMU_CMD_PCI_CFGWRITE, pack_pci_conf_data(addr, 0xFFFF_FFFF, length)).value == ERR
    _still_answers(h)


def test_bar_access_that_hits_no_mapped_bar(h: Harness) -> None:
    proxy = h.proxy
    assert proxy.bar_read(BAR0, 4) == ERR  # BAR0 not programmed yet
    proxy.config_write(p.PCI_BASE_ADDRESS_0, BAR0, 4)
    assert proxy.bar_read(BAR0, 4) == ERR  # memory decode still off
    proxy.config_write(p.PCI_COMMAND, p.PCI_COMMAND_MEMORY, 2)
    assert proxy.bar_read(BAR0, 4) == r.TESTDEV_MAGIC
    assert proxy.bar_read(BAR0 + r.BAR0_SIZE - 2, 4) == ERR  # runs past the BAR's end
    assert proxy.bar_write(BAR0 - 4, 1, 8) == ERR  # starts before it
    assert proxy.bar_read(2**64 - 1, 8) == ERR
    assert proxy.bar_read(0xFFFF, 4, memory=False) == ERR
    for size in (0, 3, 16, 2**32 - 1):
        assert proxy.request(d.MPQEMU_CMD_BAR_READ, pack_bar_access(BAR0, 0, size, True)).value == ERR
    assert h.server.stats.bar_errors == 10
    assert proxy.bar_read(BAR0, 4) == r.TESTDEV_MAGIC


# -- descriptors --------------------------------------------------------------------------


def test_descriptors_where_none_are_expected_are_closed(h: Harness) -> None:
    before = _fds()
    fds = _eventfds(1)
    try:
        h.proxy.send(d.MPQEMU_CMD_PCI_CFGREAD, pack_pci_conf_data(0, 0, 2), fds)
    finally:
        os.close(fds[0])
    assert h.proxy.recv_reply().value == ERR
    assert _fds() == before
    _still_answers(h)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_set_irqfd_with_the_wrong_number_of_descriptors(h: Harness, count: int) -> None:
    before = _fds()
    _send_and_close(h, d.MPQEMU_CMD_SET_IRQFD, b"", _eventfds(count))
    assert h.server.endpoint.irq is None
    assert _fds() == before
    _still_answers(h)


def test_set_irqfd_with_descriptors_that_are_not_eventfds(h: Harness) -> None:
    before = _fds()
    rd, wr = os.pipe()
    _send_and_close(h, d.MPQEMU_CMD_SET_IRQFD, b"", [rd, wr])
    assert h.server.endpoint.irq is None
    assert _fds() == before
    _still_answers(h)


@pytest.mark.parametrize("count", [9, 12, 200])
def test_more_descriptors_than_a_message_may_carry(h: Harness, count: int) -> None:
    before = _fds()
    memfd = os.memfd_create("ram", os.MFD_CLOEXEC)
    os.ftruncate(memfd, 1 << 20)
    fds = [os.dup(memfd) for _ in range(count)]
    os.close(memfd)
    payload = pack_sync_sysmem([(i << 20, 1 << 20, 0) for i in range(8)])
    _send_and_close(h, d.MPQEMU_CMD_SYNC_SYSMEM, payload, fds)
    assert h.memory.regions == ()
    assert _fds() == before
    _still_answers(h)


def test_sync_sysmem_with_a_table_past_the_end_of_the_file(h: Harness) -> None:
    memfd = os.memfd_create("ram", os.MFD_CLOEXEC)
    os.ftruncate(memfd, 1 << 20)
    h.proxy.sync_sysmem([(0, 1 << 20, 0, memfd)])
    assert len(h.memory.regions) == 1
    h.proxy.sync_sysmem([(0, 1 << 30, 0, memfd)])  # mapping it would SIGBUS on access
    os.close(memfd)
    assert h.memory.regions == ()
    _still_answers(h)


def test_sync_sysmem_without_its_table(h: Harness) -> None:
    _send_and_close(h, d.MPQEMU_CMD_SYNC_SYSMEM, b"", _eventfds(1))
    assert h.server.stats.refused == 1
    _still_answers(h)


# -- volume -------------------------------------------------------------------------------


def test_a_peer_that_never_reads_replies_is_bounded(h: Harness) -> None:
    request = encode_message(d.MPQEMU_CMD_PCI_CFGREAD, pack_pci_conf_data(p.PCI_VENDOR_ID, 0, 2))
    total = 20_000
    stream = request * total
    sock = h.proxy.sock
    sock.setblocking(False)
    sent = received = 0
    replies = bytearray()
    peak = 0
    paused = False
    while received < total * 24:
        if sent < len(stream):
            try:
                sent += sock.send(stream[sent : sent + 65536])
            except BlockingIOError:
                pass
        h.pump()
        peak = max(peak, len(h.server._out))
        paused = paused or not h.server._reading
        if sent == len(stream) or paused:
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                chunk = b""
            replies += chunk
            received += len(chunk)
    sock.setblocking(True)
    assert paused, "the server never stopped reading"
    # Pausing stops further reads; the messages of the current read are still answered.
    assert peak <= OUTPUT_LIMIT + (RECV_SIZE // d.MPQEMU_MSG_HDR_SIZE) * 24
    assert replies == encode_message(d.MPQEMU_CMD_RET, struct.pack("=Q", r.TESTDEV_VENDOR_ID)) * total
    _still_answers(h)


# -- anything at all ----------------------------------------------------------------------

_message = st.tuples(
    st.integers(-2, 10),
    st.one_of(st.binary(max_size=d.MPQEMU_MSG_DATA_SIZE), st.sampled_from([bytes(12), bytes(24), bytes(192)])),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_message, max_size=12))
def test_random_messages_never_break_the_server(messages: list[tuple[int, bytes]]) -> None:
    before = _fds()
    h = Harness(factory=PciTestDevice)
    try:
        for cmd, payload in messages:
            h.proxy.send(cmd, payload)
            if h.server.endpoint.expects_reply(cmd) and cmd != d.MPQEMU_CMD_RET:
                assert h.proxy.recv_reply().cmd == d.MPQEMU_CMD_RET
        _still_answers(h)
    finally:
        h.close()
    assert _fds() == before
