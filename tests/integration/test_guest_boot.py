"""Boot the real guest image under QEMU (TCG) and read its checks off the serial console.

Needs qemu-system-x86, busybox-static, kmod and the Debian kernel package through apt (or a
cached copy); each missing piece skips with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devmodels import HostError
from harness.guest import GuestImage, ImageBuilder
from harness.guest._modules import ModuleIndex, module_name
from harness.qemu.binaries import QEMU_7_2, QEMU_11_1, QemuBinary
from harness.qemu.launcher import QemuLauncher, qemu_available
from tests.prerequisites import missing, need

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 120.0
DISK_MARKER = b"DEVMODELS-DISK-MARKER"

TEST_SCRIPT = """\
check proc.cpuinfo grep -q "^processor" /proc/cpuinfo
check_module e1000
check_module ahci
check_module virtio_blk
check_module virtio_net
check_module vfio_pci
check_pci_driver pci.e1000 8086:100e e1000
check blk.vda.appears wait_for /dev/vda 20
check blk.vda.read sh -c 'head -c 4096 /dev/vda | grep -q DEVMODELS-DISK-MARKER'
check dyn.binary /opt/bin/env true
"""


def _builder() -> ImageBuilder:
    builder = ImageBuilder()
    builder.set_test_script(TEST_SCRIPT)
    # A dynamically linked host program with its ldd closure must run in the guest.
    env = shutil.which("env") or "/usr/bin/env"
    builder.add_binary_with_libs(Path(env), "/opt/bin/env")
    return builder


@pytest.fixture(scope="module")
def image() -> GuestImage:
    need(qemu_available())
    try:
        return _builder().build(progress=False)
    except HostError as exc:
        missing(f"cannot build the guest image: {exc}")


@pytest.mark.parametrize("qemu", [QEMU_7_2, QEMU_11_1], ids=lambda q: f"qemu{q.label}")
def test_boot_runs_the_script_and_reports(image: GuestImage, tmp_path: Path, qemu: QemuBinary) -> None:
    need(qemu.unavailable())
    disk = tmp_path / "disk.raw"
    disk.write_bytes(DISK_MARKER + bytes(1 << 20))
    args = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0",
            "-drive", f"file={disk},if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0"]
    # Shared memfd RAM, as out-of-process devices need, must not change anything for the guest.
    with QemuLauncher.for_image(image, args=args, shared_memory=True, serial_log=tmp_path / "serial.log",
                                qemu=qemu) as vm:
        res = vm.wait(BOOT_TIMEOUT)
    assert res.passed, res.summary()
    assert vm.qemu_version.startswith(qemu.label)
    expected = {"init.modules", "proc.cpuinfo", "module.e1000", "module.ahci", "module.virtio_blk",
                "module.virtio_net", "module.vfio_pci", "pci.e1000", "blk.vda.appears", "blk.vda.read", "dyn.binary"}
    assert set(res.checks) == expected, res.summary()
    assert res.checks["pci.e1000"][1].endswith(" e1000")
    assert res.exit_code == 0 and res.done_after is not None
    print(f"\nboot (QEMU {vm.qemu_version}): QEMU start -> DONE {res.done_after:.2f}s, -> exit {res.elapsed:.2f}s")


def test_embedded_test_is_selected_on_the_command_line(image: GuestImage) -> None:
    with QemuLauncher.for_image(image, test="smoke") as vm:
        res = vm.wait(BOOT_TIMEOUT)
    assert res.passed, res.summary()
    assert {f"module.{name}" for name in image.modules} <= set(res.checks)
    assert "blk.vda.read" not in res.checks  # /test.sh did not run
    print(f"\nboot (smoke): QEMU start -> DONE {res.done_after:.2f}s")


def test_unknown_test_name_fails_cleanly(image: GuestImage) -> None:
    with QemuLauncher.for_image(image, test="no_such_test") as vm:
        res = vm.wait(BOOT_TIMEOUT)
    assert res.done and res.checks.get("init.test") == (False, "no embedded test no_such_test"), res.summary()


def test_second_build_is_a_cache_hit(image: GuestImage) -> None:
    again = _builder().build(progress=False)
    assert again.from_cache and again.cache_key == image.cache_key


def test_closure_matches_modprobe(image: GuestImage, tmp_path: Path) -> None:
    """Our load order against `modprobe --show-depends` on the real kernel's modules."""
    modprobe = shutil.which("modprobe", path="/usr/sbin:/sbin:/usr/bin:/bin")
    depmod = shutil.which("depmod", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if modprobe is None or depmod is None:
        missing("kmod not installed (apt-get install kmod)")
    builder = ImageBuilder()
    source = builder.kernel_source().materialize()
    # modprobe needs depmod's binary indexes; build them in a scratch root, not in the cache.
    vdir = tmp_path / "lib" / "modules" / source.version
    vdir.mkdir(parents=True)
    (vdir / "kernel").symlink_to(source.modules_dir / "kernel")
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (source.modules_dir / name).exists():
            shutil.copy(source.modules_dir / name, vdir / name)
    subprocess.run([depmod, "-b", str(tmp_path), source.version], check=True)

    index = ModuleIndex.from_tree(source.modules_dir, source.version)
    ours = list(index.closure(builder.modules, builder.optional_modules).names)
    union: set[str] = set()
    for wanted in builder.modules + builder.optional_modules:
        proc = subprocess.run([modprobe, "-d", str(tmp_path), "-S", source.version, "--show-depends", wanted],
                              capture_output=True, text=True, check=False)
        union |= {module_name(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("insmod ")}
    assert set(ours) == union
    assert len(ours) == len(set(ours))
    # Ours is a valid load order: hard dependencies and pre-softdeps come first.
    for pos, mod in enumerate(ours):
        before = set(ours[:pos])
        hard = {module_name(d) for d in index.deps[mod][1]}
        pre = {m for soft in index.softdeps.get(mod, ((), ()))[0] for m in index.resolve(soft)}
        assert hard <= before, (mod, hard - before)
        assert pre <= before, (mod, pre - before)
