from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from devmodels import HostError, UsageError
from harness.guest._binaries import is_elf, ldd_closure, parse_ldd
from tests.prerequisites import prerequisite

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd5a1f2000)
\tlibaio.so.1 => /lib/x86_64-linux-gnu/libaio.so.1 (0x00007f0c1c9e4000)
\tlibceph-common.so.2 => /usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2 (0x00007fba59c00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1c803000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1ca0f000)
\tlibaio.so.1 => /lib/x86_64-linux-gnu/libaio.so.1 (0x00007f0c1c9e4000)
"""


def test_parse_ldd_keeps_paths_and_interpreter_in_order() -> None:
    assert parse_ldd(LDD_OUTPUT) == [
        "/lib/x86_64-linux-gnu/libaio.so.1",
        "/usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_parse_ldd_missing_library_is_a_host_error() -> None:
    with pytest.raises(HostError, match="libgone.so.3"):
        parse_ldd("\tlibgone.so.3 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n")


@prerequisite(None if shutil.which("ldd") else "ldd not installed (libc-bin)")
def test_closure_of_a_dynamic_program_has_libc_and_the_loader() -> None:
    libs = ldd_closure(Path(sys.executable))
    assert any("libc.so" in lib for lib in libs)
    assert any("ld-linux" in lib for lib in libs)


@prerequisite(None if shutil.which("busybox") else "busybox not installed")
def test_closure_of_static_busybox_is_empty() -> None:
    busybox = shutil.which("busybox")
    assert busybox is not None
    assert ldd_closure(Path(busybox)) == []


def test_non_elf_is_a_usage_error(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    assert not is_elf(script)
    with pytest.raises(UsageError):
        ldd_closure(script)
