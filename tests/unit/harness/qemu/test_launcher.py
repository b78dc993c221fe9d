"""QemuLauncher against a stand-in "QEMU" (a small Python script): no real guest boots here."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devmodels import UsageError
from harness.qemu import launcher as launcher_mod
from harness.qemu.launcher import BootResult, QemuLauncher, boot, qemu_available

FAKE_QEMU = textwrap.dedent(f"""\
    #!{sys.executable}
    import os, signal, sys, time
    args = sys.argv[1:]
    if args == ["--version"]:
        print("QEMU emulator version 0.0 (fake)")
        sys.exit(0)
    words = args[args.index("-append") + 1].split()
    mode = next(w.split("=", 1)[1] for w in words if w.startswith("fake.mode="))
    print("early boot noise", flush=True)
    if mode == "pass":
        print("DEVMODELS-CHECK a PASS")
        print("[ 1.0] printk racing DEVMODELS-CHECK b FAIL rc=1 broken thing\\r")
        print("DEVMODELS-DONE", flush=True)
        sys.exit(0)
    if mode == "allpass":
        print("DEVMODELS-CHECK a PASS\\nDEVMODELS-DONE", flush=True)
        sys.exit(0)
    if mode == "done-hang":
        print("DEVMODELS-DONE", flush=True)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "fds":
        fd = int(next(w.split("=", 1)[1] for w in words if w.startswith("fake.fd=")))
        os.write(fd, b"hello through the fd")
        print("DEVMODELS-CHECK fd PASS\\nDEVMODELS-DONE", flush=True)
        sys.exit(0)
    if mode == "stderr":
        print("qemu-system-x86_64: -device nope: 'nope' is not a valid device model name", file=sys.stderr)
        sys.exit(1)
    time.sleep(600)
    """)


@pytest.fixture
def fake_qemu(tmp_path: Path) -> str:
    path = tmp_path / "qemu-system-x86_64"
    path.write_text(FAKE_QEMU)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    return kernel, initrd


def _vm(images: tuple[Path, Path], qemu: str, mode: str, **kwargs: object) -> QemuLauncher:
    append = [f"fake.mode={mode}", *kwargs.pop("append", ())]  # type: ignore[misc]
    return QemuLauncher(*images, qemu=qemu, append=append, **kwargs)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the launcher reaps, so check the state too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# --- command line ----------------------------------------------------------------------------


def test_argv_has_the_fixed_machine(images: tuple[Path, Path]) -> None:
    vm = QemuLauncher(*images, args=["-device", "e1000,netdev=n0"], append="quiet", test="smoke")
    argv = vm.argv()
    joined = " ".join(argv)
    for part in ("-accel tcg", "-cpu max", "-m 512", "-smp 1", "-nodefaults", "-no-user-config", "-nographic",
                 "-serial stdio", "-no-reboot", f"-kernel {images[0]}", f"-initrd {images[1]}"):
        assert part in joined, part
    assert argv[-2:] == ["-device", "e1000,netdev=n0"]
    assert vm.cmdline() == "console=ttyS0 panic=-1 loglevel=4 no_timer_check devmodels.test=smoke quiet"
    assert "memory-backend-memfd" not in joined


def test_shared_memory_adds_a_memfd_backend(images: tuple[Path, Path]) -> None:
    argv = QemuLauncher(*images, shared_memory=True, memory_mb=256).argv()
    i = argv.index("-object")
    assert argv[i + 1] == "memory-backend-memfd,id=sysmem-file,size=256M,share=on"
    assert argv[argv.index("-numa") + 1] == "node,memdev=sysmem-file"
    assert argv[argv.index("-m") + 1] == "256"


def test_auto_accel_uses_tcg_unless_kvm_is_usable(images: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher_mod, "kvm_usable", lambda: False)
    assert QemuLauncher(*images, accel="auto").accel == "tcg"
    monkeypatch.setattr(launcher_mod, "kvm_usable", lambda: True)
    vm = QemuLauncher(*images, accel="auto")
    assert vm.accel == "kvm" and vm.argv()[vm.argv().index("-cpu") + 1] == "host"


def test_bad_arguments(images: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        QemuLauncher(*images, accel="hvf")
    with pytest.raises(UsageError):
        QemuLauncher(tmp_path / "nope", images[1])
    with pytest.raises(UsageError):
        QemuLauncher(*images).wait(1)


def test_qemu_available(fake_qemu: str, tmp_path: Path) -> None:
    assert qemu_available(fake_qemu) is None
    reason = qemu_available(str(tmp_path / "no-such-qemu"))
    assert reason is not None and "apt-get install qemu-system-x86" in reason


# --- running -----------------------------------------------------------------------------------


def test_collects_checks_done_and_exit_code(images: tuple[Path, Path], fake_qemu: str, tmp_path: Path) -> None:
    seen: list[str] = []
    log = tmp_path / "serial.log"
    with _vm(images, fake_qemu, "pass", on_line=seen.append, serial_log=log) as vm:
        assert vm.pid is not None
        res = vm.wait(30)
    assert res.done and not res.timed_out and res.exit_code == 0
    assert res.checks == {"a": (True, ""), "b": (False, "rc=1 broken thing")}
    assert not res.passed and res.failures() == {"b": "rc=1 broken thing"}
    assert res.done_after is not None and 0 <= res.done_after <= res.elapsed
    assert seen[0] == "early boot noise" and "DEVMODELS-DONE" in seen
    assert log.read_text().splitlines() == res.log.splitlines() == seen
    assert "\r" not in res.log
    assert "broken thing" in res.summary()


def test_all_pass(images: tuple[Path, Path], fake_qemu: str) -> None:
    res = boot(*images, qemu=fake_qemu, append=["fake.mode=allpass"], timeout=30)
    assert res.passed and res.argv[0] == fake_qemu


def test_streaming_wait_for(images: tuple[Path, Path], fake_qemu: str) -> None:
    with _vm(images, fake_qemu, "pass") as vm:
        line = vm.wait_for("DEVMODELS-CHECK a", timeout=30)
        assert line == "DEVMODELS-CHECK a PASS"
        assert vm.wait_for("never printed", timeout=30) is None  # console ended first
        res = vm.wait(30)
    assert res.log.startswith("early boot noise")  # the result has every line regardless


def test_timeout_kills_qemu(images: tuple[Path, Path], fake_qemu: str) -> None:
    t0 = time.monotonic()
    with _vm(images, fake_qemu, "hang") as vm:
        res = vm.wait(0.5)
        pid = vm.pid
    assert res.timed_out and not res.done and res.exit_code is not None and res.exit_code < 0
    assert time.monotonic() - t0 < 10
    assert pid is not None and not _alive(pid)


def test_done_but_no_poweroff_is_killed_after_the_grace(images: tuple[Path, Path], fake_qemu: str) -> None:
    t0 = time.monotonic()
    with _vm(images, fake_qemu, "done-hang", done_grace=0.3) as vm:
        res = vm.wait(60)
    assert res.done and not res.timed_out
    assert time.monotonic() - t0 < 10


def test_sigterm_ignored_escalates_to_sigkill(images: tuple[Path, Path], fake_qemu: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher_mod, "_TERM_GRACE", 0.3)
    with _vm(images, fake_qemu, "ignore-term") as vm:
        time.sleep(0.3)  # let it install the handler
        res = vm.wait(0.2)
    assert res.exit_code == -9


def test_context_manager_tears_down_on_error(images: tuple[Path, Path], fake_qemu: str) -> None:
    pid = None
    with pytest.raises(RuntimeError), _vm(images, fake_qemu, "hang") as vm:
        pid = vm.pid
        raise RuntimeError("test failed mid-boot")
    assert pid is not None and not _alive(pid)


def test_pass_fds_reach_qemu(images: tuple[Path, Path], fake_qemu: str) -> None:
    r, w = os.pipe()
    try:
        with _vm(images, fake_qemu, "fds", append=[f"fake.fd={w}"], pass_fds=[w]) as vm:
            res = vm.wait(30)
        assert res.passed
        assert os.read(r, 100) == b"hello through the fd"
    finally:
        os.close(r)
        os.close(w)


def test_qemu_errors_are_kept(images: tuple[Path, Path], fake_qemu: str) -> None:
    with _vm(images, fake_qemu, "stderr") as vm:
        res = vm.wait(30)
    assert res.exit_code == 1 and "not a valid device model" in res.stderr and not res.passed


def test_start_twice_is_refused(images: tuple[Path, Path], fake_qemu: str) -> None:
    with _vm(images, fake_qemu, "allpass") as vm, pytest.raises(UsageError):
        vm.start()


def test_boot_result_passed_needs_checks_and_done() -> None:
    assert not BootResult("", 0, 1.0, {}, True).passed
    assert not BootResult("", 0, 1.0, {"a": (True, "")}, False).passed
    assert BootResult("", 0, 1.0, {"a": (True, "")}, True).passed


def test_on_line_error_is_raised_after_teardown(images: tuple[Path, Path], fake_qemu: str) -> None:
    def broken(line: str) -> None:
        raise ValueError("observer bug")

    with _vm(images, fake_qemu, "pass", on_line=broken) as vm, pytest.raises(ValueError, match="observer bug"):
        vm.wait(30)
    assert "DEVMODELS-DONE" in vm.result().log  # the console was drained regardless
