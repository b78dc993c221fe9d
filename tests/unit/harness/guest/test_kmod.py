"""The out-of-tree module builder (harness.guest._kmod): cache key, cache hits, error paths.

No network: apt is played by scripts on PATH (as in test_kernel_source), and kbuild by a
headers tree whose Makefile stands in for the kernel's, run by the real make.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from devmodels import HostError, UsageError
from harness.guest import _kmod
from harness.guest._kernel import KernelSource
from harness.guest._kmod import (
    TESTDEV_MODULE_SOURCE,
    build_module,
    header_packages,
    headers_tree,
    kmod_cache_key,
    module_name,
)
from tests.prerequisites import prerequisite

RELEASE = "9.9.9-1-amd64"
VERSION = "9.9.9-3"
IMAGE = f"linux-image-{RELEASE}"
IDENTITY = f"deb:{IMAGE}={VERSION}"
DEPENDS = (f" linux-headers-9.9.9-1-common (= {VERSION}), linux-kbuild-9.9 (>= {VERSION}), "
           "linux-compiler-gcc-12-x86")

needs_make = prerequisite(None if shutil.which("make") else "make not installed (apt-get install make)")


def _kernel(package: str | None = f"{IMAGE}={VERSION}") -> KernelSource:
    identity = IDENTITY if package is not None else "file:abc:9.9.9:sig"
    return KernelSource("", identity, package, Path("/nonexistent/vmlinuz"), Path("/nonexistent/modules"))


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of our testdev driver's sources."""
    copy = tmp_path / "src"
    shutil.copytree(TESTDEV_MODULE_SOURCE, copy)
    return copy


def _fake_headers(cache: Path, makefile: str, kernelvariables: str = "CC = $(CROSS_COMPILE)gcc\n") -> Path:
    """An unpacked headers tree in the cache, as headers_tree leaves it, with our Makefile."""
    target = _kmod._headers_dir(cache, RELEASE, VERSION)
    tree = _kmod._build_tree(target / "root", RELEASE)
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text(makefile)
    (tree / ".kernelvariables").write_text(kernelvariables)
    (target / _kmod.HEADERS_STAMP).write_text(json.dumps({"packages": [], "release": RELEASE}))
    return tree


# --- cache key -------------------------------------------------------------------------------


def test_cache_key_is_stable_and_follows_sources_and_kernel(source: Path) -> None:
    key = kmod_cache_key(source, IDENTITY)
    assert key == kmod_cache_key(source, IDENTITY) and len(key) == 64
    assert kmod_cache_key(source, "deb:linux-image-9.9.9-2-amd64=9.9.9-4") != key
    c_file = source / "devmodels_testdev.c"
    c_file.write_text(c_file.read_text() + "\n/* edited */\n")
    edited = kmod_cache_key(source, IDENTITY)
    assert edited != key
    (source / "extra.h").write_text("#define X 1\n")
    assert kmod_cache_key(source, IDENTITY) != edited


def test_cache_key_ignores_build_outputs(source: Path) -> None:
    key = kmod_cache_key(source, IDENTITY)
    for junk in ("devmodels_testdev.o", "devmodels_testdev.ko", ".devmodels_testdev.o.cmd", "Module.symvers",
                 "modules.order"):
        (source / junk).write_bytes(b"build output")
    assert kmod_cache_key(source, IDENTITY) == key


def test_cache_key_of_an_empty_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no module sources"):
        kmod_cache_key(tmp_path, IDENTITY)


def test_module_name_comes_from_kbuild(tmp_path: Path) -> None:
    assert module_name(TESTDEV_MODULE_SOURCE) == "devmodels_testdev"
    with pytest.raises(UsageError, match="no readable Kbuild"):
        module_name(tmp_path)
    (tmp_path / "Kbuild").write_text("obj-m := a.o b.o\n")
    with pytest.raises(UsageError, match="one module"):
        module_name(tmp_path)


# --- which packages ---------------------------------------------------------------------------


def test_header_packages_follow_the_depends_field() -> None:
    assert header_packages(f"linux-headers-{RELEASE}", VERSION, DEPENDS) == [
        f"linux-headers-{RELEASE}={VERSION}", f"linux-headers-9.9.9-1-common={VERSION}", f"linux-kbuild-9.9={VERSION}",
    ]
    with pytest.raises(HostError, match="depends on no"):
        header_packages(f"linux-headers-{RELEASE}", VERSION, " linux-compiler-gcc-12-x86")


