"""Out-of-tree kernel modules for the guest, built on the host against the guest kernel's headers.

Rules:

1. The headers come from Debian, as the kernel does (``_kernel`` rule 1): for the kernel
   package ``linux-image-R`` at version ``V``, ``linux-headers-R=V`` and the header and
   kbuild packages it depends on (``linux-headers-ABI-common``, ``linux-kbuild-X.Y``) are
   fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into one root
   (``CACHE/kmod/headers/R_V``), where the packages' relative ``scripts``/``tools``
   symlinks meet. The flavour tree's ``Makefile`` includes the common tree by an absolute
   ``/usr/src`` path; it is rewritten to a relative one, so the tree works wherever the
   cache lives. A tree appears atomically (unpacked under a temporary name, then renamed).
2. The build is kbuild's own, ``make -C HEADERS M=WORK modules``, with the compiler the
   kernel was built with: the headers' ``.kernelvariables`` name it (``gcc-12`` for
   Debian 12's 6.1 kernels). Source paths are mapped to the module's name and header paths
   to their ``/usr/src`` place, so the object carries neither the temporary build directory
   nor the cache's location.
3. A built module is cached by content: a SHA-256 over the format, the kernel's identity
   (package and version) and every source file's name and bytes. Equal keys mean the same
   sources for the same kernel, so a hit returns at once, with no apt, no make. Entries
   appear atomically, a hit marks its entry used, and storing one prunes the least
   recently used beyond ``KEEP_MODULES`` (``_prune`` rules 2-3, by the entry's mtime).
4. Every failure is a ``HostError`` that says what failed and what to do: apt cannot
   download the headers (no network, no package lists), the compiler or make is missing,
   the compiler's own error lines. A kernel not from a Debian package is a ``UsageError``:
   there are no headers to fetch for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devmodels import HostError, UsageError
from ._kernel import KernelSource
from ._prune import prune_images
from ._tools import require_tool, run_tool

__all__ = [
    "KMOD_SOURCES",
    "TESTDEV_MODULE_SOURCE",
    "KEEP_MODULES",
    "BuiltModule",
    "module_name",
    "kmod_cache_key",
    "header_packages",
    "headers_tree",
    "build_module",
]

KMOD_SOURCES = Path(__file__).resolve().parent / "kmod"
"""Where our modules' sources live, one directory (a ``Kbuild`` and C files) each."""

TESTDEV_MODULE_SOURCE = KMOD_SOURCES / "testdev"
"""The driver for the devmodels PCI test device (``devmodels_testdev.ko``)."""

KEEP_MODULES = 8
FORMAT_VERSION = 1
MANIFEST = "module.json"
HEADERS_STAMP = "headers.json"
_SOURCE_SUFFIXES = (".c", ".h")
_SOURCE_NAMES = ("Kbuild", "Makefile")
_OBJ_M = re.compile(r"^\s*obj-m\s*[:+]?=\s*(.*)$", re.MULTILINE)
_IMAGE_PACKAGE = re.compile(r"^linux-image-(?P<release>\d[\w.+-]*)$")
_DEPENDENCY = re.compile(r"^(?P<name>linux-(?:headers|kbuild)-[\w.+-]+)\s*(?:\((?P<op>[<>=]+)\s*(?P<version>[^)\s]+)\))?$")
_COMPILER = re.compile(r"^\s*CC\s*:?=.*?\b(?P<cc>gcc(?:-\d+)?)[ \t]*$", re.MULTILINE)
_ABSOLUTE_INCLUDE = re.compile(r"^include[ \t]+/usr/src/(?P<tree>[^/\s]+)/Makefile[ \t]*$", re.MULTILINE)
_BUILD_TIMEOUT = 600.0
_ERROR_LINES = 6
_NO_APT_HINT = ("apt-get could not fetch them: this needs the network and apt's package lists "
                "(`apt-get update`; .ci/install does both)")


@dataclass(frozen=True)
class BuiltModule:
    """A ``.ko`` in the cache.

    Attributes:
        path: the module file.
        name: its name (``insmod``/``rmmod``, ``/proc/modules``).
        release: the kernel release it was built for (its ``vermagic``).
        cache_key: the key it is stored under (rule 3).
        from_cache: True when this call found it already built.
    """

    path: Path
    name: str
    release: str
    cache_key: str
    from_cache: bool = False


def module_name(source_dir: Path) -> str:
    """The one module the ``Kbuild`` file in ``source_dir`` builds (``obj-m := NAME.o``).

    Raises:
        UsageError: no ``Kbuild`` file, or it does not name exactly one module.
    """
    try:
        kbuild = (source_dir / "Kbuild").read_text()
    except OSError as exc:
        raise UsageError(f"{source_dir} has no readable Kbuild file: {exc}") from exc
    objects = [word for line in _OBJ_M.findall(kbuild) for word in line.split()]
    if len(objects) != 1 or not objects[0].endswith(".o"):
        raise UsageError(f"{source_dir}/Kbuild must name one module (obj-m := NAME.o), found {objects}")
    return objects[0][:-2]


