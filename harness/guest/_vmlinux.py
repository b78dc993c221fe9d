"""Direct kernel boot: the ``vmlinux`` ELF inside a bzImage, checked for its PVH entry.

QEMU boots an ELF kernel that carries a PVH entry note straight at that entry (``-kernel
vmlinux``; QEMU's x86 loader, ``load_elfboot``), with no real-mode setup and no in-guest
decompressor. Under TCG the decompressor is the slow part of a boot: measured on this
project's guest (Debian 6.1, xz), QEMU start to ``DEVMODELS-DONE`` took 17.0 s with the
bzImage and 9.0 s with its vmlinux under QEMU 7.2 (median of 3 each, a loaded 2-core
machine; 11.1 alike, see kvm/README.md).

Rules:

1. A bzImage is read as the x86 boot protocol lays it out (Documentation/arch/x86/boot.rst):
   "HdrS" at 0x202, protocol 2.08 or later; the protected-mode code starts at
   ``(setup_sects + 1) * 512`` (``setup_sects`` 0 means 4), and the setup header's
   ``payload_offset``/``payload_length`` (0x248, 0x24C) give the compressed kernel inside it.
   The payload's format is named by its magic: gzip, xz, bzip2, lzma and zstd (Debian 6.1
   uses xz). The standard library decompresses all but zstd; zstd goes through the
   ``zstandard`` module when installed, else the ``zstd`` program.
2. What comes out must be the kernel's ELF (``vmlinux`` stripped by the kernel build), and
   it is parsed with the payload loader (``kvm.ElfImage``, pyelftools): a file it refuses
   is no direct-boot kernel. Decompression stops at ``MAX_VMLINUX`` bytes.
3. The PVH entry is the ``XEN_ELFNOTE_PHYS32_ENTRY`` note (owner "Xen", type 18,
   xen/include/public/elfnote.h), a physical address below 4 GiB. A kernel without it
   (CONFIG_PVH off) cannot be booted directly.
4. ``direct_kernel`` extracts once per bzImage (cached by its SHA-256 under
   ``<guest cache>/vmlinux/``, written atomically, the ``KEEP`` most recently used kept)
   and answers ``None``, with the reason on ``DirectKernel.reason``, whenever the bzImage
   cannot be booted directly: the caller then boots the bzImage as before.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from devmodels import HostError
from kvm import ElfError, ElfImage

from ._tools import require_tool, run_tool

__all__ = ["BootProtocolError", "DirectKernel", "MAX_VMLINUX", "KEEP", "compressed_payload", "decompress",
           "extract_vmlinux", "pvh_entry", "direct_kernel"]

MAX_VMLINUX = 512 << 20
KEEP = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
_HDRS_MAGIC = b"HdrS"
_MAGICS = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
)


class BootProtocolError(HostError):
    """The file is not a bzImage this module can take apart (rules 1-2)."""


@dataclass(frozen=True)
class DirectKernel:
    """What ``direct_kernel`` found (rule 4).

    Attributes:
        path: the cached ``vmlinux``, or None when the bzImage cannot be booted directly.
        entry: its PVH entry (rule 3), or None.
        compression: the payload's format (rule 1), or "" if it was never found.
        reason: why ``path`` is None ("" otherwise).
    """

    path: Path | None
    entry: int | None
    compression: str
    reason: str = ""


def compressed_payload(bzimage: bytes) -> tuple[str, bytes]:
    """The compressed kernel of a bzImage and its format (rule 1).

    Raises:
        BootProtocolError: not a bzImage of protocol 2.08+, or an unknown payload format.
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != _HDRS_MAGIC:
        raise BootProtocolError("not a bzImage: no HdrS setup header at 0x202")
    (protocol,) = struct.unpack_from("<H", bzimage, 0x206)
    if protocol < 0x208:
        raise BootProtocolError(f"boot protocol {protocol >> 8}.{protocol & 0xFF:02d} has no payload_offset (2.08+)")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if not length or start + length > len(bzimage):
        raise BootProtocolError(f"payload [{start:#x}, +{length:#x}) is not inside the {len(bzimage)}-byte file")
    payload = bzimage[start : start + length]
    for kind, magic in _MAGICS:
        if payload.startswith(magic):
            return kind, payload
    raise BootProtocolError(f"unknown payload format (magic {payload[:6].hex()})")


