"""harness.qemu.qmp against a real QEMU (7.2 on the host, no guest: ``-machine none``), and
the launcher's ``qmp=`` monitor."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmodels import HostError, UsageError
from harness.qemu.launcher import QEMU_BINARY, QemuLauncher, qemu_available
from harness.qemu.qmp import QmpClient, QmpError
from tests.prerequisites import prerequisite


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "qmp.sock"
    proc = subprocess.Popen([QEMU_BINARY, "-machine", "none", "-nodefaults", "-display", "none", "-S",
                             "-qmp", f"unix:{path},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield path
    finally:
        proc.kill()
        proc.wait(10)


@prerequisite(qemu_available())
def test_commands_results_errors_and_events(qemu: Path) -> None:
    with QmpClient.connect(qemu) as qmp:
        assert "QMP" in qmp.greeting
        assert qmp.execute("query-status")["status"] == "prelaunch"
        with pytest.raises(QmpError) as info:
            qmp.execute("no-such-command")
        assert info.value.error_class == "CommandNotFound" and "no-such-command" in info.value.desc
        qmp.execute("cont")
        assert qmp.wait_event("RESUME", 10)["event"] == "RESUME"
        assert qmp.execute("query-status")["running"] is True


def test_no_server_and_a_silent_server_are_host_errors(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="no QMP server"):
        QmpClient.connect(tmp_path / "none.sock", timeout=0.2)
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    held: list[socket.socket] = []
    thread = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
    thread.start()
    try:
        with pytest.raises(HostError, match="did not answer in time"):
            QmpClient.connect(path, timeout=0.3)
    finally:
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_the_launcher_adds_a_monitor_only_when_asked(tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    plain = QemuLauncher(kernel, initrd, qemu="qemu-system-x86_64")
    assert "-qmp" not in plain.argv()
    with pytest.raises(UsageError, match="qmp=PATH"):
        plain.qmp_client()
    argv = QemuLauncher(kernel, initrd, qemu="qemu-system-x86_64", qmp=tmp_path / "m.sock").argv()
    assert argv[argv.index("-qmp") + 1] == f"unix:{tmp_path / 'm.sock'},server=on,wait=off"