def _source_files(source_dir: Path) -> list[Path]:
    files = sorted(p for p in source_dir.iterdir()
                   if p.is_file() and (p.suffix in _SOURCE_SUFFIXES or p.name in _SOURCE_NAMES))
    if not files:
        raise UsageError(f"{source_dir} holds no module sources (Kbuild, *.c, *.h)")
    return files


def kmod_cache_key(source_dir: Path, kernel_identity: str) -> str:
    """The SHA-256 (hex) naming the module built from ``source_dir`` for the kernel whose
    ``KernelSource.identity`` is ``kernel_identity`` (rule 3).

    Raises:
        UsageError: ``source_dir`` holds no sources.
    """
    digest = hashlib.sha256()

    def feed(tag: str, value: bytes) -> None:
        digest.update(f"{tag}\0{len(value)}\0".encode() + value + b"\n")

    feed("format", str(FORMAT_VERSION).encode())
    feed("kernel", kernel_identity.encode())
    for path in _source_files(source_dir):
        feed("file:" + path.name, path.read_bytes())
    return digest.hexdigest()


def _debian_package(kernel: KernelSource) -> tuple[str, str, str]:
    """(release, image package, version) of a Debian kernel (rule 4: else UsageError)."""
    if kernel.package is None:
        raise UsageError("building a kernel module needs the guest kernel's Debian headers packages; "
                         f"this kernel is not from a Debian package ({kernel.identity[:60]})")
    name, _, version = kernel.package.partition("=")
    match = _IMAGE_PACKAGE.match(name)
    if match is None or not version:
        raise UsageError(f"kernel package {kernel.package!r} is not linux-image-RELEASE=VERSION")
    return match["release"], name, version


def header_packages(headers_package: str, version: str, depends: str) -> list[str]:
    """``NAME=VERSION`` of the headers package and the header/kbuild packages in its
    ``depends`` field (rule 1); ``>=`` dependencies are taken at ``version`` (one source
    package builds them all).

    Raises:
        HostError: the field names no ``linux-headers-*-common`` or ``linux-kbuild-*``.
    """
    wanted = [f"{headers_package}={version}"]
    for clause in depends.split(","):
        match = _DEPENDENCY.match(clause.split("|")[0].strip())
        if match is None:
            continue
        pinned = match["version"] if match["op"] == "=" else version
        wanted.append(f"{match['name']}={pinned}")
    names = [w.split("=", 1)[0] for w in wanted]
    if not any(n.startswith("linux-kbuild-") for n in names) or not any(n.endswith(("-common", "-common-rt"))
                                                                     for n in names[1:]):
        raise HostError(f"{headers_package} {version} depends on no linux-headers-*-common and "
                        f"linux-kbuild-* packages (Depends: {depends.strip() or 'nothing'})")
    return wanted


def _depends_of(package: str, version: str) -> str:
    apt_cache = require_tool("apt-cache")
    try:
        show = run_tool([apt_cache, "show", f"{package}={version}"], what=f"looking up {package}")
    except HostError as exc:
        raise HostError(f"cannot find {package} {version} for the guest kernel's headers: {exc}; "
                        "apt has no package lists for it (run `apt-get update`)") from exc
    for line in show.splitlines():
        if line.startswith("Depends:"):
            return line.split(":", 1)[1]
    return ""


def _headers_dir(cache_dir: Path, release: str, version: str) -> Path:
    return cache_dir / "kmod" / "headers" / f"{release}_{version.replace(':', '%3a')}"


def _build_tree(root: Path, release: str) -> Path:
    return root / "usr" / "src" / f"linux-headers-{release}"


