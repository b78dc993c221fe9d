"""Build script: pure-Python package plus optional Cython extensions (msgpack ``setup.py``).

An extension is any module that has a ``.pxd`` beside its ``.py`` (Cython pure-Python mode,
aiohttp ``reader_c.pxd``) or a ``.pyx``. They are skipped, and the pure-Python reference is
used, when Cython or a compiler is missing, on PyPy, or when ``DEVMODELS_NO_EXTENSIONS`` is
set; a failed build still installs a working package.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PACKAGES_WITH_EXTENSIONS = ("devmodels", "virtio", "passthrough")


def _extension_sources() -> list[tuple[str, str]]:
    found = []
    for package in PACKAGES_WITH_EXTENSIONS:
        for pxd in sorted((ROOT / package).rglob("*.pxd")):
            for suffix in (".pyx", ".py"):
                source = pxd.with_suffix(suffix)
                if source.exists():
                    module = ".".join(source.relative_to(ROOT).with_suffix("").parts)
                    found.append((module, str(source.relative_to(ROOT))))
                    break
    return found


def _extensions() -> list:
    if os.environ.get("DEVMODELS_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        print("devmodels: Cython not found, installing the pure-Python paths only", file=sys.stderr)
        return []
    modules = [Extension(name, [source], extra_compile_args=["-O3"]) for name, source in _extension_sources()]
    return cythonize(modules, compiler_directives={"language_level": "3"}, quiet=True) if modules else []


class OptionalBuildExt(build_ext):
    """Never fail the install because an extension did not build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "pure Python"
            print(f"devmodels: extensions not built ({exc}); using pure Python", file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"devmodels: extension {ext.name} not built ({exc}); using pure Python", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
