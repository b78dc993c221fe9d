"""The fuzz harness itself: total deterministic decoding and oracles that really fire."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import GuestError, Machine
from fuzz import TARGETS, Finding, Op, OpKind, PciRig, Program, decode, encode, execute, load_executor
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


# -- targets, seeds and the newer oracles ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_is_a_standalone_fuzzer_with_seeds(name: str) -> None:
    import importlib

    from fuzz._runner import FUZZ_DIR

    assert (FUZZ_DIR / f"{name}_fuzzer.py").is_file()
    module = importlib.import_module(TARGETS[name])
    assert callable(module.TestOneInput)
    assert callable(getattr(module, "build", None)) or callable(getattr(module, "execute_input", None))
    seeds = sorted(corpus_dir(name).glob("*"))
    assert seeds, f"{name} has no committed seed corpus"
    load_executor(name)(seeds[0].read_bytes())  # the first seed replays clean (smoke replays all)


def test_recorded_program_replays_to_the_recorded_state() -> None:
    from fuzz._record import Recorder
    from devmodels.testdev import regs as t

    def script(rec: Recorder) -> None:
        bar0 = rec.rig.regions[0][1]
        rec.machine.config_write(0, rec.rig.devfn, 0x04, 2, 0b110)  # type: ignore[attr-defined]
        rec.machine.memory.write(0x3000, b"recorded!")
        rec.machine.mmio.write(bar0 + t.SCRATCH, 4, 0xC0FFEE)
        rec.machine.mmio.write(bar0 + t.DMA_SRC, 8, 0x3000)
        rec.machine.mmio.write(bar0 + t.DMA_DST, 8, 0x5000)
        rec.machine.mmio.write(bar0 + t.DMA_LEN, 4, 9)
        rec.machine.mmio.write(bar0 + t.DMA_CMD, 4, t.DMA_CMD_START)
        rec.machine.mmio.read(bar0 + t.DMA_STATUS, 4)

    rig = build_testdev()
    recorder = Recorder(rig)
    script(recorder)
    program = recorder.program()
    recorder.close()
    expected = (rig.device.state(), rig.machine.memory.read(0, RAM_SIZE))
    rig.close()
    assert [op.kind for op in program.ops].count(OpKind.RAM_WRITE) == 2  # 8 + 1 bytes, aligned pieces
    replay = build_testdev()
    from fuzz._execute import _apply, fill_ram_pattern

    fill_ram_pattern(replay.machine.memory, program.ram_seed)
    for op in decode(encode(program)).ops:
        _apply(replay, op)
    assert (replay.device.state(), replay.machine.memory.read(0, RAM_SIZE)) == expected
    assert replay.machine.memory.read(0x5000, 9) == b"recorded!"
    replay.close()


def test_recorder_refuses_what_ops_cannot_express() -> None:
    from fuzz._record import Recorder, RecordError

    rig = build_testdev()
    recorder = Recorder(rig)
    with pytest.raises(RecordError):
        rig.machine.mmio.write(0xFEE0_0000, 4, 1)  # not a region of the rig
    with pytest.raises(RecordError):
        rig.machine.config_write(0, rig.devfn, 0x100, 4, 1)  # past the 256 bytes a CFG op reaches
    recorder.close()
    rig.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_stream_decoding_is_total_and_encode_inverts_it(data: bytes) -> None:
    from fuzz._stream import MAX_FDS, decode_stream, encode_stream

    selector, chunks = decode_stream(data)
    assert all(len(c.fds) <= MAX_FDS for c in chunks)
    assert decode_stream(encode_stream(selector, chunks)) == (selector, chunks)


def test_fd_leak_oracle_fires_and_closes_the_leak() -> None:
    import os

    from fuzz._stream import check_fd_leak, open_fds

    before = open_fds()
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    with pytest.raises(Finding) as caught:
        check_fd_leak(before, "test")
    assert caught.value.kind == "fd-leak"
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the oracle, so a campaign does not run out of descriptors
    check_fd_leak(before, "nothing left")


def test_blocking_op_is_a_hang_by_wall_clock() -> None:
    import time

    with pytest.raises(Finding) as caught:
        execute(_rig_with(lambda value: time.sleep(2)), _one_write(1), op_seconds=0.02)
    assert caught.value.kind == "hang"


def test_snapshot_round_trips_are_budgeted() -> None:
    from fuzz._rig import SNAPSHOT_BUDGET

    calls: list[int] = []
    factory = _rig_with(lambda value: None)

    class Counting(factory):  # type: ignore[misc, valid-type]
        def snapshot_roundtrip(self) -> None:
            calls.append(1)

    execute(Counting, Program(0, tuple(Op(OpKind.SNAPSHOT, ()) for _ in range(3 * SNAPSHOT_BUDGET))))
    assert len(calls) == SNAPSHOT_BUDGET


def test_ring_differential_oracle_fires_when_the_implementations_disagree() -> None:
    from fuzz._rings import RingRig
    from virtio.queue.ring import RingC

    rig = RingRig(packed=False)
    if RingC is None:
        assert len(rig.sides) == 1  # the reference alone: nothing to compare against
    else:
        rig.sides[0].memory.write(0x100, b"\x01")  # one RAM copy drifts
        with pytest.raises(Finding) as caught:
            rig.compare("test")
        assert caught.value.kind == "differential"
    rig.close()


def test_atheris_status_lines_are_parsed() -> None:
    from fuzz._runner import _STATUS

    match = _STATUS.match("#4096\tpulse  cov: 1350 ft: 3802 corp: 283/271Kb lim: 1642 exec/s: 16 rss: 91Mb")
    assert match is not None and match.groups() == ("4096", "1350", "3802", "283")


def test_fd_held_oracle_counts_what_was_opened_since() -> None:
    import os

    from fuzz._stream import check_fd_held, open_fds

    before = open_fds()
    opened = [os.eventfd(0) for _ in range(5)]
    try:
        check_fd_held(before, "five", limit=5)
        with pytest.raises(Finding, match="fd-held"):
            check_fd_held(before, "five", limit=4)
    finally:
        for fd in opened:
            os.close(fd)
    check_fd_held(before, "none left", limit=0)


def test_guard_gives_an_outer_wall_clock_timer_back() -> None:
    import signal

    from fuzz._execute import Guard

    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    outer = signal.getitimer(signal.ITIMER_REAL)
    try:
        signal.setitimer(signal.ITIMER_REAL, 50.0)
        with Guard(op_seconds=1.0) as guard:
            guard.call(lambda: None, "a step")  # disarms the per-step timers
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 45.0 < remaining <= 50.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, *outer)
        signal.signal(signal.SIGALRM, previous)
