"""Which QEMU runs a guest: Debian 12's 7.2 on the host, or 11.1 in a chroot of ours.

Rules:

1. A ``QemuBinary`` is how to start one QEMU: the argv prefix that runs
   ``qemu-system-x86_64``, and its version label. ``QEMU_7_2`` is the host's (Debian 12;
   ``x-pci-proxy-dev`` and vhost-user rows). ``QEMU_11_1`` is Debian trixie-backports' 11.1
   in the chroot ``.ci/install-qemu11`` provisions (its ``vfio-user-pci`` client).
2. The 11.1 binary runs through ``chroot`` inside a private mount namespace (``unshare
   --mount --propagation private``), with /dev, /proc, /sys, /tmp and the devmodels cache
   folder bind-mounted at their own paths, so the kernel, images and sockets a test made
   there are seen at the same paths. ``unshare`` and ``chroot`` exec in place: the QEMU
   keeps the PID its launcher started, and the descriptors it inherits.
3. ``unavailable()`` is None when the binary can run, else the reason (for a skip); it
   runs ``--version`` once per binary and remembers the answer (``version()``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devmodels import UsageError

__all__ = ["QemuBinary", "QEMU_7_2", "QEMU_11_1", "qemu11_root", "qemu_binary", "cache_root"]


def cache_root() -> Path:
    """The devmodels cache folder: ``$DEVMODELS_CACHE``, else ``$XDG_CACHE_HOME/devmodels``,
    else ``~/.cache/devmodels``."""
    env = os.environ.get("DEVMODELS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "devmodels"


def qemu11_root() -> Path:
    """Where ``.ci/install-qemu11`` puts the QEMU 11.1 chroot (``$DEVMODELS_QEMU11_ROOT``)."""
    env = os.environ.get("DEVMODELS_QEMU11_ROOT")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "devmodels" / "qemu-11.1"


# Rule 2: bind the host's folders into the chroot, then exec QEMU by its absolute path.
# $1 is the chroot; DEVMODELS_BINDS holds more folders, one per line; "$@" is QEMU's argv.
_CHROOT_SCRIPT = r"""
root=$1; shift
IFS='
'
for dir in /dev /proc /sys /tmp $DEVMODELS_BINDS; do
  [ -d "$dir" ] || continue
  mkdir -p "$root$dir" && mount --rbind "$dir" "$root$dir" || exit 125
done
exec chroot "$root" /usr/bin/qemu-system-x86_64 "$@"
"""


@dataclass(frozen=True)
class QemuBinary:
    """One QEMU to run (rule 1).

    Attributes:
        label: the version this binary is expected to be (``"7.2"``, ``"11.1"``).
        chroot: the chroot it runs in, or None for the host's own binary.
    """

    label: str
    chroot: Path | None = None

    def argv(self, args: list[str], binds: tuple[Path, ...] = ()) -> list[str]:
        """The command line that runs this QEMU with ``args`` (rule 2 for a chroot).

        ``binds`` are more host folders the chroot must see at their own paths.
        """
        if self.chroot is None:
            return ["qemu-system-x86_64", *args]
        binds_text = "\n".join(str(p) for p in (cache_root(), *binds))
        return ["unshare", "--mount", "--propagation", "private", "env", f"DEVMODELS_BINDS={binds_text}",
                "sh", "-c", _CHROOT_SCRIPT, "sh", str(self.chroot), *args]

    def unavailable(self) -> str | None:
        """None when this QEMU runs here, else why not (rule 3)."""
        return _probe(self)[1]

    def version(self) -> str:
        """The version QEMU reports (``"11.1.3"``), or ``"?"`` when it does not run."""
        return _probe(self)[0]


@functools.cache
def _probe(binary: QemuBinary) -> tuple[str, str | None]:
    if binary.chroot is None:
        if shutil.which("qemu-system-x86_64") is None:
            return "?", "qemu-system-x86_64 not found: install it with `apt-get install qemu-system-x86`"
    else:
        if not (binary.chroot / "usr/bin/qemu-system-x86_64").exists():
            return "?", f"QEMU {binary.label} is not provisioned: run `bash .ci/install-qemu11` (as root)"
        if os.geteuid() != 0:
            return "?", f"QEMU {binary.label} runs in a chroot, which needs root"
        for tool in ("unshare", "chroot"):
            if shutil.which(tool) is None:
                return "?", f"{tool} not found (util-linux / coreutils)"
    try:
        proc = subprocess.run(binary.argv(["--version"]), capture_output=True, text=True, timeout=60,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "?", f"QEMU {binary.label} does not run: {exc}"
    if proc.returncode != 0:
        return "?", f"QEMU {binary.label} --version exited with {proc.returncode}: {proc.stderr.strip()[-300:]}"
    words = proc.stdout.split()
    version = words[3] if len(words) > 3 and words[:3] == ["QEMU", "emulator", "version"] else "?"
    if not version.startswith(binary.label):
        return version, f"expected QEMU {binary.label}, found {version}"
    return version, None


QEMU_7_2 = QemuBinary("7.2")
QEMU_11_1 = QemuBinary("11.1", chroot=qemu11_root())


def qemu_binary(label: str) -> QemuBinary:
    """``QEMU_7_2`` or ``QEMU_11_1`` by label.

    Raises:
        UsageError: an unknown label.
    """
    for binary in (QEMU_7_2, QEMU_11_1):
        if binary.label == label:
            return binary
    raise UsageError(f"unknown QEMU {label!r}: use 7.2 or 11.1")
