"""``devmodels mpqemu --fd N --device NAME``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

from devmodels.pci import defs as p
from harness.serve.mpqemu_cmd import main
from harness.serve.registry import DEVICES
from mpqemu.testing import FakeProxy
from devmodels.testdev import regs as r


def test_descriptor_that_is_not_open(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fd", "100000", "--device", "testdev"]) == 2
    assert "--fd 100000" in capsys.readouterr().err


def test_descriptor_that_is_not_a_socket(capsys: pytest.CaptureFixture[str]) -> None:
    rd, wr = os.pipe()
    try:
        assert main(["--fd", str(rd), "--device", "testdev"]) == 2
        assert "not a socket" in capsys.readouterr().err
    finally:
        os.close(rd)
        os.close(wr)


def test_socket_that_is_not_unix_stream_is_left_open(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert main(["--fd", str(udp.fileno()), "--device", "testdev"]) == 2
        os.fstat(udp.fileno())  # still ours
    assert "UNIX stream" in capsys.readouterr().err


def test_unknown_device_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--fd", "3", "--device", "no-such-device"])
    assert exc.value.code == 2
    assert "testdev" in DEVICES


def test_main_serves_until_the_peer_closes() -> None:
    ours, theirs = socket.socketpair()
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(main(["--fd", str(ours.fileno()), "--device", "testdev"])))
    thread.start()
    proxy = FakeProxy(theirs)
    assert proxy.config_read(p.PCI_VENDOR_ID, 2) == r.TESTDEV_VENDOR_ID
    assert proxy.config_read(p.PCI_CAPABILITY_LIST, 1) == 0  # MSI/MSI-X hidden by default
    theirs.close()
    thread.join(10)
    assert status == [0]
    ours.detach()  # main closed the descriptor itself


def test_module_entry_point_in_a_subprocess() -> None:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmodels", "mpqemu", "--fd", str(ours.fileno()), "--device", "testdev", "--show-msi"],
        pass_fds=[ours.fileno()],
    )
    ours.close()
    try:
        proxy = FakeProxy(theirs, timeout=60)
        assert proxy.config_read(p.PCI_DEVICE_ID, 2) == r.TESTDEV_DEVICE_ID
        assert proxy.config_read(p.PCI_CAPABILITY_LIST, 1) != 0  # --show-msi
    finally:
        theirs.close()
        assert proc.wait(60) == 0


def test_sigusr1_writes_a_stats_line_and_poll_us_serves() -> None:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmodels", "mpqemu", "--fd", str(ours.fileno()), "--device", "testdev",
         "--poll-us", "20"],
        pass_fds=[ours.fileno()],
        stderr=subprocess.PIPE,
    )
    ours.close()
    try:
        proxy = FakeProxy(theirs, timeout=60)
        assert proxy.config_read(p.PCI_VENDOR_ID, 2) == r.TESTDEV_VENDOR_ID  # handlers are installed by now
        proc.send_signal(signal.SIGUSR1)
        assert proxy.config_read(p.PCI_DEVICE_ID, 2) == r.TESTDEV_DEVICE_ID
    finally:
        theirs.close()
        assert proc.wait(60) == 0
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    # the signal arrives after the first read; the handler may run just after the second
    assert re.search(r"mpqemu stats: messages=[12] refused=0 config_reads=[12] ", err), err


def test_negative_poll_window_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    ours, theirs = socket.socketpair()
    try:
        assert main(["--fd", str(ours.fileno()), "--device", "testdev", "--poll-us", "-5"]) == 2
        assert "--poll-us" in capsys.readouterr().err
    finally:
        ours.detach()  # main closed it
        theirs.close()
