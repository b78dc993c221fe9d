"""What a conformance case is: one Linux driver against one device over one attachment path.

Rules:

1. A case names its row (``driver``, ``device``, ``path``), carries the guest test script
   (busybox sh using the ``/init`` helpers ``check``/``report``, see ``harness.guest``),
   and knows how to start its host side (``start``): the device server, backing files,
   responders. What ``start`` opens it registers on the ``ExitStack`` it is given, so the
   runner always tears it down, whatever happens in the guest.
2. ``start`` returns an ``Attachment``: the QEMU arguments, fds QEMU must inherit, whether
   guest RAM must be a shared memfd, kernel command-line words, and which QEMU runs the
   guest (7.2 unless the path needs 11.1).
3. After the guest powers off, ``host_checks`` adds checks only the host can make (the
   data is in the image file, the responder saw the frames). Guest and host checks together
   decide the row.
4. ``image_extras`` may add files to the guest image (fio, an ISO); every case's extras go
   into the one image the run builds, so they must not clash. A case that needs a very
   different image (a Python interpreter inside) defines ``own_image()`` instead.
5. A case declares ``required_checks``: every guest and host check it must report. A check
   that a guest script skips (fio missing from the image, a step it never reached) must not
   vanish from the row: the runner fails the row and names each required check that was
   not reported. A case that declares none fails too.
6. A case that acts while its guest runs (kills and restarts its device server, migrates
   the guest to a second QEMU) defines ``run_guest(launcher, timeout)`` (the runner's rule
   5): it waits for the guest itself and returns the ``BootResult`` the row is scored on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..qemu.binaries import QEMU_7_2, QemuBinary

if TYPE_CHECKING:
    from ..guest import ImageBuilder
    from ..qemu.launcher import BootResult

__all__ = ["Attachment", "Case", "Row"]


@dataclass
class Attachment:
    """How a case's devices join the QEMU command line (rule 2)."""

    qemu_args: list[str] = field(default_factory=list)
    pass_fds: list[int] = field(default_factory=list)
    shared_memory: bool = False
    append: list[str] = field(default_factory=list)
    memory_mb: int = 512
    qemu: QemuBinary = QEMU_7_2


class Case(Protocol):
    """One row of the conformance matrix (rule 1)."""

    driver: str
    device: str
    path: str
    guest_script: str

    @property
    def required_checks(self) -> frozenset[str]:
        """Every check the row must report, guest and host (rule 5)."""
        ...

    @property
    def name(self) -> str:
        """Unique id, also the embedded test's name (letters, digits, ``_.-``)."""
        ...

    def image_extras(self, builder: ImageBuilder) -> None:
        """Add files this case needs to the guest image (rule 4)."""
        ...

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """Start the host side (rule 1) and say how QEMU attaches it (rule 2)."""
        ...

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """Checks made on the host after the guest exits (rule 3)."""
        ...


@dataclass
class Row:
    """One result row."""

    driver: str
    device: str
    path: str
    passed: bool
    checks: dict[str, bool]
    details: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def as_json(self) -> dict[str, object]:
        """The ``--json`` form: at least driver, device, path, passed, checks."""
        return {
            "driver": self.driver,
            "device": self.device,
            "path": self.path,
            "passed": self.passed,
            "checks": dict(self.checks),
            "details": dict(self.details),
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }
