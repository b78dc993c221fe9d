"""Fixtures for the guest image builder tests: a fake kernel and modules tree."""

from __future__ import annotations

import lzma
import shutil
import struct
from pathlib import Path
from typing import NamedTuple

import pytest
from tests.prerequisites import missing


class FakeKernel(NamedTuple):
    kernel: Path
    modules: Path
    release: str


@pytest.fixture
def fake_kernel(tmp_path: Path) -> FakeKernel:
    """A bzImage-shaped file naming its release, and a modules root with two junk modules.

    depmod lists modules it cannot parse, without dependencies, which is all the builder
    tests need; busybox (static) and depmod must be installed.
    """
    if shutil.which("busybox") is None or shutil.which("depmod", path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
        missing("needs busybox-static and kmod (apt-get install busybox-static kmod)")
    release = "9.9.9-test"
    image = bytearray(0x800)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x200)
    image[0x400:0x400 + len(release) + 1] = release.encode() + b"\0"
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bytes(image))
    vdir = tmp_path / "mods" / "lib" / "modules" / release
    (vdir / "kernel" / "drivers" / "fake").mkdir(parents=True)
    (vdir / "kernel" / "drivers" / "fake" / "alpha.ko").write_bytes(b"alpha-module")
    (vdir / "kernel" / "drivers" / "fake" / "beta.ko.xz").write_bytes(lzma.compress(b"beta-module"))
    (vdir / "modules.order").write_text("kernel/drivers/fake/alpha.ko\nkernel/drivers/fake/beta.ko.xz\n")
    (vdir / "modules.builtin").write_text("kernel/net/packet/af_packet.ko\n")
    return FakeKernel(kernel, tmp_path / "mods", release)
