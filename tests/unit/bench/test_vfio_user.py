"""``bench/vfio_user.py`` against the real ``devmodels vfio-user`` process: the bench starts it
as a user would, a vfio-user client in this process drives the device, and the sampler reads
the server's ``vfio-user stats:`` line (messages and BAR accesses it handled) and CPU time."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from bench import common
from bench.vfio_user import QEMU_CPU, qemu_cpu, serve
from devmodels import Machine
from devmodels.testdev import regs as r
from passthrough import VfioPciDevice
from passthrough.user import VfioUserClient


def _attach_testdev(stack: contextlib.ExitStack, socket_path: Path) -> tuple[Machine, int]:
    """An in-process machine with the served testdev attached over vfio-user; its BAR 0."""
    machine = Machine(ram_size=4 << 20, ram_backing="memfd")
    device = VfioPciDevice(VfioUserClient.connect(str(socket_path), timeout=30))
    stack.callback(device.close)
    device.map_memory(machine.memory)
    machine.add_pci(device)
    info = next(i for i in machine.enumerate() if i.vendor_id == r.TESTDEV_VENDOR_ID)
    bar0 = next(b.address for b in info.bars if b.index == 0)
    assert bar0 is not None
    return machine, bar0


def test_the_sampler_counts_the_accesses_the_server_handled(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        served = serve(stack, tmp_path, "ours", "testdev")
        sampler = served.sampler("ours")
        machine, bar0 = _attach_testdev(stack, served.socket)
        before = sampler("ours", "job", 0, "begin")
        assert before is not None and before["messages"] > 0  # the client's setup
        for _ in range(10):
            assert machine.mmio.read(bar0 + r.ID, 4) == r.TESTDEV_MAGIC
        machine.mmio.write(bar0 + r.SCRATCH, 4, 7)
        after = sampler("ours", "job", 0, "end")
        assert after is not None and sampler.lost is None
        assert after["bar_reads"] - before["bar_reads"] == 10
        assert after["bar_writes"] - before["bar_writes"] == 1
        assert after["messages"] - before["messages"] == 11  # one message per access, no other traffic
        assert after["cpu_ns"] >= before["cpu_ns"]
        assert sampler("peer", "job", 0, "begin") is None  # it samples its own side only
        assert served.process.poll() is None


def test_qemu_cpu_samples_one_process_for_every_side() -> None:
    import os

    sampler = common.Samplers(qemu_cpu(os.getpid(), ("ours", "peer")))
    for side in ("ours", "peer"):
        sample = sampler(side, "job", 0, "begin")
        assert sample is not None and sample[QEMU_CPU] > 0
    assert qemu_cpu(None, ("ours",))("ours", "job", 0, "begin") is None


def test_a_server_that_cannot_start_fails_the_bench_with_its_log(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack, pytest.raises(common.BenchFailure, match="exited with status 2") as exc:
        serve(stack, tmp_path, "ours", "testdev", backends=["file:/nonexistent"])
    assert "testdev takes no --backend" in exc.value.detail


def test_bench_vfio_user_measures_reads_and_posted_writes_against_the_real_server(tmp_path: Path) -> None:
    from bench.vfio_user_cost import framing_cost, measure

    result = measure(200, 16, tmp_path)
    assert result["read"]["messages"] == 200  # each read one message, nothing else on the wire
    assert result["posted"]["messages"] == 200 + 13  # the posted writes and the reads that drain them
    for kind in ("read", "posted"):
        row = result[kind]
        assert row["server_cpu_us_per_message"] == pytest.approx(row["user_us_per_message"] + row["system_us_per_message"])
    assert result["read"]["round_trip_us"] > 0 and "round_trip_us" not in result["posted"]
    assert result["implementations"]["passthrough.user.framing"] in ("python", "cython")
    framing = framing_cost(repeats=2, batch=10)
    assert "python" in framing and all(row["recv_us"] > 0 and row["send_us"] > 0 for row in framing.values())


def test_a_traced_server_says_what_each_exit_was(tmp_path: Path) -> None:
    from bench.vfio_user import TRACE_EXITS, exits

    with contextlib.ExitStack() as stack:
        served = serve(stack, tmp_path, "ours", "testdev", env=TRACE_EXITS)
        sampler = served.sampler("ours")
        machine, bar0 = _attach_testdev(stack, served.socket)
        sampler("ours", "job", 0, "begin")
        for _ in range(3):
            machine.mmio.read(bar0 + r.ID, 4)
        machine.mmio.write(bar0 + r.SCRATCH, 4, 7)
        sampler("ours", "job", 0, "end")
        log = served.log.read_text()
    run = exits(log, 0, 1)
    assert run == {("read", 0, r.ID): 3, ("write", 0, r.SCRATCH): 1}
    whole = exits(log)
    assert whole[("command", "VERSION")] == 1 and whole[("read", 0, r.ID)] == 3
