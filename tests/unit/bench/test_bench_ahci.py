"""``bench/ahci.py``: the guest script, the bench end to end with a fake guest at its boot seam
(figures with run counts, our server's counters per run, failures named by job and disk),
and the host-driven mode against the real server process (no guest)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from bench import ahci as b
from bench import common
from bench.testing import FakeGuest, finished, fio_output, framed


def test_guest_script_finds_disks_by_pci_function_and_frames_every_job() -> None:
    script = b.guest_script()
    assert f"disk_at {b.OURS_BDF}" in script and f"disk_at {b.PEER_BDF}" in script
    assert "/ata*)" in script  # the disk's path goes through an ATA port of that function
    for job, spec in common.FIO_JOBS.items():
        assert f"bench_job $side {job} $i /usr/bin/fio --name={job}" in script and spec.args in script
    assert "--ioengine=libaio --direct=1" in script


def _script(params: b.Params, special: Mapping[tuple[str, str, int], list[str]] | None = None) -> list[str]:
    lines = ["DEVMODELS-CHECK bench.disks PASS ours=/dev/sda peer=/dev/sdb"]
    for key in common.Plan.interleaved(("ours", "peer"), params.jobs, params.runs).keys:
        side, job, run = key
        spec = common.FIO_JOBS[job]
        value = {"ours": [100.0, 300.0, 200.0], "peer": [400.0, 400.0, 500.0]}[side][run]
        output = fio_output(spec.direction, iops=value, bw_bytes=int(value * 1e6), ios=int(value * 10))
        lines += (special or {}).get(key) or framed(side, job, run, output)
    return [*lines, *finished()]


class _Counters:
    """As ``MpqemuStats`` samples our server: 30 BAR accesses and 2 ms of CPU per run, except
    that the answer to one signal (``lose``) never comes and sampling stops there."""

    def __init__(self, lose: tuple[str, str, int, str] | None = None) -> None:
        self.n, self.lose, self.lost = 0, lose, None

    def __call__(self, side: str, job: str, run: int, edge: str) -> Mapping[str, float] | None:
        if side != "ours" or self.lost is not None:
            return None
        if (side, job, run, edge) == self.lose:
            self.lost = "no stats line"
            return None
        self.n += 1
        return {"messages": 30.0 * self.n, "bar_reads": 10.0 * self.n, "bar_writes": 20.0 * self.n,
                "cpu_ns": 2e6 * self.n}


def _boot(counters: _Counters | None = None, then: str = "exit",
          **script: object) -> Callable[..., contextlib.AbstractContextManager[b.Booted]]:
    @contextlib.contextmanager
    def boot(config: common.GuestConfig, params: b.Params, work: Path) -> Iterator[b.Booted]:
        guest = FakeGuest(_script(params, **script), then=then)  # type: ignore[arg-type]
        yield b.Booted(guest, counters or _Counters())
    return boot


ARGS = ["--runs", "3", "--json"]


def test_medians_ratios_run_counts_and_accesses_per_io(capsys: pytest.CaptureFixture[str]) -> None:
    assert b.main(ARGS, boot=_boot()) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["ours_iops"], s["peer_iops"], s["ratio"], s["ratio_runs"]) == (200.0, 400.0, 0.5, 3)
    assert (s["seqread_ratio"], s["seqread_ratio_runs"], s["seqwrite_ratio_runs"]) == (0.5, 3, 3)
    row = s["jobs"]["randread-4k-qd32"]
    # run 0: 30 accesses over 1000 I/Os; run 1 over 3000; run 2 over 2000 -> median 30/2000
    assert row["ours_accesses_per_io"] == pytest.approx(0.015) and row["ours_accesses_per_io_runs"] == 3
    assert row["ours_server_cpu_us_per_io"] == pytest.approx(1.0) and len(row["ours_counters"]) == 3
    assert s["guest"]["qemu"] == "7.2.99-fake" and s["guest"]["path"] == "proxy" and s["warnings"] == []


def test_a_lost_stats_line_shifts_no_run_and_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    assert b.main(ARGS, boot=_boot(_Counters(lose=("ours", "randread-4k-qd32", 1, "end")))) == 0
    s = json.loads(capsys.readouterr().out)
    row = s["jobs"]["randread-4k-qd32"]
    assert row["ours_accesses_per_io"] == pytest.approx(30 / 1000) and row["ours_accesses_per_io_runs"] == 1
    assert row["ours_counters"][1:] == [None, None]
    assert s["jobs"]["seqwrite-1m"]["ours_accesses_per_io"] is None
    assert s["warnings"] == ["server counters: no stats line"]
    assert b.main(ARGS[:-1], boot=_boot(_Counters(lose=("ours", "randread-4k-qd32", 1, "end")))) == 0
    text = capsys.readouterr().out
    assert "(1/3)" in text and "warning: server counters: no stats line" in text


def test_an_fio_error_fails_naming_job_and_disk(capsys: pytest.CaptureFixture[str]) -> None:
    key = ("peer", "seqwrite-1m", 2)
    assert b.main(ARGS, boot=_boot(special={key: framed(*key, fio_output("write", error=5), 1)})) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert (doc["job"], doc["side"], doc["run"]) == ("seqwrite-1m", "peer", 2) and "ratio" not in doc
    assert "guest job seqwrite-1m on peer (run 3 of 3): no figure: fio reported job job error 5" in err


def test_a_hung_job_fails(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(b, "fio_deadlines", lambda runtime: common.Deadlines(start=0.3, job=0.3))
    params = b.Params(3, 10, 256, tuple(common.FIO_JOBS))
    lines = _script(params)
    cut = lines.index("BENCH-BEGIN ours seqread-1m 1") + 1

    @contextlib.contextmanager
    def boot(config: common.GuestConfig, params: b.Params, work: Path) -> Iterator[b.Booted]:
        yield b.Booted(FakeGuest(lines[:cut], then="hang"))

    assert b.main(ARGS, boot=boot) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["job"], doc["side"], doc["run"]) == ("seqread-1m", "ours", 1) and "hung" in doc["reason"]


@pytest.mark.parametrize("argv", [["--jobs", "nope"], ["--runs", "0"], ["--jobs", ""], ["--qemu", "11.1"],
                                  ["--maxcpus", "1"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        b.main(argv, boot=_boot())
    assert exc.value.code == 2


def test_host_mode_drives_the_real_server(tmp_path: Path) -> None:
    out = b.run_host(seconds=0.5, size_mb=8, workdir=tmp_path, think_us=0.0)
    assert out["ios"] > 0 and out["iops"] > 0
    # each command is issued with PxSACT then PxCI; completions need a handful more
    assert 2.0 < out["accesses_per_io"] < 10.0
    assert {"W PxSACT", "W PxCI", "R IS"} <= set(out["round_trips"])
