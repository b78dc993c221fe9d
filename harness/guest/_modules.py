"""Kernel modules: which files a set of module names needs, and in what order to load them.

Rules:

1. The dependency data comes from ``depmod -n -b ROOT VERSION`` (text on stdout), so a
   module tree is never written to: a kernel package unpacked in the cache and a directory
   the user passed with ``--modules`` are read the same way.
2. The order is what ``modprobe`` would do, so the guest can load with plain ``insmod``:
   ``softdep pre:`` modules, then the hard dependencies, then the module, then
   ``softdep post:`` modules; each file appears once, at its first (earliest) position.
   ``modprobe --show-depends`` prints the same order but with repeats and needs the binary
   indexes; the integration tests compare the two on the real kernel.
3. Soft dependencies may name an alias (``softdep crc_t10dif pre: crct10dif``); an alias
   resolves to every module that declares a matching ``alias`` line, as in modprobe.
   A soft dependency that resolves to nothing is skipped (modprobe does the same).
"""

from __future__ import annotations

import fnmatch
import gzip
import lzma
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from devmodels import HostError, UsageError
from ._tools import require_tool, run_tool

__all__ = [
    "MODULE_SUFFIXES",
    "ModuleIndex",
    "ModuleClosure",
    "module_name",
    "strip_compression",
    "read_module",
    "bzimage_version",
    "find_version_dir",
]

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str:
    """The module name of a ``.ko[.xz|.zst|.gz]`` path (dashes become underscores)."""
    base = PurePosixPath(path).name
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def strip_compression(path: str) -> str:
    """``a/b.ko.xz`` -> ``a/b.ko``: the name a decompressed module is stored under."""
    for suffix in (".xz", ".zst", ".gz"):
        if path.endswith(".ko" + suffix):
            return path[: -len(suffix)]
    return path


