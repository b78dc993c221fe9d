"""Every conformance case declares the checks it must report; a missing one fails its row.

Also the vhost-user rows' host-side ring layout check, against a real ``VhostUserServer``
driven by the fake front-end over a socketpair.
"""

from __future__ import annotations

import inspect
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devmodels import GuestMemory, _trace
from devmodels.backends import MemoryDiskBackend
from devmodels.trace import RecordingSink
from harness.conformance import Row, format_matrix, load_cases
from harness.conformance._runner import NOT_REPORTED, score_row
from harness.conformance.cases._vu_process import logged, resubmitted, ring_layout, ring_starts
from harness.conformance.cases.vhost_user import RingLayouts
from virtio.blk import VirtioBlkDevice
from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED
from virtio.testing import make_driver
from virtio.vhost_user import VhostUserServer
from virtio.vhost_user.testing import FakeFrontEnd, SharedRam

CASES, BROKEN = load_cases()


def _row(checks: dict[str, bool]) -> Row:
    return Row("virtio_blk", "vhost-user-blk", "vhost-user", False, dict(checks))


def test_a_row_with_every_required_check_passes() -> None:
    row = _row({"init.modules": True, "blk.write": True, "blk.fio_verify": True})
    score_row(row, {"blk.write", "blk.fio_verify"})
    assert row.passed and not row.error


def test_a_missing_required_check_fails_the_row_and_is_named() -> None:
    row = _row({"init.modules": True, "blk.write": True})  # fio was not in the image
    score_row(row, {"blk.write", "blk.fio_verify", "host.ring_layout"})
    assert not row.passed
    assert row.checks["blk.fio_verify"] is False and row.details["blk.fio_verify"] == NOT_REPORTED
    assert row.checks["host.ring_layout"] is False
    assert "blk.fio_verify" in row.error and "host.ring_layout" in row.error
    text = format_matrix([row])
    assert "failed: blk.fio_verify, host.ring_layout" in text
    assert f"blk.fio_verify: {NOT_REPORTED}" in text


def test_a_failed_required_check_still_fails() -> None:
    row = _row({"blk.write": False})
    score_row(row, {"blk.write"})
    assert not row.passed and not row.error


def test_a_case_that_declares_nothing_fails() -> None:
    row = _row({"blk.write": True})
    score_row(row, frozenset())
    assert not row.passed and "declares no required checks" in row.error


def test_an_errored_row_keeps_its_error_and_lists_the_missing_checks() -> None:
    row = _row({})
    row.error = "HostError: no kernel"
    score_row(row, {"blk.write"})
    assert not row.passed and row.error == "HostError: no kernel" and row.checks == {"blk.write": False}


def test_every_case_declares_required_checks() -> None:
    assert not BROKEN, BROKEN
    assert CASES
    for case in CASES:
        assert isinstance(case.required_checks, frozenset) and case.required_checks, case.name


# Where a case's check names are written: its guest script and its module (host checks),
# and for the kernel-VFIO row the program its guest runs.
_EXTRA_SOURCES = {"vfio-kernel-edu": ["passthrough.kernel.edu"]}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_required_check_names_are_ones_the_case_can_report(case) -> None:  # type: ignore[no-untyped-def]
    """A typo in a declaration would fail the row forever; each name must appear where it is made."""
    modules = {cls.__module__ for cls in type(case).__mro__ if cls is not object}  # host checks of base classes too
    text = case.guest_script + "".join(inspect.getsource(sys.modules[name]) for name in sorted(modules))
    for module in _EXTRA_SOURCES.get(case.name, []):
        __import__(module)
        text += inspect.getsource(sys.modules[module])
    unknown = sorted(name for name in case.required_checks if f"{name}" not in text)
    assert not unknown, unknown


def test_vhost_user_blk_requires_fio_and_the_ring_layout() -> None:
    for case in CASES:
        if case.name.startswith("vhost-user-blk"):
            assert {"blk.fio_verify", "host.ring_layout"} <= case.required_checks
        if case.name.startswith("vhost-user-net"):
            assert "host.ring_layout" in case.required_checks
        if case.name.startswith("vhost-user-migrate"):
            assert {"blk.fio_verify", "host.ring_layout", "host.logged", "host.io_across", "host.migrated",
                    "host.tx_once"} <= case.required_checks
        if case.name.startswith(("vhost-user-blk-restart", "vhost-user-net-restart")):
            assert {"host.killed", "host.restarted"} <= case.required_checks


# -- host.ring_layout against a real server -----------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[VirtioBlkDevice, FakeFrontEnd, SharedRam]]:
    disk = MemoryDiskBackend(1 << 20)
    device = VirtioBlkDevice(GuestMemory(), disk, queue_size=64, packed=True)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = VhostUserServer(device)
    server.adopt(ours)
    server.start()
    ram = SharedRam.create()
    frontend = FakeFrontEnd(theirs, ram, timeout=5.0)
    yield device, frontend, ram
    frontend.close()
    server.close()
    ram.close()
    disk.close()


