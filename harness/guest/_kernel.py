"""Where the guest kernel and its modules come from.

Rules:

1. Either a Debian ``linux-image-*-amd64`` package, resolved through the metapackage
   (``linux-image-amd64`` depends on the real ``linux-image-6.1.0-NN-amd64``), downloaded
   with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the cache; or a bzImage
   and modules directory the user names.
2. A ``KernelSource`` carries an ``identity`` string that changes whenever the kernel or
   its modules may have changed: the package name and version, or for user files the
   kernel's SHA-256 and the (path, size, mtime) of every module file. Image cache keys are
   built from it, so resolving it must stay cheap; unpacking happens only in ``materialize``.
3. The cache is written by unpacking into a private temporary directory and renaming it into
   place, so concurrent builds never see half an unpacked package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devmodels import HostError, UsageError
from ._modules import MODULE_SUFFIXES, bzimage_version, find_version_dir
from ._tools import require_tool, run_tool

__all__ = ["METAPACKAGE", "KernelSource", "debian_kernel", "user_kernel"]

METAPACKAGE = "linux-image-amd64"
_REAL_PACKAGE = re.compile(r"^linux-image-\d[\w.+-]*-amd64$")
_APT_LISTS = Path("/var/lib/apt/lists")
_NO_LISTS_HINT = "apt has no package lists for it; run `apt-get update` first"


@dataclass(frozen=True)
class KernelSource:
    """A kernel and the module tree that belongs to it.

    Attributes:
        version: the kernel release (``uname -r``), e.g. ``6.1.0-56-amd64``.
        identity: a string that changes whenever the kernel or modules may change.
        package: ``NAME=VERSION`` of the Debian package, or None for user files.
        kernel: the bzImage (for a package: valid only after ``materialize``).
        modules_dir: the ``lib/modules/VERSION`` directory (same caveat).
    """

    version: str
    identity: str
    package: str | None
    kernel: Path
    modules_dir: Path
    _cache_dir: Path | None = field(default=None, repr=False, compare=False)

    def materialize(self, on_step: Callable[[str], None] | None = None) -> KernelSource:
        """Return a source whose ``kernel`` and ``modules_dir`` exist, downloading and
        unpacking the package into the cache if needed.

        ``on_step`` is called with a short label before each slow step.

        Raises:
            HostError: apt-get/dpkg-deb are missing or fail.
            UsageError: user-given files have disappeared.
        """
        if self.kernel.is_file() and self.modules_dir.is_dir():
            return self
        if self.package is None or self._cache_dir is None:
            raise UsageError(f"kernel files {self.kernel} / {self.modules_dir} are missing")
        name, version = self.package.split("=", 1)
        pkg_dir = _download_and_unpack(name, version, self._cache_dir, on_step)
        stamp = _read_stamp(pkg_dir)
        if stamp is None:
            raise HostError(f"unpacked kernel package in {pkg_dir} has no stamp")
        return _source_from_stamp(self._cache_dir, pkg_dir, stamp)


def _apt_cache(*args: str) -> str:
    apt_cache = require_tool("apt-cache")
    return run_tool([apt_cache, *args], what="querying apt")


def _lists_signature() -> str | None:
    try:
        entries = sorted(os.scandir(_APT_LISTS), key=lambda e: e.name)
        return hashlib.sha256("".join(
            f"{e.name}\0{e.stat().st_size}\0{e.stat().st_mtime_ns}\n" for e in entries if e.is_file()
        ).encode()).hexdigest()
    except OSError:
        return None


def _resolve_package_memo(cache_dir: Path, package: str | None) -> tuple[str, str]:
    """``_resolve_package``, remembered until apt's package lists change.

    apt-cache takes about half a second a call here; a cache hit should not pay that.
    """
    memo_file = cache_dir / "kernel" / "resolved.json"
    signature = _lists_signature()
    query = package or METAPACKAGE
    memo: dict[str, object] = {}
    if signature is not None:
        try:
            loaded = json.loads(memo_file.read_text())
            if isinstance(loaded, dict) and loaded.get("lists") == signature:
                memo = loaded
        except (OSError, ValueError):
            pass
        hit = memo.get(query)
        if isinstance(hit, list) and len(hit) == 2:
            return str(hit[0]), str(hit[1])
    name, version = _resolve_package(package)
    if signature is not None:
        memo.update({"lists": signature, query: [name, version]})
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_file.with_name(f".resolved.{os.getpid()}.json")
            tmp.write_text(json.dumps(memo, indent=1) + "\n")
            tmp.replace(memo_file)
        except OSError:
            pass  # the memo is only an optimisation
    return name, version


def _resolve_package(package: str | None) -> tuple[str, str]:
    """(real package name, candidate version) for ``package`` or the metapackage."""
    if package is None:
        try:
            depends = _apt_cache("depends", "--important", METAPACKAGE)
        except HostError as exc:
            raise HostError(f"cannot resolve {METAPACKAGE}: {exc}; {_NO_LISTS_HINT}") from exc
        names = [w.split(":", 1)[1].strip() for w in depends.splitlines() if w.strip().startswith("Depends:")]
        real = [n for n in names if _REAL_PACKAGE.match(n)]
        if not real:
            raise HostError(f"{METAPACKAGE} depends on no linux-image-*-amd64 package ({_NO_LISTS_HINT})")
        package = real[0]
    try:
        show = _apt_cache("show", "--no-all-versions", package)
    except HostError as exc:
        raise HostError(f"cannot find package {package}: {exc}; {_NO_LISTS_HINT}") from exc
    versions = [line.split(":", 1)[1].strip() for line in show.splitlines() if line.startswith("Version:")]
    if not versions:
        raise HostError(f"package {package} has no candidate version; {_NO_LISTS_HINT}")
    return package, versions[0]


def _package_dir(cache_dir: Path, name: str, version: str) -> Path:
    return cache_dir / "kernel" / f"{name}_{version.replace(':', '%3a')}"


def _read_stamp(pkg_dir: Path) -> dict[str, str] | None:
    try:
        data = json.loads((pkg_dir / "unpacked.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cached_packages(cache_dir: Path) -> list[tuple[float, Path, dict[str, str]]]:
    base = cache_dir / "kernel"
    found = []
    if base.is_dir():
        for pkg_dir in base.iterdir():
            stamp = _read_stamp(pkg_dir)
            if stamp is not None:
                found.append(((pkg_dir / "unpacked.json").stat().st_mtime, pkg_dir, stamp))
    return sorted(found, key=lambda item: item[0])


def _source_from_stamp(cache_dir: Path, pkg_dir: Path, stamp: dict[str, str]) -> KernelSource:
    release = stamp["release"]
    return KernelSource(release, f"deb:{stamp['package']}={stamp['version']}", f"{stamp['package']}={stamp['version']}",
                        pkg_dir / "root" / "boot" / f"vmlinuz-{release}",
                        pkg_dir / "root" / "lib" / "modules" / release, cache_dir)


def debian_kernel(cache_dir: Path, package: str | None = None) -> KernelSource:
    """The Debian kernel package to use, resolved through apt (nothing downloaded yet).

    If apt cannot answer (no package lists) but a kernel package was unpacked into the cache
    before, the most recently unpacked one is used.

    Raises:
        HostError: apt knows no such package and nothing is cached.
    """
    try:
        name, version = _resolve_package_memo(cache_dir, package)
    except HostError:
        cached = [c for c in _cached_packages(cache_dir) if package is None or c[2]["package"] == package]
        if not cached:
            raise
        _, newest_dir, newest = cached[-1]
        return _source_from_stamp(cache_dir, newest_dir, newest)
    pkg_dir = _package_dir(cache_dir, name, version)
    stamp = _read_stamp(pkg_dir)
    if stamp is not None:
        return _source_from_stamp(cache_dir, pkg_dir, stamp)
    # The release is known only after unpacking; until then kernel/modules_dir are placeholders
    # that materialize() replaces by unpacking into pkg_dir.
    return KernelSource("", f"deb:{name}={version}", f"{name}={version}", pkg_dir / "missing",
                        pkg_dir / "missing", cache_dir)


def _download_and_unpack(name: str, version: str, cache_dir: Path,
                         on_step: Callable[[str], None] | None) -> Path:
    apt_get = require_tool("apt-get")
    dpkg_deb = require_tool("dpkg-deb")
    pkg_dir = _package_dir(cache_dir, name, version)
    pkg_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=pkg_dir.parent))
    try:
        if on_step is not None:
            on_step(f"downloading {name} {version}")
        # apt-get download writes into its working directory.
        try:
            run_tool([apt_get, "download", f"{name}={version}"], cwd=work, what=f"downloading {name}")
        except HostError as exc:
            raise HostError(f"{exc}\n(if apt reports no candidate or cannot locate the package: "
                            f"{_NO_LISTS_HINT})") from exc
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise HostError(f"apt-get download {name} left {len(debs)} .deb files")
        if on_step is not None:
            on_step(f"unpacking {debs[0].name}")
        run_tool([dpkg_deb, "-x", debs[0], work / "root"], what="unpacking the kernel package")
        debs[0].unlink()
        modules_base = work / "root" / "lib" / "modules"
        releases = sorted(p.name for p in modules_base.iterdir()) if modules_base.is_dir() else []
        if len(releases) != 1 or not (work / "root" / "boot" / f"vmlinuz-{releases[0]}").is_file():
            raise HostError(f"{name} {version} does not hold one boot/vmlinuz-* and lib/modules/* tree")
        stamp = {"package": name, "version": version, "release": releases[0]}
        (work / "unpacked.json").write_text(json.dumps(stamp, indent=1) + "\n")
        try:
            work.rename(pkg_dir)
        except OSError:
            if _read_stamp(pkg_dir) is None:  # not a concurrent builder's finished copy
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return pkg_dir


def _tree_signature(modules_dir: Path) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(modules_dir, followlinks=True):
        dirnames.sort()
        for fname in sorted(filenames):
            if fname.endswith(MODULE_SUFFIXES) or fname.startswith("modules.builtin"):
                st = os.stat(os.path.join(dirpath, fname))
                rel = os.path.relpath(os.path.join(dirpath, fname), modules_dir)
                digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def user_kernel(kernel: Path, modules: Path, version: str | None = None) -> KernelSource:
    """A kernel bzImage and modules tree given by the user.

    The release is ``version``, else read from the bzImage header, else the only version
    directory under ``modules``.

    Raises:
        UsageError: the kernel file or a matching modules tree is missing.
    """
    if not kernel.is_file():
        raise UsageError(f"kernel {kernel} is not a file")
    if not modules.is_dir():
        raise UsageError(f"modules directory {modules} is not a directory")
    release = version or bzimage_version(kernel)
    try:
        modules_dir = find_version_dir(modules, release)
    except UsageError:
        if version is not None or release is None:
            raise
        modules_dir = find_version_dir(modules, None)  # header release may differ from the dir name
    release = release or modules_dir.name
    with kernel.open("rb") as f:
        kernel_hash = hashlib.file_digest(f, "sha256").hexdigest()
    identity = f"file:{kernel_hash}:{release}:{_tree_signature(modules_dir)}"
    return KernelSource(release, identity, None, kernel, modules_dir)
