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

from harness.serve.vhost_user_cmd import main
from virtio.vhost_user.testing import FakeFrontEnd, SharedRam

ROOT = Path(__file__).resolve().parents[4]


def test_bad_arguments_and_missing_image(tmp_path, capsys):
    assert main(["--device", "virtio-blk", "--socket", str(tmp_path / "s")]) == 2  # no --backend
    assert "virtio-blk takes one --backend" in capsys.readouterr().err
    assert main(["--device", "virtio-blk", "--socket", str(tmp_path / "s"),
                 "--backend", f"file:{tmp_path / 'missing.img'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--device", "virtio-net", "--socket", str(tmp_path / "s"), "--backend", "pcap:x"]) == 2
    assert "socket:PATH, socket-fd:N or tap:NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--device", "e1000", "--socket", str(tmp_path / "s")])  # not a virtio device
    assert not (tmp_path / "s").exists()


def test_blk_backend_process_serves_and_stops_on_sigterm(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    path = tmp_path / "vu.sock"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmodels", "vhost-user", "--socket", str(path), "--device", "virtio-blk",
         "--backend", f"file-ro:{image}", "--opt", "queues=2"],
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
