from __future__ import annotations

import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from devmodels import UsageError
from harness.guest._cpio import TRAILER, CpioEntry, FileTree, NewcWriter, read_newc
from tests.prerequisites import prerequisite

needs_cpio = prerequisite(None if shutil.which("cpio") else "cpio not installed (apt-get install cpio)")


def _sample_tree(tmp_path: Path) -> FileTree:
    host = tmp_path / "host.bin"
    host.write_bytes(bytes(range(256)) * 5 + b"xyz")  # 1283 bytes: exercises data padding
    tree = FileTree()
    tree.add_file("/init", b"#!/bin/sh\necho hi\n", 0o755)
    tree.add_file("/usr/lib/host.bin", host)
    tree.add_symlink("/bin/sh", "/bin/busybox")
    tree.add_file("/bin/busybox", b"\x7fELF-fake", 0o755)
    tree.add_device("/dev/console", "c", 5, 1)
    tree.add_dir("/proc")
    tree.add_file("/a-b", b"")  # sorts between "/a" dirs and "/a/..." by components, not by string
    tree.add_file("/a/b", b"1")
    return tree


def _archive(tree: FileTree) -> bytes:
    out = io.BytesIO()
    tree.write(out)
    return out.getvalue()


def test_round_trip_keeps_names_modes_and_data(tmp_path: Path) -> None:
    data = _archive(_sample_tree(tmp_path))
    entries = {e.name: e for e in read_newc(data)}
    assert entries["init"].data == b"#!/bin/sh\necho hi\n"
    assert entries["init"].mode == stat.S_IFREG | 0o755
    assert entries["usr/lib/host.bin"].data == bytes(range(256)) * 5 + b"xyz"
    assert entries["bin/sh"].mode == stat.S_IFLNK | 0o777 and entries["bin/sh"].data == b"/bin/busybox"
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert stat.S_ISDIR(entries["usr"].mode) and stat.S_ISDIR(entries["usr/lib"].mode)
    assert all(e.uid == 0 and e.gid == 0 and e.mtime == 0 for e in entries.values())
    assert len({e.ino for e in entries.values()}) == len(entries)


def test_parents_come_before_children(tmp_path: Path) -> None:
    names = [e.name for e in read_newc(_archive(_sample_tree(tmp_path)))]
    for i, name in enumerate(names):
        parent = name.rsplit("/", 1)[0] if "/" in name else None
        if parent:
            assert parent in names[:i], name


def test_output_is_deterministic(tmp_path: Path) -> None:
    assert _archive(_sample_tree(tmp_path)) == _archive(_sample_tree(tmp_path))


def test_every_header_is_4_byte_aligned_and_trailer_ends_it(tmp_path: Path) -> None:
    data = _archive(_sample_tree(tmp_path))
    assert len(data) % 4 == 0
    assert data.endswith(b"\0") and TRAILER.encode() in data[-140:]
    pos = 0
    while True:
        assert pos % 4 == 0 and data[pos:pos + 6] == b"070701"
        size, namesize = int(data[pos + 54:pos + 62], 16), int(data[pos + 94:pos + 102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1]
        pos += 110 + namesize
        pos += (-pos) % 4
        pos += size + (-size) % 4
        if name == TRAILER.encode():
            break
    assert pos == len(data)


@needs_cpio
def test_system_cpio_lists_the_archive(tmp_path: Path) -> None:
    data = _archive(_sample_tree(tmp_path))
    proc = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    listed = proc.stdout.decode().split()
    assert listed == [e.name for e in read_newc(data)]
    assert {"init", "bin/sh", "dev/console", "usr/lib/host.bin", "proc"} <= set(listed)


@needs_cpio
def test_system_cpio_extracts_the_archive(tmp_path: Path) -> None:
    data = _archive(_sample_tree(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    # Device nodes need privileges cpio may not have; extract everything else.
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", "-f", "dev/console"],
                   input=data, cwd=out, check=True)
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "init").stat().st_mode & 0o777 == 0o755
    assert (out / "usr/lib/host.bin").read_bytes() == (tmp_path / "host.bin").read_bytes()
    assert (out / "bin/sh").is_symlink() and str((out / "bin/sh").readlink()) == "/bin/busybox"


def test_writer_alone_writes_entries_in_given_order() -> None:
    out = io.BytesIO()
    with NewcWriter(out) as w:
        w.add(CpioEntry("z", stat.S_IFREG | 0o600, b"late", ino=1))
        w.add(CpioEntry("a", stat.S_IFREG | 0o600, b"", ino=2))
    assert [e.name for e in read_newc(out.getvalue())] == ["z", "a"]
    with pytest.raises(UsageError):
        w.add(CpioEntry("b", stat.S_IFREG))


@pytest.mark.parametrize("path", ["/", "/a/../b", ""])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(UsageError):
        FileTree().add_file(path, b"")


def test_file_under_file_is_refused() -> None:
    tree = FileTree()
    tree.add_file("/x", b"")
    with pytest.raises(UsageError):
        tree.add_file("/x/y", b"")


def test_reader_rejects_garbage() -> None:
    with pytest.raises(UsageError):
        list(read_newc(b"070702" + b"0" * 200))
