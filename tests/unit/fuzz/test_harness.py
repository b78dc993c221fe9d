"""The fuzz harness itself: total deterministic decoding and oracles that really fire."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import GuestError, Machine
from fuzz import Finding, Op, OpKind, PciRig, Program, decode, encode, execute
from fuzz._rig import RAM_SIZE
from fuzz._runner import corpus_dir, repro, run
from fuzz.testdev_fuzzer import build as build_testdev

_OPS = st.sampled_from(list(OpKind))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_decode_is_total_and_deterministic(data: bytes) -> None:
    first = decode(data)
    assert first == decode(data)
    assert len(first.ops) <= 512


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=4, max_size=400))
def test_encode_inverts_decode_on_whole_ops(data: bytes) -> None:
    program = decode(data)
    assert decode(encode(program)) == program


class _Registers:
    """A BAR device whose behaviour each test chooses."""

    def __init__(self, on_write) -> None:  # type: ignore[no-untyped-def]
        self.on_write = on_write

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.on_write(value)


def _rig_with(on_write, healthy: bool = True):  # type: ignore[no-untyped-def]
    from devmodels.pci import PciFunction

    class _Rig(PciRig):
        def __init__(self) -> None:
            machine = Machine(ram_size=RAM_SIZE, ram_backing="bytearray")
            function = PciFunction(0x1234, 0x0001, 0xFF0000)
            function.add_bar(0, 0x100, _Registers(on_write))
            super().__init__(machine, function)

        def health_check(self) -> None:
            if not healthy:
                raise Finding("reset", "device dead after reset")

    return _Rig


def _one_write(value: int) -> Program:
    return Program(0, (Op(OpKind.MMIO_WRITE, (0, 0, 2, value)),))


def test_escaping_guest_error_is_a_finding() -> None:
    def bad(value: int) -> None:
        raise GuestError("leaked out of the device")

    with pytest.raises(Finding) as caught:
        execute(_rig_with(bad), _one_write(1))
    assert caught.value.kind == "exception"
    assert "GuestError" in caught.value.detail


def test_hang_is_a_finding() -> None:
    def spin(value: int) -> None:
        while True:
            pass

    with pytest.raises(Finding) as caught:
        execute(_rig_with(spin), _one_write(1), op_seconds=0.2)
    assert caught.value.kind == "hang"


def test_unbounded_growth_is_a_finding() -> None:
    hoard: list[bytes] = []

    def grow(value: int) -> None:
        hoard.append(bytes(1 << 20))

    program = Program(0, tuple(Op(OpKind.MMIO_WRITE, (0, 0, 2, i)) for i in range(40)))
    with pytest.raises(Finding) as caught:
        execute(_rig_with(grow), program, check_memory=True, memory_limit=8 << 20)
    assert caught.value.kind == "memory"


def test_failed_health_check_is_a_finding() -> None:
    with pytest.raises(Finding) as caught:
        execute(_rig_with(lambda value: None, healthy=False), _one_write(1))
    assert caught.value.kind == "reset"


def test_well_behaved_device_passes_every_oracle() -> None:
    seen: list[int] = []
    execute(_rig_with(seen.append), _one_write(0xAB), check_memory=True)
    assert seen == [0xAB]


def test_testdev_seeds_replay_clean() -> None:
    seeds = sorted(corpus_dir("testdev").glob("*"))
    assert seeds, "the testdev seed corpus is committed"
    for seed in seeds:
        execute(build_testdev, decode(seed.read_bytes()), check_memory=True)


def test_builtin_engine_finds_coverage_and_no_findings(tmp_path: Path) -> None:
    stats = run("testdev", 30, crashes=tmp_path, engine="builtin", max_execs=60, progress=lambda line: None)
    assert stats.execs == 60
    assert stats.coverage > 100
    assert not stats.findings


def test_repro_prints_an_op_trace(tmp_path: Path) -> None:
    path = tmp_path / "testdev-example"
    path.write_bytes(encode(_one_write(5)))
    lines: list[str] = []
    assert repro(path, out=lines.append) is None
    assert any("mmio_write" in line for line in lines)
    assert lines[-1].startswith("no finding")