def decompress(kind: str, payload: bytes, limit: int = MAX_VMLINUX) -> bytes:
    """Decompress a bzImage payload of format ``kind``, at most ``limit`` bytes (rule 1).

    The kernel build appends the decompressed size (4 bytes) after the stream (the
    ``*_with_size`` rules of scripts/Makefile.lib), inside ``payload_length``; what follows
    the first stream is ignored (the ``zstd`` program, which refuses trailing bytes, is
    given the stream without them).

    Raises:
        BootProtocolError: a corrupt stream, or more than ``limit`` bytes.
        HostError: zstd is needed and neither ``zstandard`` nor the ``zstd`` program is there.
    """
    try:
        if kind == "xz" or kind == "lzma":
            xz = lzma.LZMADecompressor(format=lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)
            out = xz.decompress(payload, max_length=limit + 1)
        elif kind == "gzip":
            out = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(payload, limit + 1)
        elif kind == "bzip2":
            out = bz2.BZ2Decompressor().decompress(payload, max_length=limit + 1)
        elif kind == "zstd":
            out = _zstd(payload, limit)
        else:
            raise BootProtocolError(f"unknown payload format {kind!r}")
    except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError) as exc:
        raise BootProtocolError(f"corrupt {kind} payload: {exc}") from None
    if len(out) > limit:
        raise BootProtocolError(f"the {kind} payload decompresses past {limit} bytes")
    return out


def _zstd(payload: bytes, limit: int) -> bytes:
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        out = bytearray()
        with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
            while len(out) <= limit:
                chunk = reader.read(min(1 << 20, limit + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
        return bytes(out)
    program = require_tool("zstd")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "payload.zst", Path(tmp) / "vmlinux"
        src.write_bytes(payload[:-4])
        run_tool([program, "-q", "-d", "-o", dst, src], what="decompressing the kernel")
        with dst.open("rb") as f:
            return f.read(limit + 1)


def extract_vmlinux(bzimage: bytes) -> tuple[str, bytes]:
    """(compression, vmlinux bytes) of a bzImage (rules 1-2).

    Raises:
        BootProtocolError: not a bzImage, a corrupt payload, or no ELF inside.
    """
    kind, payload = compressed_payload(bzimage)
    data = decompress(kind, payload)
    if not data.startswith(b"\x7fELF"):
        raise BootProtocolError(f"the {kind} payload holds no ELF (starts {data[:4].hex()})")
    return kind, data


def pvh_entry(image: ElfImage) -> int | None:
    """The kernel's PVH entry (rule 3), or None without one."""
    for note in image.notes:
        if note.name == "Xen" and note.type == XEN_ELFNOTE_PHYS32_ENTRY and 4 <= len(note.desc) <= 8:
            entry = int.from_bytes(note.desc, "little")
            if 0 < entry < 1 << 32:
                return entry
    return None


def direct_kernel(bzimage: Path, cache_dir: Path | None = None) -> DirectKernel:
    """The bzImage's vmlinux for a direct (PVH) boot, extracted once and cached (rule 4)."""
    from ._image import default_cache_dir

    root = (cache_dir if cache_dir is not None else default_cache_dir()) / "vmlinux"
    try:
        with bzimage.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()[:32]
        entry_dir = root / digest
        cached = entry_dir / "vmlinux"
        if cached.is_file():
            image = ElfImage.from_file(cached)
            kind = (entry_dir / "compression").read_text().strip()
            os.utime(entry_dir)
        else:
            kind, data = extract_vmlinux(bzimage.read_bytes())
            image = ElfImage.parse(data, name=f"vmlinux of {bzimage}")
            if pvh_entry(image) is None:
                return DirectKernel(None, None, kind, "the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
            _store(root, entry_dir, data, kind)
        entry = pvh_entry(image)
        if entry is None:
            return DirectKernel(None, None, kind, "the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
        return DirectKernel(cached, entry, kind)
    except (HostError, ElfError, OSError) as exc:
        return DirectKernel(None, None, "", f"{bzimage}: {exc}")


def _store(root: Path, entry_dir: Path, data: bytes, kind: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        (work / "vmlinux").write_bytes(data)
        (work / "compression").write_text(kind + "\n")
        try:
            work.rename(entry_dir)
        except OSError:
            if not (entry_dir / "vmlinux").is_file():  # not another process that won the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entries = sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
