"""Kernel VFIO for real: a QEMU TCG q35 guest with an Intel IOMMU and QEMU's edu device.

The guest binds edu to vfio-pci and runs ``python3 -m passthrough.kernel.edu BDF`` (Debian's
python3.11 and the library closure of devmodels + passthrough are put in the initramfs):
our ``VfioPciDevice`` opens the device through the container/group/device ioctls, maps a
``Machine``'s RAM through the IOMMU, and drives identification, factorial, DMA both ways,
INTx and MSI on eventfds. Skips (with the reason) when QEMU, the guest kernel or Debian's
python3.11 is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from devmodels import HostError
from devmodels.guest import GuestImage, ImageBuilder
from devmodels.qemu.launcher import QemuLauncher, qemu_available

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
GUEST_PYTHON = Path("/usr/bin/python3.11")
GUEST_ROOT = "/opt/devmodels"
BOOT_TIMEOUT = 600.0

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
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(GUEST_PYTHON), "-S", "-c", _CLOSURE_PROBE], capture_output=True, text=True, env=env, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.skip(f"{GUEST_PYTHON} cannot import the packages: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout)


def _add_python(builder: ImageBuilder, work: Path) -> None:
    builder.add_binary_with_libs(GUEST_PYTHON, str(GUEST_PYTHON))
    compile_jobs: list[tuple[str, str]] = []
    for name in _python_closure():
        host = Path(name)
        if host.suffix == ".so":
            builder.add_binary_with_libs(host, name)
            continue
        if host.is_relative_to(REPO):
            guest = Path(GUEST_ROOT) / host.relative_to(REPO)
        else:
            guest = host
        builder.add_file(str(guest), host, 0o644)
        pyc = work / guest.relative_to("/").parent / "__pycache__" / f"{guest.stem}.cpython-311.pyc"
        pyc.parent.mkdir(parents=True, exist_ok=True)
        compile_jobs.append((str(host), str(pyc)))
    subprocess.run([str(GUEST_PYTHON), "-c", _COMPILE], input=json.dumps(compile_jobs), text=True, check=True, timeout=300)
    for _, pyc in compile_jobs:
        builder.add_file("/" + str(Path(pyc).relative_to(work)), Path(pyc), 0o644)


@pytest.fixture(scope="module")
def image() -> GuestImage:
    reason = qemu_available()
    if reason is not None:
        pytest.skip(reason)
    if not GUEST_PYTHON.is_file():
        pytest.skip(f"{GUEST_PYTHON} missing: apt-get install python3.11-minimal")
    builder = ImageBuilder()
    builder.add_test("vfio_edu", GUEST_SCRIPT)
    with tempfile.TemporaryDirectory(prefix="vfio-guest-") as tmp:
        _add_python(builder, Path(tmp))
        try:
            return builder.build(progress=False)
        except HostError as exc:
            pytest.skip(f"cannot build the guest image: {exc}")


def test_edu_through_kernel_vfio_in_a_tcg_guest(image: GuestImage, tmp_path: Path) -> None:
    launcher = QemuLauncher.for_image(
        image,
        test="vfio_edu",
        memory_mb=768,
        args=["-machine", "q35", "-device", "intel-iommu,intremap=on", "-device", "edu"],
        append=["intel_iommu=on"],
        serial_log=tmp_path / "serial.log",
    )
    with launcher as vm:
        result = vm.wait(BOOT_TIMEOUT)
    expected = {
        "iommu.groups", "edu.vfio_pci", "vfio.group_node", "vfio.open", "vfio.dma_map", "edu.id", "edu.liveness",
        "edu.factorial", "edu.dma", "edu.intx", "edu.intx_ack", "edu.msi_cap", "edu.msi_enable", "edu.msi",
        "edu.dma_msi", "vfio.host_errors", "python.exit",
    }
    assert expected <= set(result.checks), result.summary()
    assert result.passed, result.summary()
    assert os.path.getsize(tmp_path / "serial.log") > 0
