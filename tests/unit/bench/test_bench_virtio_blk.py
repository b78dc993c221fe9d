"""``bench/virtio_blk.py`` end to end with a fake guest at its boot seam: the ratio with its run
count, socket messages and CPU per I/O for our server and for QEMU on each disk, failures
named by job and disk, and the options it refuses."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from bench import common
from bench import virtio_blk as b
from bench.testing import FakeGuest, finished, fio_output, framed


def _script(params: b.Params, special: Mapping[tuple[str, str, int], list[str]] | None = None) -> list[str]:
    lines = ["DEVMODELS-CHECK bench.disks PASS ours=/dev/vda peer=/dev/vdb"]
    for key in common.Plan.interleaved(("ours", "peer"), params.jobs, params.runs).keys:
        side, job, run = key
        output = fio_output(common.FIO_JOBS[job].direction, iops=2000.0 if side == "ours" else 1000.0 + run,
                            bw_bytes=1_000_000_000, ios=10_000)
        lines += (special or {}).get(key) or framed(side, job, run, output)
    return [*lines, *finished()]


class _Counters:
    """Per run of 10,000 I/Os: ours 2,500 messages and 10 ms of server CPU; QEMU 20 ms for our
    disk's runs and 40 ms for the peer's."""

    def __init__(self) -> None:
        self.runs = {"ours": 0, "peer": 0}
        self.lost = None

    def __call__(self, side: str, job: str, run: int, edge: str) -> Mapping[str, float]:
        self.runs[side] += edge == "end"
        n = self.runs[side]
        if side == "ours":
            return {"messages": 2500.0 * n, "cpu_ns": 1e7 * n, "qemu_cpu_ns": 2e7 * n}
        return {"qemu_cpu_ns": 4e7 * n}


def _boot(seen: list[b.Params] | None = None, **script: object) -> Callable[..., contextlib.AbstractContextManager[b.Booted]]:
    @contextlib.contextmanager
    def boot(config: common.GuestConfig, params: b.Params, work: Path) -> Iterator[b.Booted]:
        assert work.is_dir() and config.qemu.label == "11.1" and config.path == "vfio-user"
        if seen is not None:
            seen.append(params)
        yield b.Booted(FakeGuest(_script(params, **script), version="11.1.99-fake"), _Counters())
    return boot


ARGS = ["--runs", "2", "--jobs", "randread-4k-qd32,seqread-1m"]


@pytest.fixture(autouse=True)
def _quick_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(b, "fio_deadlines", lambda runtime: common.Deadlines(start=0.5, job=0.5, gap=0.5, finish=0.5))


def test_ratio_messages_and_cpu_per_io_for_both_disks(capsys: pytest.CaptureFixture[str]) -> None:
    assert b.main([*ARGS, "--json"], boot=_boot()) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ratio"] == pytest.approx(2000.0 / 1000.5) and out["ratio_runs"] == 2
    assert out["guest"]["qemu"] == "11.1.99-fake" and out["guest"]["path"] == "vfio-user"
    row = out["jobs"]["randread-4k-qd32"]
    assert row["ours_messages_per_io"] == pytest.approx(0.25) and row["ours_messages_per_io_runs"] == 2
    assert row["ours_server_cpu_us_per_io"] == pytest.approx(1.0)
    assert row["ours_qemu_cpu_us_per_io"] == pytest.approx(2.0) and row["peer_qemu_cpu_us_per_io"] == pytest.approx(4.0)
    assert row["ours_host_cpu_us_per_io"] == pytest.approx(3.0)
    assert out["ours_messages_per_io"] == pytest.approx(0.25) and out["ours_messages_per_io_runs"] == 2  # headline
    assert out["parameters"]["packed"] is False and out["parameters"]["peer_drive"] == "cache=writeback,aio=threads"
    assert b.main(ARGS, boot=_boot()) == 0
    text = capsys.readouterr().out
    assert "path vfio-user" in text and "rings: split" in text and "QEMU CPU us/IO peer" in text


def test_packed_and_cache_none_reach_both_disks(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[b.Params] = []
    assert b.main([*ARGS, "--json", "--packed", "--cache", "none"], boot=_boot(seen)) == 0
    out = json.loads(capsys.readouterr().out)
    assert seen[0].packed and seen[0].cache == "none"
    assert out["parameters"]["ours_opts"] == ["direct=on"] and out["parameters"]["peer_drive"].startswith("cache=none")


def test_an_fio_error_fails_naming_job_and_disk(capsys: pytest.CaptureFixture[str]) -> None:
    bad = framed("peer", "seqread-1m", 1, fio_output("read", error=5), status=1)
    assert b.main([*ARGS, "--json"], boot=_boot(special={("peer", "seqread-1m", 1): bad})) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["job"], doc["side"], doc["run"]) == ("seqread-1m", "peer", 1) and "ratio" not in doc


@pytest.mark.parametrize("argv", [["--path", "proxy"], ["--qemu", "7.2"], ["--jobs", "nope"], ["--runs", "0"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        b.main(argv, boot=_boot())
    assert exc.value.code == 2


def test_served_device_args_pin_the_pci_function(tmp_path: Path) -> None:
    from bench.vfio_user import Served

    served = Served("ours", tmp_path / "s.sock", tmp_path / "s.log", None)  # type: ignore[arg-type]
    flag, spec = served.device_args("04.0")
    assert flag == "-device"
    assert json.loads(spec) == {"driver": "vfio-user-pci", "id": "ours", "addr": "04.0",
                                "socket": {"path": str(tmp_path / "s.sock"), "type": "unix"}}
