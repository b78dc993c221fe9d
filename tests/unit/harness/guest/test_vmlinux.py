"""harness.guest._vmlinux: taking a bzImage apart (rules 1-2), the PVH note (rule 3), the cache (rule 4)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.guest import _vmlinux as v
from kvm import ElfImage
from kvm.testing import XEN_ELFNOTE_PHYS32_ENTRY, ElfSegment, make_elf

ENTRY = 0x0100_0850


def vmlinux(pvh: bool = True) -> bytes:
    notes = [("Linux", 256, b"6.1.0\0"), ("Xen", 6, b"linux\0")]
    if pvh:
        notes.append(("Xen", XEN_ELFNOTE_PHYS32_ENTRY, ENTRY.to_bytes(8, "little")))
    return make_elf([ElfSegment(0x100_0000, b"\x90" * 4096, vaddr=0xFFFF_FFFF_8100_0000)], 0x100_0000, notes=notes)


def compress(kind: str, data: bytes) -> bytes:
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    if kind == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    raise AssertionError(kind)


def bzimage(payload: bytes, *, protocol: int = 0x20F, setup_sects: int = 3, magic: bytes = b"HdrS",
            extra: int = 0) -> bytes:
    """A bzImage as boot.rst lays it out: setup sectors, then the protected-mode part whose
    payload_offset bytes of decompressor come before the payload (+ its 4-byte size)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, protocol)
    decompressor = b"\xcc" * 0x2CC
    struct.pack_into("<II", setup, 0x248, len(decompressor), len(payload) + 4 + extra)
    return bytes(setup) + decompressor + payload + struct.pack("<I", 0x12345)


@pytest.mark.parametrize("kind", ["xz", "gzip", "bzip2", "lzma", "zstd"])
def test_rule_1_2_each_payload_format_gives_the_elf_back(kind: str) -> None:
    if kind == "zstd" and shutil.which("zstd") is None:
        pytest.skip("no zstd program (zstd package) to make the payload")
    found, data = v.extract_vmlinux(bzimage(compress(kind, vmlinux())))
    assert found == kind and data == vmlinux()


def test_rule_3_the_pvh_entry_is_the_xen_phys32_note() -> None:
    assert v.pvh_entry(ElfImage.parse(vmlinux())) == ENTRY
    assert v.pvh_entry(ElfImage.parse(vmlinux(pvh=False))) is None


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (b"MZ" + bytes(0x300), "no HdrS"),
        (bzimage(compress("xz", vmlinux()), protocol=0x206), "2.08"),
        (bzimage(compress("xz", vmlinux()), extra=1 << 20), "not inside"),
        (bzimage(b"\x00\x01\x02\x03" * 64), "unknown payload format"),
        (bzimage(b"\xfd7zXZ\x00" + bytes(64)), "corrupt xz payload"),
        (bzimage(compress("gzip", b"not an elf at all")), "holds no ELF"),
    ],
    ids=["no-header", "old-protocol", "payload-past-end", "unknown-magic", "corrupt", "no-elf"],
)
def test_rule_1_2_what_is_not_a_bzimage_kernel_is_a_boot_protocol_error(image: bytes, words: str) -> None:
    with pytest.raises(v.BootProtocolError, match=words):
        v.extract_vmlinux(image)


def test_rule_2_decompression_stops_at_the_limit() -> None:
    with pytest.raises(v.BootProtocolError, match="past 1000 bytes"):
        v.decompress("gzip", gzip.compress(bytes(5000)), limit=1000)


def test_rule_4_direct_kernel_extracts_once_and_reuses_the_copy(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(compress("xz", vmlinux())))
    found = v.direct_kernel(kernel, tmp_path / "cache")
    assert found.path is not None and found.entry == ENTRY and found.compression == "xz"
    assert found.path.read_bytes() == vmlinux()

    def no_second_extraction(data: bytes) -> tuple[str, bytes]:
        raise AssertionError("extracted again")

    monkeypatch.setattr(v, "extract_vmlinux", no_second_extraction)
    assert v.direct_kernel(kernel, tmp_path / "cache") == found


def test_rule_4_a_kernel_without_pvh_entry_is_not_booted_directly(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(compress("gzip", vmlinux(pvh=False))))
    found = v.direct_kernel(kernel, tmp_path / "cache")
    assert found.path is None and found.compression == "gzip" and "PVH entry" in found.reason
    assert not (tmp_path / "cache" / "vmlinux").exists() or not any((tmp_path / "cache" / "vmlinux").iterdir())


def test_rule_4_a_broken_file_answers_none_with_the_reason(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"garbage" * 100)
    found = v.direct_kernel(kernel, tmp_path / "cache")
    assert found.path is None and "HdrS" in found.reason
    assert v.direct_kernel(tmp_path / "missing", tmp_path / "cache").path is None


def test_rule_4_the_cache_keeps_the_most_recent_kernels(tmp_path: Path) -> None:
    paths = []
    for i in range(v.KEEP + 2):
        kernel = tmp_path / f"vmlinuz{i}"
        kernel.write_bytes(bzimage(compress("gzip", vmlinux() + bytes([i]))))
        found = v.direct_kernel(kernel, tmp_path / "cache")
        assert found.path is not None
        paths.append(found.path)
    kept = [p for p in paths if p.exists()]
    assert len(kept) == v.KEEP and paths[-1] in kept
