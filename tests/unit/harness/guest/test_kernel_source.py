from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devmodels import HostError, UsageError
from harness.guest import _kernel
from harness.guest._kernel import debian_kernel, user_kernel
from tests.prerequisites import prerequisite

PKG = "linux-image-9.9.9-1-amd64"
PKG_VERSION = "9.9.9-3"
RELEASE = "9.9.9-1-amd64"

needs_dpkg = prerequisite(None if shutil.which("dpkg-deb") else "dpkg-deb not installed")


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """apt-cache / apt-get stand-ins on PATH serving a tiny kernel .deb built with dpkg-deb."""
    pkg_root = tmp_path / "pkgroot"
    (pkg_root / "DEBIAN").mkdir(parents=True)
    (pkg_root / "DEBIAN" / "control").write_text(
        f"Package: {PKG}\nVersion: {PKG_VERSION}\nArchitecture: amd64\nMaintainer: t <t@example.org>\n"
        "Description: test kernel\n")
    (pkg_root / "boot").mkdir()
    (pkg_root / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"kernel")
    (pkg_root / "lib" / "modules" / RELEASE / "kernel").mkdir(parents=True)
    (pkg_root / "lib" / "modules" / RELEASE / "kernel" / "x.ko").write_bytes(b"x")
    deb = tmp_path / "k.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg_root), str(deb)], check=True,
                   capture_output=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    _write_exe(bindir / "apt-cache", f"""#!/bin/sh
echo "apt-cache $*" >> {calls}
case "$1" in
  depends) printf 'linux-image-amd64\\n  Depends: {PKG}\\n' ;;
  show) printf 'Package: {PKG}\\nVersion: {PKG_VERSION}\\n' ;;
esac
""")
    _write_exe(bindir / "apt-get", f"""#!/bin/sh
echo "apt-get $*" >> {calls}
cp {deb} ./{PKG}_{PKG_VERSION}_amd64.deb
""")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(_kernel, "_APT_LISTS", tmp_path / "lists")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "Packages").write_text("v1")
    return calls


@needs_dpkg
def test_download_and_unpack_through_apt(fake_apt: Path, tmp_path: Path) -> None:
    source = debian_kernel(tmp_path / "cache")
    assert source.package == f"{PKG}={PKG_VERSION}" and source.identity == f"deb:{PKG}={PKG_VERSION}"
    ready = source.materialize()
    assert ready.version == RELEASE
    assert ready.kernel.read_bytes() == b"kernel"
    assert (ready.modules_dir / "kernel" / "x.ko").is_file()
    assert "apt-get download" in fake_apt.read_text()
    assert not list((tmp_path / "cache" / "kernel").glob(".unpack-*"))  # no leftovers
    assert not list((tmp_path / "cache" / "kernel").rglob("*.deb"))

    # Second time: resolution is remembered while apt's lists are unchanged; nothing is downloaded.
    fake_apt.write_text("")
    again = debian_kernel(tmp_path / "cache")
    assert again.version == RELEASE and again.kernel == ready.kernel
    assert fake_apt.read_text() == ""
    (tmp_path / "lists" / "Packages").write_text("v2-longer")
    debian_kernel(tmp_path / "cache")
    assert "apt-cache depends" in fake_apt.read_text()


def test_no_package_lists_says_to_run_apt_get_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: str) -> str:
        raise HostError("`apt-cache depends` exited with 100: E: No packages found")

    monkeypatch.setattr(_kernel, "_apt_cache", failing)
    monkeypatch.setattr(_kernel, "_APT_LISTS", tmp_path / "nolists")
    with pytest.raises(HostError, match="apt-get update"):
        debian_kernel(tmp_path / "cache")


@needs_dpkg
def test_falls_back_to_a_cached_package_when_apt_cannot_answer(fake_apt: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    debian_kernel(tmp_path / "cache").materialize()

    def failing(*args: str) -> str:
        raise HostError("no lists")

    monkeypatch.setattr(_kernel, "_apt_cache", failing)
    monkeypatch.setattr(_kernel, "_APT_LISTS", tmp_path / "gone")
    source = debian_kernel(tmp_path / "cache")
    assert source.version == RELEASE and source.kernel.is_file()


def test_metapackage_without_a_real_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kernel, "_apt_cache", lambda *a: "linux-image-amd64\n  Depends: something-else\n")
    monkeypatch.setattr(_kernel, "_APT_LISTS", tmp_path / "nolists")
    with pytest.raises(HostError, match="linux-image"):
        debian_kernel(tmp_path / "cache")


def test_user_kernel_identity_follows_the_files(tmp_path: Path) -> None:
    kernel = tmp_path / "bz"
    kernel.write_bytes(b"k1")
    vdir = tmp_path / "m" / "6.1.0-9-amd64"
    (vdir / "kernel").mkdir(parents=True)
    (vdir / "kernel" / "a.ko").write_bytes(b"a")
    first = user_kernel(kernel, tmp_path / "m")
    assert first.version == "6.1.0-9-amd64" and first.package is None and first.modules_dir == vdir
    assert user_kernel(kernel, tmp_path / "m").identity == first.identity
    (vdir / "kernel" / "a.ko").write_bytes(b"a-changed")
    second = user_kernel(kernel, tmp_path / "m")
    assert second.identity != first.identity
    kernel.write_bytes(b"k2")
    assert user_kernel(kernel, tmp_path / "m").identity != second.identity
    assert user_kernel(kernel, vdir, "6.1.0-9-amd64").version == "6.1.0-9-amd64"


def test_user_kernel_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        user_kernel(tmp_path / "nope", tmp_path)
    (tmp_path / "bz").write_bytes(b"k")
    with pytest.raises(UsageError):
        user_kernel(tmp_path / "bz", tmp_path / "nomods")
