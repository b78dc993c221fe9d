"""Host programs the image builder runs, and how a missing one is reported.

Rules:

1. Every external program is looked up through ``require_tool``, which names the Debian
   package to install when it is missing; nothing else calls ``shutil.which``.
2. Every external program runs through ``run_tool``, which turns a failure into a
   ``HostError`` carrying the command and the tail of its stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from devmodels import HostError

__all__ = ["TOOL_PACKAGES", "require_tool", "run_tool"]

# program -> Debian package that ships it
TOOL_PACKAGES: dict[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "busybox": "busybox-static",
    "ldd": "libc-bin",
    "zstd": "zstd",
}

# depmod and modprobe live in /sbin, which is not on every user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/sbin")


def require_tool(name: str) -> str:
    """Return the absolute path of host program ``name``.

    Raises:
        HostError: the program is not installed; the message names the package.
    """
    path = os.environ.get("PATH", os.defpath)
    found = shutil.which(name, path=os.pathsep.join([path, *_EXTRA_DIRS]))
    if found is None:
        package = TOOL_PACKAGES.get(name, name)
        raise HostError(f"{name} not found: install it with `apt-get install {package}`")
    return found


def run_tool(argv: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None, what: str = "") -> str:
    """Run a host program to completion and return its stdout (text).

    Raises:
        HostError: it exited non-zero; the message holds the command and its stderr tail.
    """
    args = [os.fspath(a) for a in argv]
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise HostError(f"cannot run {args[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        label = f"{what}: " if what else ""
        raise HostError(f"{label}`{' '.join(args)}` exited with {proc.returncode}: {tail}")
    return proc.stdout