def _start_ring(frontend: FakeFrontEnd, ram: SharedRam, packed: bool, started: Callable[[], bool]) -> None:
    """Negotiate (packed rings or not) and start ring 0; wait until ``started()`` (5 s)."""
    features = frontend.get_features()
    if not packed:
        features &= ~(1 << VIRTIO_F_RING_PACKED)
    frontend.handshake(features)
    driver = make_driver(ram.memory, 64, packed=packed, base=0x100000, event_idx=bool(features >> VIRTIO_F_EVENT_IDX & 1))
    frontend.setup_ring(0, driver)
    deadline = time.monotonic() + 5
    while not started() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_ring_layout_records_what_the_session_started(served, packed: bool) -> None:  # type: ignore[no-untyped-def]
    device, frontend, ram = served
    with RingLayouts(device) as layouts:
        _start_ring(frontend, ram, packed, lambda: bool(layouts.starts))
        assert layouts.check(packed)[0], layouts.check(packed)[1]
        ok, detail = layouts.check(not packed)
        assert not ok and f"want {'split' if packed else 'packed'}" in detail
        assert all(bool(negotiated >> VIRTIO_F_RING_PACKED & 1) == packed for _, negotiated in layouts.starts)


def test_ring_layout_without_any_ring_start_fails() -> None:
    layouts = RingLayouts(object())
    ok, detail = layouts.check(True)
    assert not ok and detail.endswith("none")


SPLIT, PACKED = 1 << 32, 1 << 32 | 1 << VIRTIO_F_RING_PACKED


@pytest.mark.parametrize(
    ("starts", "packed_ok", "split_ok"),
    [
        ([(False, SPLIT), (True, PACKED), (True, PACKED)], True, False),  # firmware split, then Linux packed
        ([(True, PACKED), (False, SPLIT)], False, True),  # the last negotiation decides
        ([(False, SPLIT), (False, SPLIT)], False, True),
        ([(False, PACKED)], False, False),  # accepted packed but started a split ring
        ([(True, SPLIT)], False, False),  # started packed without the feature
    ],
)
def test_ring_layout_judges_the_last_negotiation(starts, packed_ok: bool, split_ok: bool) -> None:  # type: ignore[no-untyped-def]
    layouts = RingLayouts(object())
    layouts.starts = list(starts)
    assert layouts.check(True)[0] is packed_ok
    assert layouts.check(False)[0] is split_ok


# -- the restart and migration rows read the same events from a server process's log ------------


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_served_process_log_shows_the_ring_layout(served, tmp_path, packed: bool) -> None:  # type: ignore[no-untyped-def]
    """``ring_layout`` reads the lines a ``devmodels vhost-user`` process prints with
    ``DEVMODELS_TRACE=vhost_user.ring``: the same events, printed by the trace module."""
    device, frontend, ram = served
    with RecordingSink("vhost_user.ring") as sink:
        _start_ring(frontend, ram, packed, lambda: any(fields.get("event") == "start" for _, fields in sink.events))
    log = tmp_path / "server.log"
    log.write_text("INFO some other line\n" + "".join(f"trace {_trace._text(n, f)}\n" for n, f in sink.events))
    assert ring_starts(log) == [(0, packed)]
    assert resubmitted(log) == [0]
    assert ring_layout({"server": log}, packed)[0]
    ok, detail = ring_layout({"server": log}, not packed)
    assert not ok and f"0:{'packed' if packed else 'split'}" in detail


def test_ring_layout_judges_the_last_start_of_each_ring_in_every_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def log(name: str, starts: list[tuple[int, bool]]) -> Path:
        path = tmp_path / name
        events = [{"index": i, "event": "start", "size": 256, "packed": p, "resubmitted": 3} for i, p in starts]
        path.write_text("".join(f"trace {_trace._text('vhost_user.ring', f)}\n" for f in events))
        return path

    firmware_then_linux = log("a", [(0, False), (0, True)])  # SeaBIOS split, then Linux packed
    restarted = log("b", [(0, True)])
    assert ring_layout({"a": firmware_then_linux, "b": restarted}, True)[0]
    assert not ring_layout({"a": firmware_then_linux, "b": restarted}, False)[0]
    assert not ring_layout({"a": firmware_then_linux, "none": log("c", [])}, True)[0]  # one started nothing
    assert not ring_layout({}, True)[0]
    assert not ring_layout({"a": log("d", [(0, True), (1, False)])}, True)[0]  # one ring split
    assert resubmitted(restarted) == [3]


def test_logged_reads_the_most_pages_a_ring_stop_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "server.log"
    stops = [{"index": 0, "event": "stop", "base": 7, "logged": n} for n in (0, 40, 12)]
    path.write_text("".join(f"trace {_trace._text('vhost_user.ring', f)}\n" for f in stops))
    assert logged(path) == 40
    assert logged(tmp_path / "missing.log") == 0