@dataclass(frozen=True)
class ModuleClosure:
    """The result of resolving module names.

    Attributes:
        files: module paths relative to ``lib/modules/VERSION``, in load order.
        builtin: requested names that are built into the kernel (nothing to load).
        missing_optional: optional names that the kernel has neither as module nor built in.
    """

    files: tuple[str, ...]
    builtin: tuple[str, ...] = ()
    missing_optional: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Module names of ``files``, in load order."""
        return tuple(module_name(f) for f in self.files)


@dataclass
class ModuleIndex:
    """Parsed depmod data for one kernel version.

    Attributes:
        deps: module name -> (path, hard dependency paths as depmod lists them).
        softdeps: module name -> (pre names, post names).
        aliases: (pattern, module name) pairs from ``alias`` lines.
        builtin: names of built-in modules.
    """

    deps: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    softdeps: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    aliases: list[tuple[str, str]] = field(default_factory=list)
    builtin: frozenset[str] = frozenset()
    _exact: dict[str, list[str]] | None = field(default=None, repr=False, compare=False)
    _wild: list[tuple[str, str, str]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, depmod_text: str, builtin_text: str = "") -> ModuleIndex:
        """Build an index from ``depmod -n`` output (or a ``modules.dep`` plus
        ``modules.softdep``/``modules.alias`` concatenated) and ``modules.builtin``."""
        index = cls()
        for raw in depmod_text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            words = line.split()
            if words[0] == "alias" and len(words) >= 3:
                index.aliases.append((words[1], words[2].replace("-", "_")))
            elif words[0] == "softdep" and len(words) >= 2:
                index._add_softdep(words[1], words[2:])
            elif words[0].endswith(":") and words[0].endswith(tuple(s + ":" for s in MODULE_SUFFIXES)):
                path = words[0][:-1]
                index.deps[module_name(path)] = (path, tuple(words[1:]))
            # Other sections of depmod -n (device nodes, symbol aliases) are not needed.
        index.builtin = frozenset(module_name(w) for w in builtin_text.split())
        return index

    def _add_softdep(self, module: str, words: list[str]) -> None:
        # "softdep MOD pre: A B post: C". Words before any "pre:"/"post:" (depmod prints
        # "softdep cifs gcm" for some modules) are ignored, as kmod's config parser does.
        key = module.replace("-", "_")
        pre, post = self.softdeps.get(key, ((), ()))
        lists: dict[str, list[str]] = {"pre": list(pre), "post": list(post)}
        target: str | None = None
        for word in words:
            if word in ("pre:", "post:"):
                target = word[:-1]
            elif target is not None:
                lists[target].append(word)
        self.softdeps[key] = (tuple(lists["pre"]), tuple(lists["post"]))

    @classmethod
    def from_tree(cls, modules_dir: Path, version: str) -> ModuleIndex:
        """Run ``depmod -n`` on a ``lib/modules/VERSION`` directory and parse its output and
        ``modules.builtin``.

        depmod wants ``ROOT/lib/modules/VERSION``; a directory laid out otherwise is reached
        through a symlink in a temporary root.

        Raises:
            HostError: depmod is missing or fails.
        """
        depmod = require_tool("depmod")
        builtin = modules_dir / "modules.builtin"
        builtin_text = builtin.read_text() if builtin.is_file() else ""
        if modules_dir.name == version and modules_dir.parent.name == "modules" \
                and modules_dir.parent.parent.name == "lib":
            root = modules_dir.parent.parent.parent
            text = run_tool([depmod, "-n", "-b", root, version], what="computing module dependencies")
            return cls.parse(text, builtin_text)
        with tempfile.TemporaryDirectory(prefix="devmodels-depmod-") as tmp:
            staged = Path(tmp) / "lib" / "modules"
            staged.mkdir(parents=True)
            (staged / version).symlink_to(modules_dir.resolve())
            text = run_tool([depmod, "-n", "-b", tmp, version], what="computing module dependencies")
        return cls.parse(text, builtin_text)

    def resolve(self, name: str) -> list[str]:
        """Module names that ``name`` stands for: itself, or the modules of matching aliases.

        Returns an empty list for a built-in module or an unknown name.
        """
        norm = name.replace("-", "_")
        if norm in self.deps:
            return [norm]
        if norm in self.builtin:
            return []
        if self._exact is None:
            self._index_aliases()
        assert self._exact is not None and self._wild is not None  # set by _index_aliases
        found = [m for m in self._exact.get(name, ()) if m in self.deps]
        for prefix, pattern, module in self._wild:
            if name.startswith(prefix) and module in self.deps and module not in found \
                    and fnmatch.fnmatchcase(name, pattern):
                found.append(module)
        return found

    def _index_aliases(self) -> None:
        # Most alias patterns are PCI/USB/CPU ID globs; matching a name against only those
        # whose literal prefix it starts with keeps resolution cheap (26k aliases in 6.1).
        exact: dict[str, list[str]] = {}
        wild: list[tuple[str, str, str]] = []
        for pattern, module in self.aliases:
            cut = min((i for i in (pattern.find(c) for c in "*?[") if i >= 0), default=-1)
            if cut < 0:
                exact.setdefault(pattern, []).append(module)
            else:
                wild.append((pattern[:cut], pattern, module))
        self._exact, self._wild = exact, wild

    def closure(self, names: Iterable[str], optional: Iterable[str] = ()) -> ModuleClosure:
        """Resolve ``names`` (required) and ``optional`` names into a load-ordered file list.

        Raises:
            UsageError: a required name is neither a module, an alias nor built in.
        """
        order: list[str] = []
        active: set[str] = set()
        builtin: list[str] = []
        missing: list[str] = []

        def visit(module: str) -> None:
            # A name already placed, or on the current path (a softdep cycle), is skipped:
            # its first position is earlier, so every later user still finds it loaded.
            if module in active or module in order:
                return
            active.add(module)
            pre, post = self.softdeps.get(module, ((), ()))
            for soft in pre:
                for target in self.resolve(soft):
                    visit(target)
            # depmod lists the whole transitive closure, last-to-load first.
            for dep in reversed(self.deps[module][1]):
                dep_name = module_name(dep)
                if dep_name in self.deps:
                    visit(dep_name)
            active.discard(module)
            order.append(module)
            for soft in post:
                for target in self.resolve(soft):
                    visit(target)

        for wanted, required in [(n, True) for n in names] + [(n, False) for n in optional]:
            norm = wanted.replace("-", "_")
            targets = self.resolve(wanted)
            if targets:
                for target in targets:
                    visit(target)
            elif norm in self.builtin:
                if norm not in builtin:
                    builtin.append(norm)
            elif required:
                raise UsageError(f"kernel module {wanted!r} is neither a module nor built in")
            elif norm not in missing:
                missing.append(norm)
        return ModuleClosure(tuple(self.deps[m][0] for m in order), tuple(builtin), tuple(missing))


def read_module(path: Path) -> bytes:
    """Return a module's ELF bytes, decompressing ``.xz``/``.gz``/``.zst`` files.

    Busybox ``insmod`` passes the file to ``init_module`` as is, so compressed modules are
    unpacked here. (Debian 12's 6.1 kernels ship uncompressed ``.ko`` files.)

    Raises:
        HostError: a ``.zst`` module and no ``zstd`` program, or a corrupt file.
    """
    name = path.name
    try:
        if name.endswith(".xz"):
            return lzma.decompress(path.read_bytes())
        if name.endswith(".gz"):
            return gzip.decompress(path.read_bytes())
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise HostError(f"cannot decompress {path}: {exc}") from exc
    if name.endswith(".zst"):
        zstd = require_tool("zstd")
        proc = subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise HostError(f"cannot decompress {path}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    return path.read_bytes()


def bzimage_version(kernel: Path) -> str | None:
    """The release string (``6.1.0-56-amd64``) in a bzImage's setup header, if present.

    Boot protocol (Linux ``Documentation/arch/x86/boot.rst``): ``HdrS`` at 0x202 and, from
    protocol 2.00 on, a pointer to the version string less 0x200 at 0x20E.
    """
    try:
        with kernel.open("rb") as f:
            head = f.read(0x10000)
    except OSError:
        return None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    (offset,) = struct.unpack_from("<H", head, 0x20E)
    start = 0x200 + offset
    if offset == 0 or start >= len(head):
        return None
    text = head[start:start + 256].split(b"\0", 1)[0].decode("ascii", errors="replace")
    words = text.split()
    return words[0] if words else None


def find_version_dir(modules: Path, version: str | None) -> Path:
    """Locate the ``lib/modules/VERSION`` directory in a user-given modules path.

    ``modules`` may be a root holding ``lib/modules/VERSION``, a ``lib/modules`` directory,
    or a version directory itself (one holding ``kernel/`` or ``modules.order``).

    Raises:
        UsageError: no version directory, or several and ``version`` names none of them.
    """
    def is_version_dir(p: Path) -> bool:
        return (p / "kernel").is_dir() or (p / "modules.order").is_file()

    if is_version_dir(modules):
        return modules
    for base in (modules / "lib" / "modules", modules):
        if not base.is_dir():
            continue
        found = sorted(p for p in base.iterdir() if p.is_dir() and is_version_dir(p))
        if version is not None:
            found = [p for p in found if p.name == version]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise UsageError(f"{modules} holds several kernel versions ({names}); name one")
    raise UsageError(f"no lib/modules/<version> tree for {version or 'the kernel'} under {modules}")
