"""``devmodels vhost-user``: argument handling, and a real back-end process ended by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devmodels import UsageError
from virtio.vhost_user import cli
from virtio.vhost_user.testing import FakeFrontEnd, SharedRam

ROOT = Path(__file__).resolve().parents[4]


def test_bad_arguments_and_missing_image(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["blk", "--socket", str(tmp_path / "s")])  # no --image
    assert cli.main(["blk", "--socket", str(tmp_path / "s"), "--image", str(tmp_path / "missing.img")]) == 1
    assert "cannot open" in capsys.readouterr().err
    assert cli.main(["net", "--socket", str(tmp_path / "s"), "--backend", "pcap:x"]) == 1
    with pytest.raises(UsageError):
        cli.open_net_backend("tap:")


def test_blk_backend_process_serves_and_stops_on_sigterm(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    path = tmp_path / "vu.sock"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmodels", "vhost-user", "blk", "--socket", str(path), "--image", str(image),
         "--readonly", "--queues", "2"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        ram = SharedRam.create()
        fe = FakeFrontEnd(sock, ram, timeout=10.0)
        assert fe.get_queue_num() == 2
        assert fe.get_features() >> 5 & 1  # VIRTIO_BLK_F_RO
        fe.close()
        ram.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