def headers_tree(kernel: KernelSource, cache_dir: Path, on_step: Callable[[str], None] | None = None) -> Path:
    """The kbuild tree (``.../usr/src/linux-headers-R``) for ``kernel``, fetched and unpacked
    into the cache unless it is there (rule 1).

    Raises:
        UsageError: ``kernel`` is not a Debian package.
        HostError: the packages cannot be found, downloaded or unpacked.
    """
    release, _, version = _debian_package(kernel)
    target = _headers_dir(cache_dir, release, version)
    if (target / HEADERS_STAMP).is_file():
        return _build_tree(target / "root", release)
    headers = f"linux-headers-{release}"
    wanted = header_packages(headers, version, _depends_of(headers, version))
    apt_get = require_tool("apt-get")
    dpkg_deb = require_tool("dpkg-deb")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        if on_step is not None:
            on_step(f"downloading {', '.join(wanted)}")
        try:
            run_tool([apt_get, "download", *wanted], cwd=work, what="downloading the guest kernel's headers")
        except HostError as exc:
            raise HostError(f"cannot fetch the guest kernel's headers ({', '.join(wanted)}): {_NO_APT_HINT}.\n"
                            f"{exc}") from exc
        debs = sorted(work.glob("*.deb"))
        if len(debs) != len(wanted):
            raise HostError(f"apt-get download of {len(wanted)} header packages left {len(debs)} .deb files")
        if on_step is not None:
            on_step("unpacking the headers")
        for deb in debs:
            run_tool([dpkg_deb, "-x", deb, work / "root"], what=f"unpacking {deb.name}")
            deb.unlink()
        _relocate(_build_tree(work / "root", release))
        stamp = {"packages": wanted, "release": release}
        (work / HEADERS_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        try:
            work.rename(target)
        except OSError:
            if not (target / HEADERS_STAMP).is_file():  # not a concurrent builder's finished copy
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return _build_tree(target / "root", release)


def _relocate(tree: Path) -> None:
    """Rule 1: the flavour Makefile's ``include /usr/src/T/Makefile`` becomes ``../T/Makefile``
    (make runs in ``tree``: ``make -C``)."""
    makefile = tree / "Makefile"
    try:
        text = makefile.read_text()
    except OSError as exc:
        raise HostError(f"the headers packages hold no {tree.name}/Makefile: {exc}") from exc
    fixed = _ABSOLUTE_INCLUDE.sub(lambda m: f"include ../{m['tree']}/Makefile", text)
    if "include ../" not in fixed:
        raise HostError(f"{makefile} includes no common headers tree: {text.strip()[:200]}")
    makefile.write_text(fixed)


def _compiler(tree: Path) -> str:
    """Rule 2: the compiler named in the headers' ``.kernelvariables`` (else ``gcc``)."""
    try:
        match = _COMPILER.search((tree / ".kernelvariables").read_text())
    except OSError:
        match = None
    return match["cc"] if match else "gcc"


def _entry_dir(cache_dir: Path) -> Path:
    return cache_dir / "kmod" / "modules"


def _load(entry: Path, key: str, name: str) -> BuiltModule | None:
    try:
        meta = json.loads((entry / MANIFEST).read_text())
        if meta["format"] != FORMAT_VERSION or meta["cache_key"] != key or not (entry / f"{name}.ko").is_file():
            return None
        return BuiltModule(entry / f"{name}.ko", name, str(meta["release"]), key, from_cache=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_module(
    source_dir: Path,
    kernel: KernelSource,
    cache_dir: Path,
    on_step: Callable[[str], None] | None = None,
) -> BuiltModule:
    """The module built from ``source_dir`` for ``kernel``, from the cache or built now.

    Args:
        source_dir: a ``Kbuild`` naming one module and its C sources.
        kernel: the guest kernel (``ImageBuilder.kernel_source()``).
        cache_dir: the guest cache (``ImageBuilder.cache_dir``).
        on_step: called with a short label before each slow step.

    Raises:
        UsageError: the sources are malformed, or ``kernel`` is not a Debian package.
        HostError: the headers cannot be fetched, a tool is missing, or the build fails.
    """
    name = module_name(source_dir)
    key = kmod_cache_key(source_dir, kernel.identity)
    entries = _entry_dir(cache_dir)
    entry = entries / key[:32]
    cached = _load(entry, key, name)
    if cached is not None:
        try:
            os.utime(entry)  # rule 3: marks the use
        except OSError:
            pass
        return cached
    release = _debian_package(kernel)[0]
    tree = headers_tree(kernel, cache_dir, on_step)
    make = require_tool("make")
    compiler = _compiler(tree)
    require_tool(compiler)
    entries.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=entries))
    try:
        src = work / "src"
        src.mkdir()
        for path in _source_files(source_dir):
            shutil.copyfile(path, src / path.name)
        if on_step is not None:
            on_step(f"building {name}.ko for {release}")
        root = tree.parents[2]  # the unpacked packages' /
        kcflags = f"-ffile-prefix-map={src}={name} -ffile-prefix-map={root}/=/"
        _run_make([make, "-C", str(tree), f"M={src}", f"KCFLAGS={kcflags}", "modules"], name)
        built = src / f"{name}.ko"
        if not built.is_file():
            raise HostError(f"building {name}.ko: make succeeded but left no {built.name}")
        built.rename(work / built.name)
        shutil.rmtree(src)
        meta = {"format": FORMAT_VERSION, "cache_key": key, "name": name, "release": release,
                "kernel": kernel.identity, "compiler": compiler}
        (work / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")
        try:
            work.rename(entry)
        except OSError:
            if _load(entry, key, name) is None:  # damaged, not a concurrent build of the same key
                _discard(entry)
                work.rename(entry)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    prune_images(entries, keep=KEEP_MODULES)
    return BuiltModule(entry / f"{name}.ko", name, release, key)


def _discard(entry: Path) -> None:
    """Move a damaged entry out of the way (atomically, as ``_prune`` rule 3), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=entry.parent))
    try:
        os.rename(entry, trash / entry.name)
    except FileNotFoundError:
        pass  # another process discarded it first
    shutil.rmtree(trash, ignore_errors=True)


def _run_make(argv: list[str], name: str) -> None:
    """Rule 4: a failed build is a HostError carrying the compiler's error lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("ARCH", "CROSS_COMPILE", "KBUILD_OUTPUT", "O", "CC")}
    env["LC_ALL"] = "C"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                              env=env, timeout=_BUILD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"building {name}.ko: {exc}") from exc
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()][:_ERROR_LINES] or lines[-_ERROR_LINES:]
        raise HostError(f"building {name}.ko failed (`{' '.join(argv)}` exited with {proc.returncode}):\n"
                        + "\n".join(errors))
