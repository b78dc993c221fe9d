"""The vfio-user backend program in its own process, reached by a client in this one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devmodels import Machine
from devmodels.testdev import regs as r
from passthrough import VfioPciDevice
from passthrough.user import VfioUserClient

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def served(tmp_path: Path):
    path = tmp_path / "testdev.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmodels", "vfio-user", f"--socket-path={path}", "--device=testdev"],
        env=_env(), stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the program says when it listens
        assert "serving testdev" in line, line
        yield path, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_device_in_another_process(served) -> None:  # type: ignore[no-untyped-def]
    path, proc = served
    machine = Machine(ram_size=4 << 20, ram_backing="memfd")
    device = VfioPciDevice(VfioUserClient.connect(str(path), timeout=30))
    device.map_memory(machine.memory)
    machine.add_pci(device)
    info = next(i for i in machine.enumerate() if i.vendor_id == r.TESTDEV_VENDOR_ID)
    bar0 = next(b.address for b in info.bars if b.index == 0)
    assert bar0 is not None
    assert machine.mmio.read(bar0 + r.ID, 4) == r.TESTDEV_MAGIC
    machine.memory.write(0x1000, b"across processes")
    for reg, value, size in ((r.DMA_SRC, 0x1000, 8), (r.DMA_DST, 0x3000, 8), (r.DMA_LEN, 16, 4), (r.DMA_CMD, 1, 4)):
        machine.mmio.write(bar0 + reg, size, value)
    assert machine.memory.read(0x3000, 16) == b"across processes"
    device.close()
    # The server keeps serving: a second client sees the device state the first left.
    client = VfioUserClient.connect(str(path), timeout=30)
    assert client.region_read(0, r.DMA_LEN, 4) == (16).to_bytes(4, "little")
    client.close()
    machine.close()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_inherited_fd_mode() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmodels", "vfio-user", f"--fd={theirs.fileno()}", "--device=testdev"], env=_env(), pass_fds=[theirs.fileno()]
    )
    theirs.close()
    client = VfioUserClient(ours, timeout=30)
    assert client.device_info().num_regions == 9
    client.close()
    assert proc.wait(timeout=30) == 0  # exits when its one client goes
