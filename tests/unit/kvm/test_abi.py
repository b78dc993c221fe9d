"""kvm.abi against the host's <linux/kvm.h>: every ioctl number and structure size."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from kvm import abi as abi
from tests.prerequisites import prerequisite

_HEADER = Path("/usr/include/linux/kvm.h")
_MISSING = (None if shutil.which("gcc") and _HEADER.exists()
            else "needs gcc and the Linux uAPI headers (linux-libc-dev) to compare the ABI")

_STRUCTS = {
    "KvmRegs": "struct kvm_regs",
    "KvmSregs": "struct kvm_sregs",
    "KvmSegment": "struct kvm_segment",
    "KvmUserspaceMemoryRegion": "struct kvm_userspace_memory_region",
    "KvmIrqLevel": "struct kvm_irq_level",
    "KvmMsi": "struct kvm_msi",
    "KvmIrqfd": "struct kvm_irqfd",
    "KvmIoeventfd": "struct kvm_ioeventfd",
    "KvmPitConfig": "struct kvm_pit_config",
    "KvmCpuidEntry2": "struct kvm_cpuid_entry2",
    "KvmIrqRoutingEntry": "struct kvm_irq_routing_entry",
}
_OFFSETS = {
    "immediate_exit": abi.KVM_RUN_IMMEDIATE_EXIT,
    "exit_reason": abi.KVM_RUN_EXIT_REASON,
    "if_flag": abi.KVM_RUN_IF_FLAG,
    "io": abi.KVM_RUN_UNION,
    "mmio": abi.KVM_RUN_UNION,
}


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if _MISSING is not None:
        pytest.skip(_MISSING)
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for name in abi.IOCTLS:
        lines.append(f'printf("{name} %lu\\n", (unsigned long){name});')
    for name in abi.CAPS:
        lines.append(f'printf("{name} %lu\\n", (unsigned long){name});')
    for py, c in _STRUCTS.items():
        lines.append(f'printf("sizeof {py} %zu\\n", sizeof({c}));')
    for field in _OFFSETS:
        lines.append(f'printf("offset {field} %zu\\n", offsetof(struct kvm_run, {field}));')
    lines.append("return 0; }")
    work = tmp_path_factory.mktemp("abi")
    (work / "abi.c").write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(work / "abi"), str(work / "abi.c")], check=True, capture_output=True)
    out = subprocess.run([str(work / "abi")], check=True, capture_output=True, text=True).stdout
    return {key: int(value) for key, value in (line.rsplit(" ", 1) for line in out.splitlines())}


@prerequisite(_MISSING)
@pytest.mark.parametrize("name", sorted(abi.IOCTLS))
def test_ioctl_number_matches_the_header(name: str, header_values: dict[str, int]) -> None:
    assert abi.IOCTLS[name] == header_values[name]


@prerequisite(_MISSING)
@pytest.mark.parametrize("name", sorted(abi.CAPS))
def test_capability_number_matches_the_header(name: str, header_values: dict[str, int]) -> None:
    assert abi.CAPS[name] == header_values[name]


@prerequisite(_MISSING)
@pytest.mark.parametrize("name", sorted(_STRUCTS))
def test_structure_size_matches_the_header(name: str, header_values: dict[str, int]) -> None:
    assert ctypes.sizeof(getattr(abi, name)) == header_values[f"sizeof {name}"]


@prerequisite(_MISSING)
@pytest.mark.parametrize("field", sorted(_OFFSETS))
def test_kvm_run_offsets_match_the_header(field: str, header_values: dict[str, int]) -> None:
    assert _OFFSETS[field] == header_values[f"offset {field}"]


def test_variable_length_tables_carry_their_count() -> None:
    assert abi.cpuid2(7).nent == 7
    table = abi.irq_routing(3)
    assert table.nr == 3 and len(table.entries) == 3
