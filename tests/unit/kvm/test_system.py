"""kvm._system and kvm._ioctl: opening /dev/kvm, and errors that name the call and errno."""

from __future__ import annotations

import errno
import os

import pytest

import kvm
from devmodels import HostError
from kvm import Kvm, KvmError, unavailable
from kvm._ioctl import ioctl
from tests.prerequisites import prerequisite


def test_importing_the_package_opens_nothing() -> None:
    import subprocess
    import sys

    code = "import kvm, os; print(sorted(os.listdir('/proc/self/fd')))"
    baseline = "import os; print(sorted(os.listdir('/proc/self/fd')))"
    run = [sys.executable, "-c"]
    assert subprocess.run([*run, code], capture_output=True, text=True, check=True).stdout == \
        subprocess.run([*run, baseline], capture_output=True, text=True, check=True).stdout


def test_a_missing_device_is_a_kvm_error_naming_the_open_and_errno(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "kvm"
    with pytest.raises(KvmError) as caught:
        Kvm(str(path))
    assert caught.value.call == f"open {path}"
    assert caught.value.errno == errno.ENOENT
    assert "ENOENT" in str(caught.value)
    assert isinstance(caught.value, HostError)


def test_unavailable_gives_the_reason_for_a_missing_device(tmp_path) -> None:  # type: ignore[no-untyped-def]
    reason = unavailable(str(tmp_path / "kvm"))
    assert reason is not None and "ENOENT" in reason


def test_a_device_that_is_not_kvm_refuses_the_first_ioctl_by_name() -> None:
    with pytest.raises(KvmError, match=r"KVM_GET_API_VERSION failed: ENOTTY") as caught:
        Kvm("/dev/null")
    assert caught.value.errno == errno.ENOTTY


def test_ioctl_failures_name_the_ioctl_the_errno_and_the_detail() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(KvmError, match=r"KVM_CREATE_VM failed: ENOTTY \(.*\); while testing"):
            ioctl(fd, "KVM_CREATE_VM", detail="while testing")
    finally:
        os.close(fd)


@prerequisite(unavailable())
def test_kvm_opens_here_with_api_12_and_an_irqchip() -> None:
    with Kvm() as handle:
        assert handle.vcpu_mmap_size >= 4096
        assert handle.check_extension("KVM_CAP_IRQCHIP")
        assert handle.supported_cpuid().nent > 0


def test_the_package_exports_its_names() -> None:
    for name in kvm.__all__:
        assert hasattr(kvm, name), name
