from __future__ import annotations

import gzip
import io
import json
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devmodels import UsageError
from harness.guest import ImageBuilder, build_image, read_newc
from harness.guest._image import assemble_tree
from harness.guest._init import MODULE_LIST
from harness.guest._modules import ModuleClosure
from tests.prerequisites import prerequisite

# `fake_kernel` (conftest.py) is a (kernel, modules, release) triple with modules alpha and beta.


def _builder(fake: Any, cache: Path, modules: tuple[str, ...] = ("alpha", "beta")) -> ImageBuilder:
    return ImageBuilder(kernel=fake.kernel, modules_dir=fake.modules, modules=modules,
                        optional_modules=("af_packet", "gamma"), cache_dir=cache)


def _with_inputs(builder: ImageBuilder) -> ImageBuilder:
    builder.set_test_script("check hello true\n")
    builder.add_test("second", "check second true\n")
    builder.add_file("/etc/motd", "hello\n")
    return builder


def test_cache_key_is_stable_for_equal_inputs(fake_kernel: Any, tmp_path: Path) -> None:
    a = _with_inputs(_builder(fake_kernel, tmp_path / "c"))
    b = _with_inputs(_builder(fake_kernel, tmp_path / "c"))
    assert a.cache_key() == b.cache_key()


@pytest.mark.parametrize("change", ["script", "test", "file", "file_mode", "modules", "kernel", "module_file"])
def test_cache_key_changes_when_an_input_changes(fake_kernel: Any, tmp_path: Path, change: str) -> None:
    before = _with_inputs(_builder(fake_kernel, tmp_path / "c")).cache_key()
    if change == "kernel":
        fake_kernel.kernel.write_bytes(fake_kernel.kernel.read_bytes() + b"\0")
    if change == "module_file":
        vdir = fake_kernel.modules / "lib" / "modules" / fake_kernel.release
        (vdir / "kernel" / "drivers" / "fake" / "alpha.ko").write_bytes(b"alpha-module-v2")
    other = _with_inputs(_builder(fake_kernel, tmp_path / "c", ("alpha",) if change == "modules" else ("alpha", "beta")))
    if change == "script":
        other.set_test_script("check hello false\n")
    if change == "test":
        other.add_test("extra", "check y true\n")
    if change == "file":
        other.add_file("/etc/motd", "bye\n")
    if change == "file_mode":
        other.add_file("/etc/motd", "hello\n", 0o755)
    assert other.cache_key() != before


def test_build_then_cache_hit(fake_kernel: Any, tmp_path: Path) -> None:
    image = _with_inputs(_builder(fake_kernel, tmp_path / "cache")).build(progress=False)
    release = fake_kernel.release
    assert not image.from_cache
    assert image.kernel_version == release and image.package is None
    assert image.modules == ("alpha", "beta")
    assert image.kernel.read_bytes() == fake_kernel.kernel.read_bytes()
    assert set(image.tests) == {"smoke", "second"} and image.has_test_script
    manifest = json.loads((image.initrd.parent / "image.json").read_text())
    assert manifest["builtin_modules"] == ["af_packet"] and manifest["missing_optional_modules"] == ["gamma"]

    entries = {e.name: e for e in read_newc(gzip.decompress(image.initrd.read_bytes()))}
    moddir = f"lib/modules/{release}/kernel/drivers/fake"
    assert entries[f"{moddir}/beta.ko"].data == b"beta-module"  # stored decompressed
    assert entries[MODULE_LIST[1:]].data.decode().split() == [f"/{moddir}/alpha.ko", f"/{moddir}/beta.ko"]
    assert entries["test.sh"].data == b"check hello true\n"
    assert entries["tests/second.sh"].mode & 0o777 == 0o755
    assert entries["etc/motd"].data == b"hello\n"
    assert b"DEVMODELS-DONE" in entries["init"].data
    assert entries["bin/sh"].data == b"/bin/busybox"

    t0 = time.monotonic()
    hit = _with_inputs(_builder(fake_kernel, tmp_path / "cache")).build(progress=False)
    assert hit.from_cache and hit.initrd == image.initrd and hit.cache_key == image.cache_key
    assert time.monotonic() - t0 < 1.0


def test_rebuild_is_byte_identical(fake_kernel: Any, tmp_path: Path) -> None:
    first = _builder(fake_kernel, tmp_path / "one").build(progress=False)
    second = _builder(fake_kernel, tmp_path / "two").build(progress=False)
    assert first.initrd.read_bytes() == second.initrd.read_bytes()


def test_build_image_function_and_binaries(fake_kernel: Any, tmp_path: Path) -> None:
    image = build_image(kernel=fake_kernel.kernel, modules_dir=fake_kernel.modules, modules=("alpha",),
                        optional_modules=(), script="check a true\n", tests={"t": "check t true\n"},
                        extra_files={"/etc/a": b"a", "/etc/b": "b"}, binaries=[Path(sys.executable)],
                        cache_dir=tmp_path / "c", progress=False)
    names = {e.name for e in read_newc(gzip.decompress(image.initrd.read_bytes()))}
    assert {"etc/a", "etc/b", "test.sh", "tests/t.sh", str(Path(sys.executable).absolute())[1:]} <= names
    assert any("libc.so" in n for n in names)


def test_missing_required_module_fails_the_build(fake_kernel: Any, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nosuch"):
        _builder(fake_kernel, tmp_path, ("nosuch",)).build(progress=False)


def test_kernel_without_modules_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        ImageBuilder(kernel=tmp_path / "k")


def test_bad_test_name_is_refused() -> None:
    with pytest.raises(UsageError):
        ImageBuilder().add_test("a b", "true")


def test_add_tree_keeps_files_modes_and_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "run").write_text("#!/bin/sh\n")
    (src / "sub" / "run").chmod(0o755)
    (src / "data").write_text("d")
    (src / "link").symlink_to("data")
    builder = ImageBuilder(cache_dir=tmp_path)
    builder.add_tree(src, "/opt/x")
    extras = builder._extras
    assert extras["/opt/x/sub/run"].mode == 0o755
    assert extras["/opt/x/link"].link == "data" and extras["/opt/x/link"].data is None
    assert extras["/opt/x/data"].data == src / "data"


@prerequisite(None if shutil.which("busybox") else "busybox not installed")
def test_assemble_tree_lays_out_the_image(tmp_path: Path) -> None:
    mod = tmp_path / "kernel" / "m.ko"
    mod.parent.mkdir()
    mod.write_bytes(b"m")
    tree = assemble_tree(version="1.0", modules_dir=tmp_path, closure=ModuleClosure(("kernel/m.ko",)),
                         busybox=Path(shutil.which("busybox") or "/bin/busybox"),
                         applets=["bin/sh", "sbin/insmod", "usr/bin/[", "bin/busybox"], init="#!/bin/sh\n",
                         tests={"smoke": "true\n"}, test_script=None)
    paths = tree.paths()
    for expected in ("/init", "/dev/console", "/bin/busybox", "/bin/sh", "/sbin/insmod", "/usr/bin/[",
                     "/lib/modules/1.0/kernel/m.ko", MODULE_LIST, "/tests/smoke.sh", "/proc", "/sys"):
        assert expected in paths
    assert "/test.sh" not in paths
    modes = {e.name: e.mode for e in _entries(tree)}
    assert stat.S_IMODE(modes["init"]) == 0o755 and stat.S_ISCHR(modes["dev/console"])


def _entries(tree: Any) -> list[Any]:
    out = io.BytesIO()
    tree.write(out)
    return list(read_newc(out.getvalue()))
