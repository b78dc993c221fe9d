"""The stress mode end to end, short: every disk and NIC path of ours, one guest each, under
load for ``DURATION`` seconds beside two CPU hogs (``devmodels conformance --stress``; the
long runs are by hand, ``--duration 60 --repeat N``).

Each path must finish its load without a hang, a fio verify error, a TCP data error, its
server dying or being replaced, or QEMU leaving our vhost-user device. Two more runs show
that the rules are live: a server frozen under load is a hang, a server killed is a death.

``DURATION`` is 4 s: with a warm image cache a path then takes 15-30 s on a loaded 2-core
machine (boot, fio's start, the load, fio's last verification, the shutdown). Measured with
5 s: the 13 paths took 4 min 44 s, the two fault runs 51 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading

import pytest

from harness.qemu.binaries import QEMU_11_1
from harness.qemu.launcher import qemu_available
from harness.stress import PATHS, Limits, StressPath, format_table, run_stress
from harness.stress._guest import build_stress_image
from harness.stress._paths import Started, select_paths
from harness.stress._runner import run_once
from tests.prerequisites import need

pytestmark = [pytest.mark.guest, pytest.mark.slow]

DURATION = 4


@pytest.fixture(scope="module", autouse=True)
def _prerequisites() -> None:
    need(qemu_available())
    need(None if os.geteuid() == 0 else "the stress mode needs root (network namespaces, TAP devices)")
    need(None if shutil.which("fio") else "fio is not installed (apt-get install fio)")
    need(None if shutil.which("ip") else "ip is not installed (apt-get install iproute2)")


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_path_survives_load(path: StressPath) -> None:
    if path.qemu.label == QEMU_11_1.label:
        need(QEMU_11_1.unavailable())
    summaries, runs = run_stress([path], Limits(duration=DURATION), 1,
                                 progress=lambda line: print(line, flush=True))
    print(format_table(summaries, runs, sum(r.seconds for r in runs)))
    (summary,) = summaries
    (run,) = runs
    assert summary.hangs == 0, run.problems + run.diagnosis
    assert summary.verify_errors == 0 and summary.data_errors == 0, run.problems + run.diagnosis
    assert summary.server_deaths == 0 and summary.fallbacks == 0, run.problems + run.diagnosis
    assert run.passed, run.problems + run.diagnosis
    assert run.bytes_moved > 0 and run.load_seconds >= DURATION - 1  # the NIC load ends on a whole second


def _later(seconds: float, stack: contextlib.ExitStack, pid: int, sig: int) -> None:
    timer = threading.Timer(seconds, os.kill, (pid, sig))
    timer.start()
    stack.callback(timer.cancel)


def test_a_stopped_server_is_reported_as_a_hang_with_what_the_guest_saw() -> None:
    """The hang rule is live: the server is frozen (SIGSTOP) 2 s into the load."""
    (path,) = select_paths(["vhost-user-blk"])

    def freeze(stack: contextlib.ExitStack, started: Started) -> None:
        stack.callback(os.kill, started.server.pid, signal.SIGCONT)  # before the server is ended
        _later(2.0, stack, started.server.pid, signal.SIGSTOP)

    run = run_once(path, build_stress_image(), 1, Limits(duration=60, silence=8), on_begin=freeze)
    assert run.hung and run.hang.startswith("io counters unchanged"), run.problems + run.diagnosis
    assert run.server_same, "a frozen server is alive: a hang, not a death"
    assert any(d.startswith("last progress: STRESS-PROGRESS io=") for d in run.diagnosis), run.diagnosis
    assert run.load_seconds < 30


def test_a_killed_server_is_reported_as_a_death() -> None:
    """The server rule is live: the server is killed 2 s into the load."""
    (path,) = select_paths(["e1000-tap-proxy"])

    def kill(stack: contextlib.ExitStack, started: Started) -> None:
        _later(2.0, stack, started.server.pid, signal.SIGKILL)

    run = run_once(path, build_stress_image(), 1, Limits(duration=60, silence=30), on_begin=kill)
    assert not run.passed and not run.server_same, run.problems
    assert "ended" in run.server_detail and "-9" in run.server_detail, run.server_detail
    assert run.load_seconds < 30
