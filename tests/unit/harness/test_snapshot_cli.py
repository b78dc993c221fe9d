"""``devmodels snapshot inspect|check`` and harness.snapshot: golden files read and rebuilt
with backends named as the device registry names them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devmodels import GuestMemory, MemoryRegion, SnapshotError, UsageError
from harness.snapshot import rebuild
from harness.snapshot.cli import main
from tests.unit.devmodels.snapshot_golden import CD, DISK, GOLDEN, cd_image, disk_image

NEWEST = sorted(p for p in GOLDEN.iterdir() if p.is_dir())[-1]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Path]:
    disk, iso = tmp_path / "disk.img", tmp_path / "cd.iso"
    disk.write_bytes(disk_image())
    iso.write_bytes(cd_image())
    assert disk.stat().st_size == DISK and iso.stat().st_size == CD
    return disk, iso


def test_inspect_prints_the_header_the_args_and_the_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(NEWEST / "ahci.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("format: devmodels-snapshot version 1\nkind: ahci\n")
    assert "decodes: yes, as AhciState; rebuilt with one medium per port" in out
    assert 'serial: "GOLDEN0001"' in out and "\nstate:\n  version: 2\n" in out
    assert "config: 256 bytes 8680222906" in out  # bytes as hex, cut


def test_inspect_names_the_typed_virtio_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(NEWEST / "virtio-blk-pci.json")]) == 0
    out = capsys.readouterr().out
    assert "decodes: yes, as VirtioPciState[VirtioBlkState]" in out
    assert 'serial: {"__bytes__"' not in out and "serial: 10 bytes" in out


def test_inspect_json_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", str(NEWEST / "testdev.json")]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "testdev"


def test_inspect_refuses_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "devmodels-snapshot", "version": 9, "kind": "e1000", "state": {}}))
    assert main(["inspect", str(bad)]) == 1
    assert "format version 9 is newer than this code reads (1)" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.json")]) == 1


def test_inspect_says_when_the_state_does_not_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads((NEWEST / "e1000.json").read_text())
    del document["state"]["io_addr"]
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(document))
    assert main(["inspect", str(odd)]) == 0
    assert "decodes: no: snapshot field 'state': missing fields ['io_addr']" in capsys.readouterr().out


def test_check_rebuilds_ahci_around_registry_backends(media: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    disk, iso = media
    path = NEWEST / "ahci.json"
    assert main(["check", str(path), "--backend", f"file:{disk}", "--backend", f"iso:{iso}", "--backend", "none"]) == 0
    assert "rebuilt <ahci" in capsys.readouterr().out
    # The CD tray held a medium when the snapshot was taken: an empty tray is refused.
    assert main(["check", str(path), "--backend", f"file:{disk}", "--backend", "none"]) == 1
    assert "has_medium" in capsys.readouterr().err
    assert main(["check", str(path), "--backend", "tap:x0", "--backend", "none"]) == 2


def test_check_rebuilds_virtio_and_e1000(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(NEWEST / "virtio-blk-pci.json"), "--backend", "mem:1M"]) == 0
    assert main(["check", str(NEWEST / "virtio-blk.json"), "--backend", "mem:2M"]) == 1  # another disk size
    assert "device.capacity" in capsys.readouterr().err
    assert main(["check", str(NEWEST / "e1000.json")]) == 0  # a cable to nowhere
    assert main(["check", str(NEWEST / "testdev.json"), "--backend", "mem:1M"]) == 2


def test_rebuild_hands_back_the_backends_it_opened() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 16 << 20)])
    data = (NEWEST / "virtio-net-pci.json").read_bytes()
    device, backends = rebuild(data, memory, [f"socket-fd:{theirs.detach()}"])
    try:
        assert device.snapshot_kind == "virtio-net-pci" and device.device.backend is backends[0]
    finally:
        for backend in backends:
            backend.close()
        ours.close()
    with pytest.raises(UsageError, match="one backend"):
        rebuild(data, memory, [])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with pytest.raises(SnapshotError, match="unknown fields"):  # a virtio-pci state named as a bare device
        rebuild(data.replace(b'"kind": "virtio-net-pci"', b'"kind": "virtio-net"'), memory, [f"socket-fd:{theirs.detach()}"])
    ours.close()


def test_the_devmodels_command_has_the_subcommand() -> None:
    env_path = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "devmodels", "snapshot", "inspect", str(NEWEST / "testdev.json")],
                          capture_output=True, text=True, cwd=env_path, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "kind: testdev" in proc.stdout
