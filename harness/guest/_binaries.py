"""Host ELF programs copied into a guest image together with their shared libraries.

Rules:

1. The library closure is what the host's dynamic loader resolves, read from ``ldd``: every
   ``name => /path`` line and the interpreter line. Each file is stored in the guest under
   the path ``ldd`` printed (the loader and Debian's multiarch search path look there), with
   the contents of the file that path resolves to on the host.
2. ``ldd`` may run the program's loader, so only trusted host binaries belong here.
3. A library ``ldd`` reports as ``not found`` is a ``HostError``: the guest would fail later
   with a less clear message.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from devmodels import HostError, UsageError
from ._tools import require_tool

__all__ = ["ELF_MAGIC", "is_elf", "parse_ldd", "ldd_closure"]

ELF_MAGIC = b"\x7fELF"

_ARROW = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)")
_BARE = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-fA-F]+\)")


def is_elf(path: Path) -> bool:
    """True when ``path`` is a readable file starting with the ELF magic."""
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def parse_ldd(output: str) -> list[str]:
    """Library paths from ``ldd`` output, in the order printed, without duplicates.

    The vDSO (no path) is skipped.

    Raises:
        HostError: a library is ``not found``.
    """
    paths: list[str] = []
    missing: list[str] = []
    for line in output.splitlines():
        arrow = _ARROW.match(line)
        if arrow is not None:
            soname, target = arrow.groups()
            if target == "not":  # "libfoo.so => not found"
                missing.append(soname)
            elif target.startswith("/"):
                paths.append(target)
            continue
        bare = _BARE.match(line)
        if bare is not None:
            paths.append(bare.group(1))
    if missing:
        raise HostError(f"shared libraries not found on the host: {', '.join(missing)}")
    return list(dict.fromkeys(paths))


def ldd_closure(binary: Path) -> list[str]:
    """Host paths of the shared libraries and loader ``binary`` needs (empty if static).

    Raises:
        UsageError: ``binary`` is not an ELF file.
        HostError: ``ldd`` is missing or a library cannot be found.
    """
    if not is_elf(binary):
        raise UsageError(f"{binary} is not an ELF program")
    ldd = require_tool("ldd")
    proc = subprocess.run([ldd, str(binary)], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    text = proc.stdout + proc.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if proc.returncode != 0:
        raise HostError(f"`ldd {binary}` exited with {proc.returncode}: {text.strip()}")
    return parse_ldd(proc.stdout)
