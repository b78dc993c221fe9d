"""The snapshot file format (devmodels.snapshot_file) and the golden files every later
version must keep loading (devmodels._state rule 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devmodels import GuestMemory, MemoryRegion, SnapshotError, UsageError, from_dict, snapshot_file
from devmodels.backends.net import LoopbackBackend
from devmodels.e1000 import E1000
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as tr
from harness.snapshot import all_kinds
from tests.unit.devmodels.snapshot_golden import GOLDEN, SCENES, media
from virtio.device import VirtioDevice

SETS = sorted(p for p in GOLDEN.iterdir() if p.is_dir())
FILES = sorted(path for folder in SETS for path in folder.glob("*.json"))
NEWEST = SETS[-1]


def _ram(size: int = 16 << 20) -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, size)])


def test_every_kind_has_a_golden_file_in_the_newest_set() -> None:
    assert {p.stem for p in NEWEST.glob("*.json")} == set(all_kinds()) == set(SCENES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_file_loads_and_rebuilds(path: Path) -> None:
    """A snapshot written by an earlier version loads: header, typed state, and the device
    rebuilt from its args around fresh backends carries exactly that state."""
    data = path.read_bytes()
    header, _ = snapshot_file.read_document(data)
    assert header.kind == path.stem
    kind = all_kinds()[header.kind]
    state = snapshot_file.decode(data, header.kind, kind.state_type)
    backends, owned = media(header.kind)
    try:
        device = snapshot_file.rebuild(data, all_kinds(), _ram(), backends)
        assert device.snapshot_kind == header.kind
        assert device.state() == state
        again = snapshot_file.decode(snapshot_file.save(device), header.kind, device.state_type)
        assert again == state
    finally:
        for backend in owned:
            backend.close()


def test_rebuilt_devices_keep_working() -> None:
    """The golden testdev, rebuilt, runs its DMA engine on the restorer's RAM."""
    data = (NEWEST / "testdev.json").read_bytes()
    memory = _ram()
    device = snapshot_file.rebuild(data, all_kinds(), memory)
    assert isinstance(device, PciTestDevice) and device.registers["SCRATCH"] == 0xFEEDF00D
    memory.write(0x1000, b"after the restore")
    device.registers.write(tr.DMA_LEN, 4, 17)
    device.registers.write(tr.DMA_CMD, 4, tr.DMA_CMD_START)  # copies DMA_SRC to DMA_DST, as programmed
    assert device.registers["DMA_STATUS"] == tr.DMA_STATUS_DONE
    assert memory.read(0x3000, 17) == b"after the restore"


# -- the header (rule 1) ------------------------------------------------------------------


def _document(**changes: object) -> bytes:
    document = json.loads((NEWEST / "testdev.json").read_bytes())
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not _DROP}).encode()


_DROP = object()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"\xff", "snapshot"),
        (b"[1, 2]", "format"),
        (b"{}", "format"),
        (_document(format="devmodels-vfio-user-migration"), "format"),
        (_document(version=2), "version"),
        (_document(version=0), "version"),
        (_document(version=True), "version"),
        (_document(version="1"), "version"),
        (_document(kind=""), "kind"),
        (_document(kind=7), "kind"),
        (_document(extra=1), "snapshot"),
        (_document(state=_DROP), "state"),
        (b"[" * 100_000, "snapshot"),
    ],
)
def test_a_header_this_code_cannot_read_is_refused_by_name(data: bytes, field: str) -> None:
    with pytest.raises(SnapshotError) as info:
        snapshot_file.read_document(data)
    assert info.value.field == field


def test_documents_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_file, "MAX_BYTES", 100)
    with pytest.raises(SnapshotError, match="more than 100"):
        snapshot_file.read_document(b" " * 101)


def test_a_newer_format_names_both_versions() -> None:
    with pytest.raises(SnapshotError, match=r"format version 2 is newer than this code reads \(1\)"):
        snapshot_file.read_document(_document(version=2))


def test_decode_and_rebuild_check_the_kind() -> None:
    data = (NEWEST / "testdev.json").read_bytes()
    with pytest.raises(SnapshotError, match="a snapshot of 'testdev', not of 'e1000'"):
        snapshot_file.load_into(E1000(_ram()), data)
    with pytest.raises(SnapshotError, match="'testdev' is not a kind this reader rebuilds"):
        snapshot_file.rebuild(data, {"e1000": all_kinds()["e1000"]}, _ram())
    with pytest.raises(UsageError, match="without backends"):
        snapshot_file.rebuild(data, all_kinds(), _ram(), [object()])


def test_state_decodes_strictly() -> None:
    document = json.loads((NEWEST / "e1000.json").read_bytes())
    document["state"]["args"]["msi"] = 1
    with pytest.raises(SnapshotError) as info:
        snapshot_file.decode(json.dumps(document).encode(), "e1000", E1000.state_type)
    assert info.value.field == "state.args.msi"


# -- writing and loading into a live device (rules 2, 4) ----------------------------------


def test_load_into_a_device_built_differently_names_the_argument() -> None:
    data = (NEWEST / "e1000.json").read_bytes()  # an e1000 with msi=on and its own MAC
    device = E1000(_ram())
    before = device.state()
    with pytest.raises(SnapshotError) as info:
        snapshot_file.load_into(device, data)
    assert info.value.field == "args.mac" and "from_state" in info.value.reason
    assert device.state() == before
    host, wire = LoopbackBackend.pair()
    same = E1000(_ram(), wire, mac=bytes.fromhex("525400abcdef"), msi=True)
    snapshot_file.load_into(same, data)
    assert same.state() == snapshot_file.decode(data, "e1000", E1000.state_type)
    host.close()
    wire.close()


def test_save_takes_the_quiesce_point() -> None:
    scene = SCENES["e1000"]()
    try:
        device = scene.device
        device.registers.write(0x3818, 4, device.registers["TDT"])  # a posted TDT write
        assert device.posted
        with pytest.raises(UsageError, match=r"quiesce\(\)"):
            device.state()
        data = snapshot_file.save(device)
        assert not device.posted
        assert snapshot_file.decode(data, "e1000", E1000.state_type) == device.state()
    finally:
        scene.close()


def test_save_refuses_a_device_that_names_no_kind() -> None:
    class Anonymous(VirtioDevice):
        device_id = 42

    device = Anonymous(_ram())
    with pytest.raises(UsageError, match="no snapshot kind"):
        snapshot_file.save(device)  # type: ignore[arg-type]


def test_every_kind_state_type_is_what_its_device_reports() -> None:
    for kind, scene_of in SCENES.items():
        scene = scene_of()
        try:
            assert scene.device.snapshot_kind == kind
            assert scene.device.state_type == all_kinds()[kind].state_type
            scene.device.quiesce()
            state = scene.device.state()
            assert from_dict(scene.device.state_type, json.loads(snapshot_file.encode(kind, state))["state"]) == state
        finally:
            scene.close()
