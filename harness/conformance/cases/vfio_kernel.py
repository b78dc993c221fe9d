"""Conformance: kernel VFIO for real, inside a guest (issue 9's row).

This host has no IOMMU groups, so the row runs one level down: a QEMU TCG q35 guest with
an emulated Intel IOMMU (``intel_iommu=on``) binds QEMU's ``edu`` device to vfio-pci and
runs ``python3 -m passthrough.kernel.edu BDF`` — Debian's python3.11 and the library
closure of devmodels + passthrough are copied into the initramfs. Our ``VfioPciDevice``
opens the device through the container/group/device ioctls, maps a ``Machine``'s RAM
through the IOMMU and drives identification, factorial, DMA both ways, INTx and MSI on
eventfds, and checks the host-side error paths.

The case builds its own image (``own_image``): the Python closure is large and only this
row needs it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .._case import Attachment

if TYPE_CHECKING:
    from ...guest import GuestImage, ImageBuilder
    from ...qemu.launcher import BootResult

__all__ = ["cases", "VfioKernelCase", "GUEST_PYTHON", "EXPECTED_CHECKS"]

REPO = Path(__file__).resolve().parents[3]
GUEST_PYTHON = Path("/usr/bin/python3.11")
GUEST_ROOT = "/opt/devmodels"

GUEST_SCRIPT = f"""\
check iommu.groups sh -c 'ls /sys/kernel/iommu_groups/ | grep -q .'
set -- $(pci_driver 1234:11e8)
bdf=$1
echo vfio-pci > /sys/bus/pci/devices/$bdf/driver_override
echo $bdf > /sys/bus/pci/drivers_probe
check_pci_driver edu.vfio_pci 1234:11e8 vfio-pci
group=$(basename "$(readlink /sys/bus/pci/devices/$bdf/iommu_group)")
check vfio.group_node test -e /dev/vfio/$group
cd {GUEST_ROOT}
PYTHONPATH={GUEST_ROOT} PYTHONDONTWRITEBYTECODE=1 {GUEST_PYTHON} -S -m passthrough.kernel.edu $bdf
report python.exit $([ $? -eq 0 ] && echo PASS || echo FAIL)
"""

EXPECTED_CHECKS = frozenset({
    "iommu.groups", "edu.vfio_pci", "vfio.group_node", "vfio.open", "vfio.dma_map", "edu.id", "edu.liveness",
    "edu.factorial", "edu.dma", "edu.intx", "edu.intx_ack", "edu.msi_cap", "edu.msi_enable", "edu.msi",
    "edu.dma_msi", "vfio.host_errors", "python.exit",
})

# Imported in the guest; the host run with the guest's interpreter lists their files.
_CLOSURE_PROBE = """
import json, sys
import encodings.ascii, encodings.latin_1, encodings.utf_8, runpy
import passthrough, passthrough.kernel, passthrough.kernel.edu, devmodels
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
print(json.dumps(files))
"""

_COMPILE = """
import json, py_compile, sys
for source, target in json.load(sys.stdin):
    py_compile.compile(source, cfile=target, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def _python_closure() -> list[str]:
    from devmodels import HostError

    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(GUEST_PYTHON), "-S", "-c", _CLOSURE_PROBE], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    if proc.returncode != 0:
        raise HostError(f"{GUEST_PYTHON} cannot import the packages: {proc.stderr.strip()[-300:]}")
    files: list[str] = json.loads(proc.stdout)
    return files


def add_python(builder: ImageBuilder, work: Path) -> None:
    """Copy the guest interpreter and the compiled closure of our packages into the image."""
    builder.add_binary_with_libs(GUEST_PYTHON, str(GUEST_PYTHON))
    compile_jobs: list[tuple[str, str]] = []
    for name in _python_closure():
        host = Path(name)
        if host.suffix == ".so":
            builder.add_binary_with_libs(host, name)
            continue
        guest = Path(GUEST_ROOT) / host.relative_to(REPO) if host.is_relative_to(REPO) else host
        builder.add_file(str(guest), host, 0o644)
        pyc = work / guest.relative_to("/").parent / "__pycache__" / f"{guest.stem}.cpython-311.pyc"
        pyc.parent.mkdir(parents=True, exist_ok=True)
        compile_jobs.append((str(host), str(pyc)))
    subprocess.run([str(GUEST_PYTHON), "-c", _COMPILE], input=json.dumps(compile_jobs), text=True, check=True,
                   timeout=300)
    for _, compiled in compile_jobs:
        builder.add_file("/" + str(Path(compiled).relative_to(work)), Path(compiled), 0o644)


class VfioKernelCase:
    """The kernel-VFIO row."""

    driver = "vfio-pci (+ devmodels VfioPciDevice)"
    device = "QEMU edu 1234:11e8 behind intel-iommu"
    path = "kernel VFIO in guest"
    guest_script = GUEST_SCRIPT
    name = "vfio-kernel-edu"
    required_checks = EXPECTED_CHECKS

    def image_extras(self, builder: ImageBuilder) -> None:
        """Nothing in the shared image: this row boots ``own_image``."""

    def own_image(self) -> GuestImage:
        """An image with Python and our packages (see the module docstring).

        Raises:
            HostError: Debian's python3.11 is missing or the image cannot be built.
        """
        from devmodels import HostError
        from ...guest import ImageBuilder

        if not GUEST_PYTHON.is_file():
            raise HostError(f"{GUEST_PYTHON} missing: apt-get install python3.11-minimal")
        builder = ImageBuilder()
        builder.add_test(self.name, GUEST_SCRIPT)
        with tempfile.TemporaryDirectory(prefix="vfio-guest-") as tmp:
            add_python(builder, Path(tmp))
            return builder.build(None)

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """A q35 machine with an emulated IOMMU and the edu device; nothing on the host side."""
        return Attachment(
            qemu_args=["-machine", "q35", "-device", "intel-iommu,intremap=on", "-device", "edu"],
            append=["intel_iommu=on"],
            memory_mb=768,
        )

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """None: the runner checks that every one of ``required_checks`` was reported."""
        return {}


def cases() -> list[VfioKernelCase]:
    """The kernel-VFIO row."""
    return [VfioKernelCase()]
