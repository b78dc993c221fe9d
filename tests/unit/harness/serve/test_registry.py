"""The one device registry (``harness.serve.registry``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devmodels import GuestMemory, Machine, UsageError
from devmodels.pci import defs as p
from devmodels.runtime import ServedDevice
from harness.serve.registry import DEVICES, add_to_machine, build, parse_size


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    return path


@pytest.fixture
def peer(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "wire.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(4)
    yield f"socket:{path}"
    listener.close()


def _specs(name: str, image: Path, peer: str) -> list[str]:
    return {"testdev": [], "e1000": [peer], "ahci": [f"file:{image}"], "virtio-blk": [f"file:{image}"],
            "virtio-net": [peer]}[name]


@pytest.mark.parametrize("name", list(DEVICES))
def test_every_device_builds_as_a_served_pci_function(name: str, image: Path, peer: str) -> None:
    built = build(name, GuestMemory(), _specs(name, image, peer))
    try:
        assert isinstance(built.served, ServedDevice)
        assert built.function is not None
        assert (built.virtio is not None) == name.startswith("virtio-")
    finally:
        built.close()


def _caps(function: object) -> set[int]:
    fn = function
    found = set()
    offset = fn.config_read(p.PCI_CAPABILITY_LIST, 1)  # type: ignore[attr-defined]
    while offset:
        found.add(fn.config_read(offset, 1))  # type: ignore[attr-defined]
        offset = fn.config_read(offset + 1, 1)  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize(("name", "cap"), [("ahci", p.PCI_CAP_ID_MSI), ("virtio-blk", p.PCI_CAP_ID_MSIX),
                                           ("testdev", p.PCI_CAP_ID_MSIX)])
def test_msi_capabilities_where_the_attachment_delivers_them(name: str, cap: int, image: Path, peer: str) -> None:
    built = build(name, GuestMemory(), _specs(name, image, peer))
    try:
        assert cap in _caps(built.function)
    finally:
        built.close()
    if name == "testdev":
        return  # testdev's capabilities are the part's own; the mpqemu server hides them
    built = build(name, GuestMemory(), _specs(name, image, peer), msi=False)
    try:
        assert cap not in _caps(built.function)
    finally:
        built.close()


def test_the_e1000_has_no_msi_unless_asked(peer: str) -> None:
    plain = build("e1000", GuestMemory(), [peer])
    asked = build("e1000", GuestMemory(), [peer], ["msi=on"])
    try:
        assert p.PCI_CAP_ID_MSI not in _caps(plain.function)
        assert p.PCI_CAP_ID_MSI in _caps(asked.function)
    finally:
        plain.close()
        asked.close()


def test_unknown_options_name_the_known_ones(image: Path) -> None:
    with pytest.raises(UsageError, match=r"no option colour .*posted"):
        build("ahci", GuestMemory(), [f"file:{image}"], ["colour=red"])


@pytest.mark.parametrize(("name", "backends", "opts", "match"), [
    ("nonesuch", [], [], "unknown device 'nonesuch'; known: testdev, e1000"),
    ("virtio-blk", [], [], "one --backend"),
    ("virtio-blk", ["iso:/x"], [], "use file:PATH, file-ro:PATH or mem:SIZE"),
    ("ahci", ["file:/no/such/image"], [], "does not exist"),
    ("ahci", ["mem:0"], [], "not a size"),
    ("e1000", ["floppy:a"], [], "socket:PATH, socket-fd:N or tap:NAME"),
    ("testdev", ["mem:1M"], [], "testdev takes no --backend"),
    ("ahci", ["mem:1M"], ["ports=9"], r"ports=9: expected 1\.\.6"),
    ("ahci", ["mem:1M"], ["posted=maybe"], "expected on or off"),
    ("ahci", ["mem:1M"], ["posted"], "expected KEY=VALUE"),
])
def test_bad_words_are_usage_errors_naming_them(name: str, backends: list[str], opts: list[str], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        build(name, GuestMemory(), backends, opts)


def test_sizes() -> None:
    assert [parse_size(t) for t in ("512", "4K", "16m", "1G")] == [512, 4096, 16 << 20, 1 << 30]


def test_add_to_machine_plugs_the_function() -> None:
    machine = Machine(ram_size=16 << 20, ram_backing="bytearray")
    built = add_to_machine(machine, "virtio-blk", ["mem:1M"])
    try:
        ids = {(fn.vendor_id, fn.device_id) for fn in machine.enumerate()}
        assert (0x1AF4, 0x1042) in ids  # modern virtio-blk
    finally:
        built.close()


def test_virtio_blk_over_vhost_user_offers_no_more_segments_than_a_128_entry_queue_holds() -> None:
    # QEMU's vhost-user-blk-pci runs the queue at 128 entries whatever our maximum is; a
    # larger seg_max lets Linux build indirect chains longer than the queue (seen: 129+).
    over_pci = build("virtio-blk", GuestMemory(), ["mem:1M"])
    over_vhost_user = build("virtio-blk", GuestMemory(), ["mem:1M"], pci=False)
    asked = build("virtio-blk", GuestMemory(), ["mem:1M"], ["seg-max=62"], pci=False)
    try:
        assert over_pci.virtio.config_fields().seg_max == 254
        assert over_vhost_user.virtio.config_fields().seg_max == 126
        assert asked.virtio.config_fields().seg_max == 62
    finally:
        for built in (over_pci, over_vhost_user, asked):
            built.close()
    with pytest.raises(UsageError, match="seg-max=300"):
        build("virtio-blk", GuestMemory(), ["mem:1M"], ["seg-max=300"])
