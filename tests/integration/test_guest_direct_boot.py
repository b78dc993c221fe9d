"""The Debian guest kernel booted directly at its PVH entry (harness.guest.direct_kernel) and
through its bzImage: both reach DEVMODELS-DONE with the same checks. The boot times are
printed, not asserted (performance is measured in bench/, kvm/README.md has the figures)."""

from __future__ import annotations

import pytest

from devmodels import HostError
from harness.guest import GuestImage, ImageBuilder, direct_kernel
from harness.qemu.binaries import QEMU_7_2, QEMU_11_1, QemuBinary
from harness.qemu.launcher import QemuLauncher, qemu_available
from kvm import ElfImage
from tests.prerequisites import missing, need

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def image() -> GuestImage:
    need(qemu_available())
    try:
        return ImageBuilder().build(progress=False)
    except HostError as exc:
        missing(f"cannot build the guest image: {exc}")


def test_the_debian_kernel_carries_a_pvh_entry(image: GuestImage) -> None:
    found = direct_kernel(image.kernel)
    assert found.path is not None, found.reason
    assert found.compression in ("xz", "gzip", "zstd")
    elf = ElfImage.from_file(found.path)
    assert found.entry is not None and any(s.paddr <= found.entry < s.end for s in elf.segments)


@pytest.mark.parametrize("qemu", [QEMU_7_2, QEMU_11_1], ids=lambda q: f"qemu{q.label}")
def test_direct_and_bzimage_boots_reach_done_alike(image: GuestImage, qemu: QemuBinary) -> None:
    need(qemu.unavailable())
    times = {}
    checks = {}
    for direct in (True, False):
        with QemuLauncher.for_image(image, test="smoke", qemu=qemu, direct=direct) as vm:
            if direct:
                assert vm.kernel.name == "vmlinux"
            res = vm.wait(180)
        assert res.passed, res.summary()
        times[direct] = res.done_after
        checks[direct] = set(res.checks)
    assert checks[True] == checks[False]
    print(f"\nQEMU {qemu.label}: QEMU start -> DONE {times[True]:.2f}s direct (PVH), {times[False]:.2f}s bzImage")
