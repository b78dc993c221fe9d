"""``bench/paradigms.py``: the guest script, and the bench end to end with a fake guest at its
boot seam: every metric of each pair with its emulated/paravirtual ratio and run count,
latency from the QD1 rates, exits and CPU per I/O from each device's own server, and a
failure named by job and device."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from bench import common
from bench import paradigms as b
from bench.testing import FakeGuest, finished, fio_output, framed

# per device: echo run ns (count 1000), fio IOPS at QD32 and QD1, exits and server CPU ns per unit
RATES = {"e1000": 4_000_000_000, "virtio-net": 1_000_000_000}
IOPS = {"ahci": (1000.0, 200.0), "virtio-blk": (3000.0, 500.0)}
EXITS = {"e1000": 10.0, "virtio-net": 2.0, "ahci": 3.0, "virtio-blk": 0.5}


def _script(params: b.Params, special: Mapping[tuple[str, str, int], list[str]] | None = None) -> list[str]:
    lines = ["DEVMODELS-CHECK bench.bound PASS e1000 virtio-net",
             "DEVMODELS-CHECK bench.disks PASS ahci=/dev/sda virtio-blk=/dev/vda"]
    for key in b.plan(params).keys:
        side, job, run = key
        if key in (special or {}):
            lines += (special or {})[key]
        elif job == "echo":
            lines += framed(side, job, run, [f"ECHO 0 {RATES[side]} {params.count}"])
        elif job == "tcp":
            lines += framed(side, job, run, ["TCP 0 1000000000 0"])
        else:
            iops = IOPS[side][0 if job.endswith("qd32") else 1]
            lines += framed(side, job, run, fio_output("read", iops=iops, ios=int(iops * 10)))
    return [*lines, *finished()]


class _Counters:
    """Each device's server: EXITS messages and 100 us of CPU per unit of work (echo or I/O;
    per MiB for TCP); QEMU 50 us per unit, from the fake figures' own counts."""

    def __init__(self, params: b.Params) -> None:
        self.params, self.total, self.lost = params, {s: 0.0 for s in b.DEVICES}, None

    def __call__(self, side: str, job: str, run: int, edge: str) -> dict[str, float]:
        if edge == "end":
            if job == "echo":
                self.total[side] += self.params.count
            elif job == "tcp":
                self.total[side] += self.params.mib
            else:
                self.total[side] += IOPS[side][0 if job.endswith("qd32") else 1] * 10
        n = self.total[side]
        return {"messages": EXITS[side] * n, "cpu_ns": 1e5 * n, "qemu_cpu_ns": 5e4 * n}


def _boot(**script: object) -> Callable[..., contextlib.AbstractContextManager[b.Booted]]:
    @contextlib.contextmanager
    def boot(config: common.GuestConfig, params: b.Params, work: Path) -> Iterator[b.Booted]:
        assert config.path == "vfio-user" and config.qemu.label == "11.1"
        yield b.Booted(FakeGuest(_script(params, **script), version="11.1.99-fake"), _Counters(params))
    return boot


ARGS = ["--runs", "2", "--count", "1000", "--mib", "5", "--runtime", "5"]


@pytest.fixture(autouse=True)
def _quick_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(b.Params, "deadlines", lambda self: common.Deadlines(start=0.5, job=0.5, gap=0.5, finish=0.5))


def test_every_metric_has_its_ratio_and_run_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert b.main([*ARGS, "--json"], boot=_boot()) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["claim"] == b.CLAIM and out["guest"]["path"] == "vfio-user"
    net = out["pairs"]["net"]["metrics"]
    assert (out["pairs"]["net"]["emulated"], out["pairs"]["net"]["paravirtual"]) == ("e1000", "virtio-net")
    assert net["echo_rate"]["ratio"] == pytest.approx(0.25) and net["echo_rate"]["ratio_runs"] == 2
    assert net["echo_latency"]["emulated"] == pytest.approx(4000.0) and net["echo_latency"]["ratio"] == pytest.approx(4.0)
    assert net["exits_per_echo"]["ratio"] == pytest.approx(5.0) and net["exits_per_echo"]["ratio_runs"] == 2
    assert net["server_cpu_per_echo"]["emulated"] == pytest.approx(100.0)
    assert net["host_cpu_per_echo"]["paravirtual"] == pytest.approx(150.0)
    disk = out["pairs"]["disk"]["metrics"]
    assert disk["iops_qd32"]["ratio"] == pytest.approx(1 / 3)
    assert disk["latency_qd1"]["emulated"] == pytest.approx(5000.0) and disk["latency_qd1"]["ratio"] == pytest.approx(2.5)
    assert disk["exits_per_io_qd32"]["ratio"] == pytest.approx(6.0)
    assert b.main(ARGS, boot=_boot()) == 0
    text = capsys.readouterr().out
    assert "claim: full emulation costs 2-4x" in text
    assert any(line.split()[-2:] == ["5.00", "2"] and "exits per echo" in line for line in text.splitlines())


def test_a_failed_fio_run_names_the_job_and_device(capsys: pytest.CaptureFixture[str]) -> None:
    bad = framed("virtio-blk", "randread-4k-qd1", 1, fio_output("read", error=5), status=1)
    assert b.main([*ARGS, "--json"], boot=_boot(special={("virtio-blk", "randread-4k-qd1", 1): bad})) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["job"], doc["side"], doc["run"]) == ("randread-4k-qd1", "virtio-blk", 1) and "ratio" not in doc


def test_guest_script_runs_every_planned_job_on_its_device() -> None:
    script = b.guest_script()
    for side, (bdf, net, driver) in b.DEVICES.items():
        assert bdf in script
        if net:
            assert f"{side}) echo {bdf} {net} {driver} ;;" in script
    for job, spec in b.FIO.items():
        assert f"bench_job $side {job} $i /usr/bin/fio --name={job}" in script and spec.args in script
    assert "bench_job $side echo $i echo_run $(host_of $side)" in script and r"nsecs.*/\1/p" in script
    assert {job for _, job, _ in b.plan(b.Params(1, 1, 1, 1, 1)).keys} == set(b.JOBS)


@pytest.mark.parametrize("argv", [["--qemu", "7.2"], ["--path", "proxy"], ["--runs", "0"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        b.main(argv, boot=_boot())
    assert exc.value.code == 2