def test_relocate_makes_the_common_include_relative(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("include /usr/src/linux-headers-9.9.9-1-common/Makefile\n")
    _kmod._relocate(tmp_path)
    assert (tmp_path / "Makefile").read_text() == "include ../linux-headers-9.9.9-1-common/Makefile\n"
    (tmp_path / "Makefile").write_text("all:\n")
    with pytest.raises(HostError, match="includes no common headers tree"):
        _kmod._relocate(tmp_path)


def test_compiler_is_read_from_kernelvariables(tmp_path: Path) -> None:
    (tmp_path / ".kernelvariables").write_text(
        "CCACHE = ccache\nCC = $(if $(DEBIAN_KERNEL_USE_CCACHE),$(CCACHE)) $(CROSS_COMPILE)gcc-12\n")
    assert _kmod._compiler(tmp_path) == "gcc-12"
    (tmp_path / ".kernelvariables").unlink()
    assert _kmod._compiler(tmp_path) == "gcc"


# --- error paths ------------------------------------------------------------------------------


def test_a_kernel_not_from_a_package_is_a_usage_error(source: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not from a Debian package"):
        build_module(source, _kernel(None), tmp_path / "cache")


def test_apt_failure_is_a_host_error_naming_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _write_exe(bindir / "apt-cache", f"#!/bin/sh\nprintf 'Package: linux-headers-{RELEASE}\\nDepends:{DEPENDS}\\n'\n")
    _write_exe(bindir / "apt-get", "#!/bin/sh\necho \"E: Failed to fetch $2  Temporary failure resolving "
                                   "'deb.debian.org'\" >&2\nexit 100\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "cache"
    with pytest.raises(HostError) as caught:
        headers_tree(_kernel(), cache)
    message = str(caught.value)
    assert f"linux-headers-{RELEASE}={VERSION}" in message and f"linux-kbuild-9.9={VERSION}" in message
    assert "network" in message and "Temporary failure resolving" in message
    assert not list((cache / "kmod" / "headers").iterdir())  # the half-done download is gone


def test_unknown_headers_package_is_a_host_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _write_exe(bindir / "apt-cache", "#!/bin/sh\necho 'E: No packages found' >&2\nexit 100\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(HostError, match="apt-get update"):
        headers_tree(_kernel(), tmp_path / "cache")


@needs_make
def test_build_failure_carries_the_compiler_errors(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _fake_headers(cache, "modules:\n\t@echo 'building'\n"
                         "\t@echo \"$(M)/devmodels_testdev.c:7:1: error: expected ';' before '}' token\" >&2\n"
                         "\t@exit 2\n")
    with pytest.raises(HostError) as caught:
        build_module(source, _kernel(), cache)
    assert "building devmodels_testdev.ko failed" in str(caught.value)
    assert "error: expected ';'" in str(caught.value)
    assert not list((cache / "kmod" / "modules").glob(".build-*"))


@needs_make
def test_a_build_that_leaves_no_module_is_a_host_error(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _fake_headers(cache, "modules:\n\t@true\n")
    with pytest.raises(HostError, match="left no devmodels_testdev.ko"):
        build_module(source, _kernel(), cache)


def test_a_missing_compiler_is_named(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    _fake_headers(cache, "modules:\n\t@true\n", "CC = $(CROSS_COMPILE)gcc-99\n")
    with pytest.raises(HostError, match="gcc-99 not found: install it with `apt-get install gcc-99`"):
        build_module(source, _kernel(), cache)


# --- the cache --------------------------------------------------------------------------------


@needs_make
def test_built_module_is_cached_by_content(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    tree = _fake_headers(cache, "modules:\n\tcat $(M)/devmodels_testdev.c > $(M)/devmodels_testdev.ko\n")
    built = build_module(source, _kernel(), cache)
    assert not built.from_cache and built.name == "devmodels_testdev" and built.release == RELEASE
    assert built.path.read_bytes() == (source / "devmodels_testdev.c").read_bytes()
    assert built.cache_key == kmod_cache_key(source, IDENTITY)
    assert sorted(p.name for p in built.path.parent.iterdir()) == ["devmodels_testdev.ko", "module.json"]
    assert [p.name for p in (cache / "kmod" / "modules").iterdir()] == [built.path.parent.name]

    # A hit needs neither apt nor make: the tree and every tool may be gone.
    shutil.rmtree(tree.parents[2])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    again = build_module(source, _kernel(), cache)
    assert again.from_cache and again.path == built.path and again.cache_key == built.cache_key


@needs_make
def test_build_maps_away_the_build_and_cache_paths(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    tree = _fake_headers(cache, "modules:\n\techo '$(KCFLAGS)' > $(M)/devmodels_testdev.ko\n")
    built = build_module(source, _kernel(), cache)
    flags = built.path.read_text().split()
    assert flags[0].startswith("-ffile-prefix-map=") and flags[0].endswith("=devmodels_testdev")
    assert flags[1] == f"-ffile-prefix-map={tree.parents[2]}/=/"


@needs_make
def test_a_damaged_entry_is_built_again(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _fake_headers(cache, "modules:\n\techo module > $(M)/devmodels_testdev.ko\n")
    built = build_module(source, _kernel(), cache)
    (built.path.parent / "module.json").write_text("{not json")
    again = build_module(source, _kernel(), cache)
    assert not again.from_cache and again.path == built.path and again.path.read_text() == "module\n"
    assert build_module(source, _kernel(), cache).from_cache
    assert [p.name for p in (cache / "kmod" / "modules").iterdir()] == [built.path.parent.name]


@needs_make
def test_the_cache_keeps_the_most_recently_used(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _fake_headers(cache, "modules:\n\techo module > $(M)/devmodels_testdev.ko\n")
    entries = cache / "kmod" / "modules"
    first = build_module(source, _kernel(), cache).path.parent
    for n in range(_kmod.KEEP_MODULES):
        os.utime(first, (1000 + n, 1000 + n))  # idle for long, and older than every later one
        (source / "version.h").write_text(f"#define V {n}\n")
        build_module(source, _kernel(), cache)
    assert len(list(entries.iterdir())) == _kmod.KEEP_MODULES
    assert not first.exists()
