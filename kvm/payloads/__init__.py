"""Device-test payloads: freestanding C programs that drive our devices as a minimal driver.

Each payload is one C file here (``testdev.c``, ``e1000.c``, ...) built with the runtime
(``start.S``, ``rt.c``, ``rt.h``) and the linker script ``payload.ld`` into a static
ELF at 1 MiB. ``build`` compiles one with the host's gcc; the VMM loads it with the ELF
loader and enters it in long mode (``kvm._boot``).

Rules:

1. Build flags keep the payload freestanding and free of instructions a software
   hypervisor may not emulate (``rt.h`` rule 1): ``-ffreestanding -nostdlib -static``,
   ``-mgeneral-regs-only`` (no SSE/x87), no red zone (interrupt frames land on the stack),
   no stack protector, no PIE, no CET.
2. ``build`` writes into the directory it is given and returns the ELF's path. A missing
   compiler or a failing build is a ``HostError`` carrying the compiler's output.
3. ``defines`` become ``-D`` options (a variant of one source, such as the virtio-blk
   transport), so each variant is its own ELF.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from devmodels import HostError, UsageError

__all__ = ["PAYLOADS", "SOURCE_DIR", "CFLAGS", "build", "compiler_missing"]

SOURCE_DIR = Path(__file__).resolve().parent
PAYLOADS = ("testdev", "e1000", "virtio_blk", "ahci", "exits", "testdev_ops")
CFLAGS = (
    "-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-nostdlib", "-static", "-no-pie", "-fno-pic",
    "-mgeneral-regs-only", "-mno-red-zone", "-fno-stack-protector", "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables", "-fno-builtin", "-march=x86-64", "-mcmodel=small",
    "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,--no-warn-rwx-segments",
)


def compiler_missing(cc: str = "gcc") -> str | None:
    """Why payloads cannot be built here, or ``None``."""
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}) to build the KVM payloads"
    return None


def build(name: str, directory: str | Path, *, defines: Sequence[str] = (), cc: str = "gcc") -> Path:
    """Compile payload ``name`` (rule 2) with ``defines`` (rule 3); return the ELF's path.

    Raises:
        UsageError: no such payload.
        HostError: no compiler, or the build failed.
    """
    if name not in PAYLOADS:
        raise UsageError(f"unknown payload {name!r}; known: {', '.join(PAYLOADS)}")
    reason = compiler_missing(cc)
    if reason is not None:
        raise HostError(reason)
    suffix = "".join(f"-{d.split('=')[0].lower()}" for d in defines)
    out = Path(directory) / f"{name}{suffix}.elf"
    command = [cc, *CFLAGS, *(f"-D{d}" for d in defines), f"-I{SOURCE_DIR}", "-T", str(SOURCE_DIR / "payload.ld"),
               "-o", str(out), str(SOURCE_DIR / "start.S"), str(SOURCE_DIR / "rt.c"), str(SOURCE_DIR / f"{name}.c")]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HostError(f"building payload {name} failed ({' '.join(command)}):\n{proc.stderr.strip()}")
    return out
