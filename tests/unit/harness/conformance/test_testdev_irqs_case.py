"""The testdev interrupt row: vfio-user only, and a driver that cannot be built fails the row
with the reason instead of vanishing (no network, no QEMU needed here)."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest

from devmodels import HostError
from harness.conformance import load_cases
from harness.conformance.cases._served import VFIO_USER
from harness.conformance.cases.testdev_irqs import MODULE_PATH, REQUIRED_CHECKS, TestdevIrqCase, cases
from harness.guest import ImageBuilder


def test_one_row_over_vfio_user_selected_by_its_name() -> None:
    (case,) = cases()
    assert case.name == "testdev-irqs-vfio-user" and case.attachment == VFIO_USER
    assert {"testdev.intx", "testdev.msi", "testdev.msix", "testdev.dma_irq", "host.server"} <= case.required_checks
    assert REQUIRED_CHECKS <= case.required_checks
    selected, broken = load_cases(["testdev-irqs"])
    assert not broken and [c.name for c in selected] == ["testdev-irqs-vfio-user"]
    assert MODULE_PATH in case.guest_script and "irqpoll" not in " ".join(case._append)


def _user_kernel(tmp_path: Path) -> ImageBuilder:
    image = bytearray(0x800)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x200)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bytes(image))
    (tmp_path / "mods" / "lib" / "modules" / "9.9.9-test" / "kernel").mkdir(parents=True)
    return ImageBuilder(kernel=kernel, modules_dir=tmp_path / "mods", kernel_version="9.9.9-test",
                        cache_dir=tmp_path / "cache")


def test_a_driver_that_cannot_be_built_fails_the_row_with_the_reason(tmp_path: Path) -> None:
    case = TestdevIrqCase()
    builder = _user_kernel(tmp_path)
    case.image_extras(builder)  # no headers for a kernel that is not a Debian package
    assert case.build_error is not None and "not from a Debian package" in case.build_error
    assert MODULE_PATH not in builder._extras
    with contextlib.ExitStack() as stack, pytest.raises(HostError, match="cannot build the testdev driver"):
        case.start(stack, tmp_path)
    assert case.server_log is None  # no server was started
