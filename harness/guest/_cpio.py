"""The SVR4 "newc" cpio format, as the Linux initramfs loader reads it.

Rules:

1. Output is deterministic: the writer stores exactly the metadata it is given, and
   ``FileTree`` gives every entry uid/gid 0, one fixed mtime, sequential inode numbers and a
   sorted order (parents before children), so equal inputs give byte-identical archives.
2. Only the entry kinds an initramfs needs: directories, regular files, symbolic links and
   character/block device nodes. No hard links (every entry has ``nlink`` 1, directories 2).
3. Layout (Linux ``Documentation/driver-api/early-userspace/buffer-format.rst``): a 110-byte
   ASCII header of ``070701`` and thirteen 8-digit hex fields, the NUL-terminated name padded
   so that header + name is a multiple of 4, then the data padded to a multiple of 4. The
   archive ends with an entry named ``TRAILER!!!``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from devmodels import UsageError

__all__ = ["NEWC_MAGIC", "TRAILER", "CpioEntry", "NewcWriter", "FileTree", "read_newc"]

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
_FIELD_MAX = 0xFFFF_FFFF
_COPY_CHUNK = 1 << 20


def _pad4(length: int) -> int:
    return (-length) % 4


@dataclass(frozen=True)
class CpioEntry:
    """One archive member, as stored.

    Attributes:
        name: path inside the archive, without a leading slash.
        mode: ``st_mode`` including the file-type bits.
        data: file contents or symlink target (empty for directories and devices).
        rdev: ``(major, minor)`` for device nodes.
        ino, uid, gid, nlink, mtime: the header fields of the same names.
    """

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    ino: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0


class NewcWriter:
    """Streams newc entries to a binary file object, in the order they are added.

    Call ``close()`` (or use it as a context manager) to write the trailer; the underlying
    file object is not closed.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._closed = False

    def __enter__(self) -> NewcWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    def _header(self, name: str, mode: int, size: int, *, ino: int, uid: int, gid: int, nlink: int,
                mtime: int, rdev: tuple[int, int]) -> None:
        if self._closed:
            raise UsageError("NewcWriter is closed")
        encoded = name.encode("utf-8") + b"\0"
        fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
        for value in fields:
            if not 0 <= value <= _FIELD_MAX:
                raise UsageError(f"cpio entry {name!r}: header field {value} does not fit 32 bits")
        header = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
        self._out.write(header + encoded + b"\0" * _pad4(_HEADER_LEN + len(encoded)))

    def add(self, entry: CpioEntry) -> None:
        """Write one entry whose contents are in memory."""
        self._header(entry.name, entry.mode, len(entry.data), ino=entry.ino, uid=entry.uid, gid=entry.gid,
                     nlink=entry.nlink, mtime=entry.mtime, rdev=entry.rdev)
        self._out.write(entry.data + b"\0" * _pad4(len(entry.data)))

    def add_host_file(self, name: str, mode: int, source: Path, *, ino: int, mtime: int = 0) -> None:
        """Write a regular file whose contents are copied from ``source`` in chunks.

        Raises:
            OSError: ``source`` cannot be read (propagated unchanged).
            UsageError: ``source`` changed size while it was copied.
        """
        size = source.stat().st_size
        self._header(name, mode, size, ino=ino, uid=0, gid=0, nlink=1, mtime=mtime, rdev=(0, 0))
        copied = 0
        with source.open("rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                self._out.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise UsageError(f"{source} changed size while it was archived")
        self._out.write(b"\0" * _pad4(size))

    def close(self) -> None:
        """Write the trailer entry; further writes raise ``UsageError``."""
        if not self._closed:
            self.add(CpioEntry(TRAILER, 0))
            self._closed = True


@dataclass(frozen=True)
class _Node:
    mode: int
    data: bytes | Path = b""
    rdev: tuple[int, int] = (0, 0)


class FileTree:
    """An in-memory description of an initramfs, written out deterministically.

    Paths are absolute guest paths (``/bin/busybox``); missing parent directories are
    created with mode 0755. Adding a path twice replaces the first entry, except that a
    directory may be added again harmlessly.
    """

    def __init__(self, mtime: int = 0) -> None:
        self._nodes: dict[PurePosixPath, _Node] = {}
        self._mtime = mtime

    @staticmethod
    def _key(path: str) -> PurePosixPath:
        p = PurePosixPath("/") / path
        if ".." in p.parts or p == PurePosixPath("/"):
            raise UsageError(f"bad guest path {path!r}")
        return p

    def _ensure_parents(self, p: PurePosixPath) -> None:
        for parent in reversed(p.parents):
            if parent == PurePosixPath("/"):
                continue
            node = self._nodes.get(parent)
            if node is None:
                self._nodes[parent] = _Node(stat.S_IFDIR | 0o755)
            elif not stat.S_ISDIR(node.mode):
                raise UsageError(f"{parent} is a file, cannot hold {p}")

    def _put(self, path: str, node: _Node) -> None:
        p = self._key(path)
        self._ensure_parents(p)
        old = self._nodes.get(p)
        if old is not None and stat.S_ISDIR(old.mode) != stat.S_ISDIR(node.mode):
            raise UsageError(f"{p} added both as a directory and as a non-directory")
        self._nodes[p] = node

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        """Add a directory (and its parents)."""
        self._put(path, _Node(stat.S_IFDIR | (mode & 0o7777)))

    def add_file(self, path: str, data: bytes | Path, mode: int = 0o644) -> None:
        """Add a regular file from bytes or from a host file (read when written)."""
        self._put(path, _Node(stat.S_IFREG | (mode & 0o7777), data))

    def add_symlink(self, path: str, target: str) -> None:
        """Add a symbolic link to ``target`` (stored verbatim)."""
        self._put(path, _Node(stat.S_IFLNK | 0o777, target.encode("utf-8")))

    def add_device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a device node; ``kind`` is ``"c"`` (character) or ``"b"`` (block)."""
        type_bits = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}.get(kind)
        if type_bits is None:
            raise UsageError(f"device kind must be 'c' or 'b', not {kind!r}")
        self._put(path, _Node(type_bits | (mode & 0o7777), rdev=(major, minor)))

    def __contains__(self, path: str) -> bool:
        return self._key(path) in self._nodes

    def paths(self) -> list[str]:
        """All guest paths, in archive order."""
        return [str(p) for p in sorted(self._nodes, key=lambda p: p.parts)]

    def write(self, out: BinaryIO) -> None:
        """Write the tree as a complete newc archive (with trailer) to ``out``."""
        with NewcWriter(out) as writer:
            for ino, p in enumerate(sorted(self._nodes, key=lambda p: p.parts), start=1):
                node = self._nodes[p]
                name = str(p)[1:]
                if isinstance(node.data, Path):
                    writer.add_host_file(name, node.mode, node.data, ino=ino, mtime=self._mtime)
                    continue
                nlink = 2 if stat.S_ISDIR(node.mode) else 1
                writer.add(CpioEntry(name, node.mode, node.data, node.rdev, ino=ino, nlink=nlink,
                                     mtime=self._mtime))


def read_newc(data: bytes) -> Iterator[CpioEntry]:
    """Parse a newc archive, yielding entries up to (not including) the trailer.

    Raises:
        UsageError: the bytes are not a well-formed newc archive.
    """
    pos = 0
    while True:
        header = data[pos:pos + _HEADER_LEN]
        if len(header) != _HEADER_LEN or header[:6] != NEWC_MAGIC:
            raise UsageError(f"bad newc header at offset {pos}")
        try:
            fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError as exc:
            raise UsageError(f"bad newc header field at offset {pos}") from exc
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = fields
        name_start = pos + _HEADER_LEN
        raw_name = data[name_start:name_start + namesize]
        if len(raw_name) != namesize or not raw_name.endswith(b"\0"):
            raise UsageError(f"truncated name at offset {name_start}")
        name = raw_name[:-1].decode("utf-8")
        data_start = name_start + namesize + _pad4(_HEADER_LEN + namesize)
        body = data[data_start:data_start + size]
        if len(body) != size:
            raise UsageError(f"truncated data of {name!r}")
        if name == TRAILER:
            return
        yield CpioEntry(name, mode, body, (rmaj, rmin), ino=ino, uid=uid, gid=gid, nlink=nlink, mtime=mtime)
        pos = data_start + size + _pad4(size)
