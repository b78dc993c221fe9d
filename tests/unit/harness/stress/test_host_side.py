"""The stress mode's host pieces: hogs, process identity, the vhost-user trace, the guest
scripts' shell, the command line, the TCP stream's expected hash, the path table."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devmodels import HostError, UsageError
from harness.guest._init import render_helpers
from harness.stress import _servers
from harness.stress._guest import DISK_SCRIPT, NIC_SCRIPT, _render, guest_append, pattern
from harness.stress._hogs import CpuHogs, ProcessIdentity
from harness.stress._paths import PATHS, select_paths
from harness.stress._runner import expected_stream_sha256
from harness.stress._servers import VhostUserEvents, vhost_user_argv
from tests.prerequisites import prerequisite


def test_hogs_burn_cpu_and_end_by_pid() -> None:
    with CpuHogs(2) as hogs:
        pids = hogs.pids
        assert len(pids) == 2 and hogs.alive()
        identities = [ProcessIdentity(pid) for pid in pids]
        time.sleep(0.3)
        ticks = [int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[11]) for pid in pids]
        assert all(t > 0 for t in ticks)  # utime: they really run
    assert not hogs.alive()
    assert not any(identity.same() for identity in identities)
    with pytest.raises(UsageError):
        CpuHogs(-1)


def test_identity_tells_a_dead_process_from_a_live_one() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    identity = ProcessIdentity(proc.pid)
    assert identity.same()
    proc.kill()
    proc.wait()
    assert not identity.same()
    with pytest.raises(HostError):
        ProcessIdentity(proc.pid)


def test_identity_sees_a_zombie_as_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = ProcessIdentity(proc.pid)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not identity.same()
    proc.wait()


_LOG = """devmodels vhost-user: listening on x.sock
trace vhost_user.connection event='connect' session=0x1
trace vhost_user.ring index=0x0 event='start' size=0x80 base=0x0 packed=False
trace vhost_user.ring index=0x0 event='stop' base=0x0
trace vhost_user.ring index=0x0 event='start' size=0x80 base=0x0 packed=False
"""


def test_vhost_user_trace_counts_and_differences() -> None:
    begin = VhostUserEvents.parse(_LOG)
    assert (begin.connects, begin.disconnects, begin.ring_starts, begin.ring_stops) == (1, 0, 2, 1)
    later = VhostUserEvents.parse(_LOG + "trace vhost_user.ring index=0x0 event='failed' error='loop'\n"
                                  "trace vhost_user.connection event='disconnect' reason='front-end closed'\n")
    during = later - begin
    assert (during.ring_failures, during.disconnects, during.ring_starts) == (1, 1, 0)
    assert begin.last_packed is False and VhostUserEvents.parse("").last_packed is None
    packed = VhostUserEvents.parse(_LOG.replace("packed=False", "packed=True"))
    assert packed.last_packed is True and (packed - begin).last_packed is True


def test_vhost_user_command_in_either_form(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    monkeypatch.setattr(_servers, "_registry_form", lambda: False)
    assert vhost_user_argv("virtio-blk", "file:/i.img", sock) == ["vhost-user", "blk", "--socket", str(sock),
                                                                  "--image", "/i.img"]
    assert vhost_user_argv("virtio-net", "tap:t0", sock)[:2] == ["vhost-user", "net"]
    with pytest.raises(HostError):
        vhost_user_argv("virtio-blk", "mem:1M", sock)
    monkeypatch.setattr(_servers, "_registry_form", lambda: True)
    assert vhost_user_argv("virtio-blk", "file:/i.img", sock) == ["vhost-user", "--device", "virtio-blk", "--backend",
                                                                  "file:/i.img", "--socket", str(sock)]


def test_the_installed_vhost_user_command_serves_with_the_words_we_build(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    with contextlib.ExitStack() as stack:
        server = _servers.VhostUserServer(stack, tmp_path, "virtio-blk", f"file:{image}")
        server.wait_listening()
        assert server.process.poll() is None
    assert server.process.returncode == 0  # SIGTERM ends it cleanly


@prerequisite(None if shutil.which("busybox") else "busybox is not installed (apt-get install busybox-static)")
@pytest.mark.parametrize("script", [DISK_SCRIPT, NIC_SCRIPT], ids=["disk", "nic"])
def test_guest_scripts_are_valid_busybox_shell(script: str, tmp_path: Path) -> None:
    path = tmp_path / "t.sh"
    path.write_text(render_helpers() + _render(script))
    proc = subprocess.run(["busybox", "sh", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_kernel_words_refuse_whitespace() -> None:
    assert guest_append(duration=5, dev="vda") == ["stress.duration=5", "stress.dev=vda"]
    with pytest.raises(HostError):
        guest_append(irq="a b")


def test_expected_stream_hash_is_the_pattern_repeated() -> None:
    data = pattern()
    size = 2 * len(data) + 1234
    assert expected_stream_sha256(size) == hashlib.sha256(data + data + data[:1234]).hexdigest()


def test_every_path_is_a_disk_or_a_nic_and_selection_works() -> None:
    names = [p.name for p in PATHS]
    assert len(set(names)) == len(names)
    assert {p.kind for p in PATHS} == {"disk", "nic"}
    assert [p.name for p in select_paths(["vhost-user-blk"])] == ["vhost-user-blk"]
    assert [p.name for p in select_paths(["vhost-user-blk*"])] == ["vhost-user-blk", "vhost-user-blk-packed"]
    assert {p.name for p in select_paths(["e1000"])} == {"e1000-tap-proxy", "e1000-tap-vfio-user"}
    for path in PATHS:
        if path.qemu.label == "7.2":
            assert path.cpus.maximum > 1, f"{path.name}: QEMU 7.2 TCG drops barriers with maxcpus 1"


def test_stress_list_from_the_conformance_command(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.conformance.cli import main

    assert main(["--stress", "--list", "--only", "ahci*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["ahci-proxy", "ahci-vfio-user"]
    assert main(["--stress", "--duration", "0"]) == 2
