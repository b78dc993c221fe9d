"""The guest program (``guest/*.c``): built on the host, listed on the host, put in the image.

Rules:

1. The program is C, linked statically by the host's gcc (Debian: ``gcc`` and
   ``libc6-dev``), so the busybox guest needs no libraries. A build is cached under the
   devmodels cache folder by a hash of the sources, the flags and ``gcc --version``, and
   appears atomically (written under a temporary name, then renamed).
2. The scenario table lives in the C sources, next to the code that runs each scenario;
   the host reads it by running the same static binary with ``CLASS --list`` (it touches no
   hardware then), so the host never keeps a second copy that could drift.
3. The guest image boots no driver modules at all: no driver ever binds the devices the
   program programs by hand. The program runs as the embedded test ``hostile``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devmodels import HostError

from ..qemu.binaries import cache_root

if TYPE_CHECKING:
    from ..guest import GuestImage

__all__ = ["SOURCE_DIR", "CFLAGS", "Scenario", "build_program", "list_scenarios", "list_classes", "guest_image",
           "GUEST_PATH", "TEST_NAME"]

SOURCE_DIR = Path(__file__).resolve().parent / "guest"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11")
GUEST_PATH = "/usr/bin/hostile"
TEST_NAME = "hostile"
TEST_SCRIPT = f'{GUEST_PATH} "$(cmdline_value hostile.class)"\n'


@dataclass(frozen=True)
class Scenario:
    """One row of a device class's scenario table (index 0 is the baseline)."""

    index: int
    name: str
    what: str


def _sources() -> list[Path]:
    return sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".c", ".h"))


def build_program(cache: Path | None = None) -> Path:
    """The static guest program, built unless the cache has it (rule 1).

    Raises:
        HostError: gcc is missing or the build fails (the message has gcc's error).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise HostError("gcc not found: install it with `apt-get install gcc libc6-dev` (the hostile guest program)")
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256()
    for part in (version, " ".join(CFLAGS)):
        digest.update(part.encode() + b"\0")
    sources = _sources()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    folder = (cache or cache_root()) / "hostile" / digest.hexdigest()[:24]
    program = folder / "hostile"
    if program.is_file():
        return program
    folder.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".hostile-", dir=folder)
    os.close(fd)
    try:
        c_files = [str(p) for p in sources if p.suffix == ".c"]
        proc = subprocess.run([gcc, *CFLAGS, "-I", str(SOURCE_DIR), "-o", temporary, *c_files],
                              capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            hint = " (install libc6-dev for static linking)" if "cannot find -lc" in proc.stderr else ""
            raise HostError(f"building the hostile guest program failed{hint}: {proc.stderr.strip()[-1500:]}")
        os.chmod(temporary, 0o755)
        os.replace(temporary, program)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return program


def _run(program: Path, *args: str) -> str:
    proc = subprocess.run([str(program), *args], capture_output=True, text=True, check=False, timeout=30,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise HostError(f"`{program} {' '.join(args)}` exited with {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def list_classes(program: Path) -> list[str]:
    """The device classes the program knows."""
    return _run(program, "--classes").split()


def list_scenarios(program: Path, device_class: str) -> list[Scenario]:
    """The scenario table of ``device_class`` (rule 2), baseline first.

    Raises:
        HostError: the program does not know the class.
    """
    table = []
    for line in _run(program, device_class, "--list").splitlines():
        marker, index, name, *what = line.split(" ", 3)
        if marker == "SCENARIO":
            table.append(Scenario(int(index), name, " ".join(what)))
    return table


def guest_image(program: Path) -> GuestImage:
    """The image: the Debian kernel, busybox, the program, no driver modules (rule 3)."""
    from ..guest import ImageBuilder

    builder = ImageBuilder(modules=(), optional_modules=())
    builder.add_test(TEST_NAME, TEST_SCRIPT)
    builder.add_file(GUEST_PATH, program, 0o755)
    return builder.build(progress=False)
