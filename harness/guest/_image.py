"""Building (or finding in the cache) a guest kernel + initramfs pair.

Rules:

1. An image is named by its cache key: a SHA-256 over everything that decides its bytes (the
   builder's format version, the kernel identity, the module names, ``/init``, the embedded
   test scripts, busybox and every extra file's path, mode and contents). Equal keys mean
   equal images, so a build whose key is in the cache returns at once.
2. The archive is deterministic (see ``_cpio``): gzip with mtime 0 and no file name, the same
   tree for the same inputs.
3. A finished image directory appears atomically (written under a temporary name, then
   renamed), and holds ``vmlinuz``, ``initramfs.cpio.gz`` and ``image.json``.
4. Everything slow (download, unpack, depmod, compress) happens only on a cache miss.
5. The cache stays bounded: a hit marks its image used, and storing a new one prunes the
   least recently used beyond ``keep_images`` (``_prune`` has the rules that make this
   safe beside other processes using the cache).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import string
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from devmodels import HostError, UsageError
from ._binaries import ldd_closure
from ._cpio import FileTree
from ._init import BUILTIN_TESTS, MODULE_LIST, TEST_SCRIPT, TESTS_DIR, render_init
from ._kernel import KernelSource, debian_kernel, user_kernel
from ._modules import ModuleClosure, ModuleIndex, read_module, strip_compression
from ._progress import Progress
from ._prune import KEEP_IMAGES, mark_used, prune_images
from ._tools import require_tool

__all__ = [
    "DEFAULT_MODULES",
    "DEFAULT_OPTIONAL_MODULES",
    "GuestImage",
    "ImageBuilder",
    "build_image",
    "default_cache_dir",
    "assemble_tree",
    "ExtraFile",
]

DEFAULT_MODULES: tuple[str, ...] = (
    "e1000",
    "ahci", "libahci", "sd_mod",
    "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net",
    "vfio", "vfio_pci", "vfio_iommu_type1",
)
"""Modules every image loads by default (with their dependencies); missing ones are an error."""

DEFAULT_OPTIONAL_MODULES: tuple[str, ...] = ("sr_mod", "cdrom", "af_packet")
"""Modules loaded when the kernel has them as modules; built-in or absent ones are skipped."""

FORMAT_VERSION = 1
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initramfs.cpio.gz"
MANIFEST_FILE = "image.json"
_BASE_DIRS = ("/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", "/mnt", "/var", "/lib", "/usr/bin", "/usr/sbin")
_GZIP_LEVEL = 6
_TEST_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")


def default_cache_dir() -> Path:
    """``$DEVMODELS_CACHE/guest``, else ``$XDG_CACHE_HOME/devmodels/guest``, else
    ``~/.cache/devmodels/guest``."""
    env = os.environ.get("DEVMODELS_CACHE")
    if env:
        return Path(env) / "guest"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "devmodels" / "guest"


@dataclass(frozen=True)
class GuestImage:
    """A bootable kernel + initramfs pair in the cache.

    Attributes:
        kernel: the bzImage.
        initrd: the gzip-compressed newc initramfs.
        kernel_version: the kernel release (``uname -r`` in the guest).
        package: ``NAME=VERSION`` of the Debian kernel package, or None for user files.
        modules: the module names ``/init`` loads, in load order.
        tests: names of the embedded tests (``devmodels.test=NAME``).
        has_test_script: whether ``/test.sh`` (the default test) is embedded.
        cache_key: the key the image is stored under.
        from_cache: True when this call found the image already built.
    """

    kernel: Path
    initrd: Path
    kernel_version: str
    package: str | None
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    has_test_script: bool
    cache_key: str
    from_cache: bool = False

    @classmethod
    def load(cls, image_dir: Path) -> GuestImage | None:
        """The image stored in ``image_dir``, or None if it is absent or incomplete."""
        kernel, initrd = image_dir / KERNEL_FILE, image_dir / INITRD_FILE
        try:
            meta = json.loads((image_dir / MANIFEST_FILE).read_text())
            if meta["format"] != FORMAT_VERSION or not (kernel.is_file() and initrd.is_file()):
                return None
            return cls(kernel, initrd, meta["kernel_version"], meta["package"], tuple(meta["modules"]),
                       tuple(meta["tests"]), bool(meta["has_test_script"]), meta["cache_key"], from_cache=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, half-written by an older builder, or damaged: build again


@dataclass(frozen=True)
class ExtraFile:
    """An extra image member: ``data`` (bytes or a host file) with ``mode``, or a symlink to
    ``link`` when ``data`` is None."""

    data: bytes | Path | None
    mode: int
    link: str = ""


def _file_hash(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def assemble_tree(
    *,
    version: str,
    modules_dir: Path,
    closure: ModuleClosure,
    busybox: Path,
    applets: Iterable[str],
    init: str,
    tests: Mapping[str, str],
    test_script: str | None,
    extras: Mapping[str, ExtraFile] | None = None,
) -> FileTree:
    """Lay out the initramfs: base directories, ``/dev/console``, busybox and its applet
    links, the modules in ``/lib/modules/VERSION`` with the load list, ``/init``, the tests
    and the extra files (which win over anything else at the same path).

    ``applets`` are busybox applet paths relative to ``/`` (``busybox --list-full``).
    """
    tree = FileTree()
    for d in _BASE_DIRS:
        tree.add_dir(d)
    # The kernel opens /dev/console for /init's stdio before devtmpfs is mounted.
    tree.add_device("/dev/console", "c", 5, 1)
    tree.add_file("/bin/busybox", busybox, 0o755)
    for applet in applets:
        guest = "/" + applet.strip("/")
        if guest != "/bin/busybox" and guest not in ("/init", "/linuxrc"):
            tree.add_symlink(guest, "/bin/busybox")
    load_list = []
    for rel in closure.files:
        guest = f"/lib/modules/{version}/{strip_compression(rel)}"
        source = modules_dir / rel
        tree.add_file(guest, source if strip_compression(rel) == rel else read_module(source))
        load_list.append(guest)
    tree.add_file(MODULE_LIST, "".join(line + "\n" for line in load_list).encode())
    tree.add_file("/init", init.encode(), 0o755)
    for name, text in tests.items():
        tree.add_file(f"{TESTS_DIR}/{name}.sh", text.encode(), 0o755)
    if test_script is not None:
        tree.add_file(TEST_SCRIPT, test_script.encode(), 0o755)
    for path, extra in (extras or {}).items():
        if extra.data is None:
            tree.add_symlink(path, extra.link)
        else:
            tree.add_file(path, extra.data, extra.mode)
    return tree


class ImageBuilder:
    """Collects what goes into a guest image, then builds it (or finds it in the cache).

    Args:
        kernel: a bzImage to use instead of the Debian package (needs ``modules_dir``).
        modules_dir: the modules tree belonging to ``kernel`` (a root holding
            ``lib/modules/VERSION``, a ``lib/modules`` directory or a version directory).
        kernel_version: the release, when it cannot be read from ``kernel``.
        kernel_package: a Debian package to use instead of what ``linux-image-amd64`` pulls in.
        modules: module names to load (with dependencies); each must exist.
        optional_modules: module names to load when present.
        cache_dir: defaults to ``default_cache_dir()``.
        busybox: a statically linked busybox (default: ``busybox`` on PATH).
        keep_images: images kept when a new one is stored (rule 5); ``None`` never prunes.

    Raises:
        UsageError: ``kernel`` without ``modules_dir`` or the reverse.
    """

    def __init__(
        self,
        *,
        kernel: Path | None = None,
        modules_dir: Path | None = None,
        kernel_version: str | None = None,
        kernel_package: str | None = None,
        modules: Iterable[str] = DEFAULT_MODULES,
        optional_modules: Iterable[str] = DEFAULT_OPTIONAL_MODULES,
        cache_dir: Path | None = None,
        busybox: Path | None = None,
        keep_images: int | None = KEEP_IMAGES,
    ) -> None:
        if (kernel is None) != (modules_dir is None):
            raise UsageError("give both kernel and modules_dir, or neither")
        if keep_images is not None and (not isinstance(keep_images, int) or keep_images < 0):
            raise UsageError(f"keep_images must be a non-negative integer or None, got {keep_images!r}")
        self.keep_images = keep_images
        self._kernel_args = (kernel, modules_dir, kernel_version, kernel_package)
        self.modules = tuple(modules)
        self.optional_modules = tuple(optional_modules)
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self._busybox = busybox
        self._tests: dict[str, str] = dict(BUILTIN_TESTS)
        self._test_script: str | None = None
        self._extras: dict[str, ExtraFile] = {}
        self._source: KernelSource | None = None

    # --- contents -------------------------------------------------------------------------

    def set_test_script(self, text: str) -> None:
        """Embed ``text`` as ``/test.sh``, the test run when the command line names none."""
        self._test_script = text

    def add_test(self, name: str, text: str) -> None:
        """Embed a test script selectable with ``devmodels.test=NAME``.

        Raises:
            UsageError: ``name`` is empty or has characters other than letters, digits, ``_.-``.
        """
        if not name or not set(name) <= _TEST_NAME_CHARS:
            raise UsageError(f"test name {name!r}: use letters, digits, '_', '.', '-'")
        self._tests[name] = text

    def add_file(self, guest_path: str, data: bytes | str | Path, mode: int = 0o644) -> None:
        """Add a file: ``bytes`` or ``str`` (UTF-8) contents, or a host ``Path`` to copy."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        if isinstance(data, Path) and not data.is_file():
            raise UsageError(f"{data} is not a file")
        self._extras[str(PurePosixPath("/") / guest_path)] = ExtraFile(data, mode)

    def add_symlink(self, guest_path: str, target: str) -> None:
        """Add a symbolic link."""
        self._extras[str(PurePosixPath("/") / guest_path)] = ExtraFile(None, 0o777, target)

    def add_tree(self, host_dir: Path, guest_dir: str) -> None:
        """Copy a host directory tree (files and symlinks, modes kept) under ``guest_dir``."""
        if not host_dir.is_dir():
            raise UsageError(f"{host_dir} is not a directory")
        for dirpath, dirnames, filenames in os.walk(host_dir):
            dirnames.sort()
            base = PurePosixPath(guest_dir) / Path(dirpath).relative_to(host_dir).as_posix()
            for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
                host = Path(dirpath, name)
                if host.is_symlink():
                    self.add_symlink(str(base / name), os.readlink(host))
                elif host.is_file():
                    self.add_file(str(base / name), host, stat.S_IMODE(host.stat().st_mode))

    def add_binary_with_libs(self, path: Path, guest_path: str | None = None) -> list[str]:
        """Add an ELF program and the shared libraries and loader it needs (its ``ldd``
        closure); the program goes to ``guest_path`` (default: its host path).

        Returns:
            the guest paths added, program first.

        Raises:
            UsageError: ``path`` is not an ELF file.
            HostError: ``ldd`` is missing or a library cannot be found.
        """
        path = Path(path)
        target = guest_path or str(path.absolute())
        self.add_file(target, path.resolve(), 0o755)
        added = [target]
        for lib in ldd_closure(path):
            host = Path(lib).resolve()
            self.add_file(lib, host, stat.S_IMODE(host.stat().st_mode) | 0o444)
            added.append(lib)
        return added

    # --- building -------------------------------------------------------------------------

    def kernel_source(self) -> KernelSource:
        """Where the kernel comes from (resolved once; asks apt for the package version)."""
        if self._source is None:
            kernel, modules_dir, version, package = self._kernel_args
            if kernel is not None and modules_dir is not None:
                self._source = user_kernel(kernel, modules_dir, version)
            else:
                self._source = debian_kernel(self.cache_dir, package)
        return self._source

    def busybox(self) -> Path:
        """The busybox binary to embed.

        Raises:
            HostError: none is installed, or it is dynamically linked.
        """
        path = self._busybox or Path(require_tool("busybox"))
        if ldd_closure(path):
            raise HostError(f"{path} is dynamically linked; install the busybox-static package")
        return path

    def cache_key(self) -> str:
        """The SHA-256 (hex) naming the image these inputs produce."""
        digest = hashlib.sha256()

        def feed(tag: str, value: str) -> None:
            digest.update(f"{tag}\0{len(value)}\0{value}\n".encode())

        feed("format", str(FORMAT_VERSION))
        feed("kernel", self.kernel_source().identity)
        feed("modules", json.dumps(self.modules))
        feed("optional", json.dumps(self.optional_modules))
        feed("init", render_init())
        feed("busybox", _file_hash(self.busybox()))
        for name in sorted(self._tests):
            feed("test:" + name, self._tests[name])
        feed("test.sh", "" if self._test_script is None else "1" + self._test_script)
        for path in sorted(self._extras):
            extra = self._extras[path]
            if extra.data is None:
                content = "link:" + extra.link
            elif isinstance(extra.data, Path):
                content = _file_hash(extra.data)
            else:
                content = hashlib.sha256(extra.data).hexdigest()
            feed("file:" + path, f"{extra.mode:o}:{content}")
        return digest.hexdigest()

    def build(self, progress: Progress | bool | None = None) -> GuestImage:
        """Return the image for these inputs, building it unless the cache has it.

        Args:
            progress: a ``Progress``, or True/False to force drawing on stderr or not;
                None draws when stderr is a terminal.

        Raises:
            HostError: a host tool is missing or fails (the message names the package).
            UsageError: a required module does not exist, or bad inputs.
        """
        bar = progress if isinstance(progress, Progress) else Progress(7, enabled=progress)
        bar.step("resolving kernel")
        key = self.cache_key()
        image_dir = self.cache_dir / "images" / key[:32]
        cached = GuestImage.load(image_dir)
        if cached is not None:
            mark_used(image_dir)
            bar.finish(f"cached image {key[:12]}")
            return cached
        source = self.kernel_source().materialize(bar.step)
        bar.step(f"resolving modules of {source.version}")
        index = ModuleIndex.from_tree(source.modules_dir, source.version)
        closure = index.closure(self.modules, self.optional_modules)
        busybox = self.busybox()
        bar.step("assembling initramfs")
        tree = assemble_tree(
            version=source.version, modules_dir=source.modules_dir, closure=closure, busybox=busybox,
            applets=_busybox_applets(busybox), init=render_init(), tests=self._tests,
            test_script=self._test_script, extras=self._extras,
        )
        image_dir.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=image_dir.parent))
        try:
            bar.step("compressing initramfs")
            with (work / INITRD_FILE).open("wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_GZIP_LEVEL) as gz:
                tree.write(gz)  # type: ignore[arg-type]  # GzipFile is a binary file object
            shutil.copyfile(source.kernel, work / KERNEL_FILE)
            image = GuestImage(image_dir / KERNEL_FILE, image_dir / INITRD_FILE, source.version, source.package,
                               closure.names, tuple(sorted(self._tests)), self._test_script is not None, key)
            meta = {
                "format": FORMAT_VERSION, "cache_key": key, "kernel_version": image.kernel_version,
                "package": image.package, "modules": list(image.modules), "tests": list(image.tests),
                "has_test_script": image.has_test_script, "builtin_modules": list(closure.builtin),
                "missing_optional_modules": list(closure.missing_optional),
            }
            (work / MANIFEST_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            try:
                work.rename(image_dir)
            except OSError:
                if GuestImage.load(image_dir) is None:  # not a concurrent build of the same key
                    raise
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        size = image.initrd.stat().st_size // 1024
        pruned = prune_images(image_dir.parent, keep=self.keep_images) if self.keep_images is not None else []
        note = f", pruned {len(pruned)} unused" if pruned else ""
        bar.finish(f"built image {key[:12]} ({size} KiB initramfs{note})")
        return image


def _busybox_applets(busybox: Path) -> list[str]:
    proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HostError(f"`{busybox} --list-full` failed: {proc.stderr.strip()}; install busybox-static")
    return sorted(line.strip() for line in proc.stdout.splitlines() if line.strip())


def build_image(
    *,
    script: str | None = None,
    tests: Mapping[str, str] | None = None,
    extra_files: Mapping[str, bytes | str | Path] | None = None,
    binaries: Iterable[Path] = (),
    kernel: Path | None = None,
    modules_dir: Path | None = None,
    kernel_version: str | None = None,
    kernel_package: str | None = None,
    modules: Iterable[str] = DEFAULT_MODULES,
    optional_modules: Iterable[str] = DEFAULT_OPTIONAL_MODULES,
    cache_dir: Path | None = None,
    progress: Progress | bool | None = None,
) -> GuestImage:
    """Build (or fetch from the cache) a guest image in one call.

    Args:
        script: embedded as ``/test.sh``, the default test.
        tests: name -> script, selectable with ``devmodels.test=NAME``.
        extra_files: guest path -> contents (``bytes``, ``str``) or host file (``Path``).
        binaries: host ELF programs added with their shared libraries.
        The other arguments are those of ``ImageBuilder`` and ``ImageBuilder.build``.

    Raises:
        HostError, UsageError: as ``ImageBuilder.build``.
    """
    builder = ImageBuilder(kernel=kernel, modules_dir=modules_dir, kernel_version=kernel_version,
                           kernel_package=kernel_package, modules=modules, optional_modules=optional_modules,
                           cache_dir=cache_dir)
    if script is not None:
        builder.set_test_script(script)
    for name, text in (tests or {}).items():
        builder.add_test(name, text)
    for path, data in (extra_files or {}).items():
        builder.add_file(path, data, 0o755 if isinstance(data, Path) and os.access(data, os.X_OK) else 0o644)
    for binary in binaries:
        builder.add_binary_with_libs(Path(binary))
    return builder.build(progress)
