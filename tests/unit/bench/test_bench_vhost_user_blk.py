"""``bench/vhost_user_blk.py`` end to end with a fake guest at its boot seam: figures with run
counts and the QEMU version, and every failure (a hung job, an fio error, no figure, QEMU
gone) ends the bench with exit status 1 naming the job and the disk, never a null ratio."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from bench import common
from bench import vhost_user_blk as b
from bench.testing import FakeGuest, finished, fio_output, framed


def _script(params: b.Params, special: Mapping[tuple[str, str, int], list[str]] | None = None,
            stop_at: tuple[str, str, int] | None = None) -> list[str]:
    lines = ["DEVMODELS-CHECK bench.disks PASS ours=/dev/vda peer=/dev/vdb"]
    for key in common.Plan.interleaved(("ours", "peer"), params.jobs, params.runs).keys:
        if key == stop_at:
            return [*lines, f"BENCH-BEGIN {' '.join(map(str, key))}"]
        side, job, run = key
        spec = common.FIO_JOBS[job]
        output = fio_output(spec.direction, iops=1000.0 + (500 if side == "ours" else 0) + run,
                            bw_bytes=(2_000_000_000 if side == "ours" else 1_000_000_000), ios=10_000)
        lines += (special or {}).get(key) or framed(side, job, run, output)
    return [*lines, *finished()]


class _Cpu:
    """A sampler as ``ProcessCpu`` gives: CPU time growing 1 ms per sample."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, side: str, job: str, run: int, edge: str) -> Mapping[str, float]:
        self.n += 1
        return {"cpu_ns": 1e6 * self.n}


def _boot(then: str = "exit", **script: object) -> Callable[..., contextlib.AbstractContextManager[b.Booted]]:
    @contextlib.contextmanager
    def boot(config: common.GuestConfig, params: b.Params, work: Path) -> Iterator[b.Booted]:
        assert work.is_dir()
        yield b.Booted(FakeGuest(_script(params, **script), then=then), _Cpu(), None,  # type: ignore[arg-type]
                       "qemu-storage-daemon 7.2.0-fake")
    return boot


ARGS = ["--runs", "2", "--jobs", "randread-4k-qd32,seqread-1m"]


@pytest.fixture(autouse=True)
def _quick_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(b, "fio_deadlines", lambda runtime: common.Deadlines(start=0.5, job=0.5, gap=0.5, finish=0.5))


def test_figures_come_with_run_counts_and_the_qemu_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert b.main([*ARGS, "--json"], boot=_boot()) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ratio"] == pytest.approx(1500.5 / 1000.5) and out["ratio_runs"] == 2
    assert out["guest"]["qemu"] == "7.2.99-fake" and out["guest"]["barriers_kept"] is True
    assert (out["guest"]["smp"], out["guest"]["maxcpus"]) == (1, 2)
    row = out["jobs"]["seqread-1m"]
    assert (row["ours"], row["peer"], row["ratio"], row["ratio_runs"]) == (2000.0, 1000.0, 2.0, 2)
    # each run: 1 ms of CPU between its two samples, over 10,000 I/Os
    assert row["ours_server_cpu_us_per_io"] == pytest.approx(0.1) and row["peer_server_cpu_us_per_io_runs"] == 2
    assert out["peer_server"] == "qemu-storage-daemon 7.2.0-fake"

    assert b.main(ARGS, boot=_boot()) == 0
    text = capsys.readouterr().out
    assert "guest: QEMU 7.2.99-fake, TCG -smp 1,maxcpus=2, path vhost-user; barriers kept" in text
    assert "peer: qemu-storage-daemon 7.2.0-fake" in text
    header, *rows = text.splitlines()[2:]
    assert header.split()[4:6] == ["ratio", "runs"] and rows[0].split()[4:6] == ["1.50", "2"]


def _fails(argv: list[str], boot: Callable[..., contextlib.AbstractContextManager[b.Booted]],
           capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, object], str]:
    assert b.main([*argv, "--json"], boot=boot) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert "ratio" not in doc and "ours_iops" not in doc
    return doc, err


def test_a_hung_job_fails_naming_job_and_disk(capsys: pytest.CaptureFixture[str]) -> None:
    doc, err = _fails(ARGS, _boot("hang", stop_at=("peer", "seqread-1m", 1)), capsys)
    assert (doc["job"], doc["side"], doc["run"]) == ("seqread-1m", "peer", 1)
    assert "bench vhost-user-blk: FAILED [QEMU" in err
    assert "guest job seqread-1m on peer (run 2 of 2): hung: no BENCH-END within 0.5 s; QEMU killed" in err


def test_qemu_gone_in_the_middle_of_a_job(capsys: pytest.CaptureFixture[str]) -> None:
    doc, err = _fails(ARGS, _boot("exit", stop_at=("ours", "randread-4k-qd32", 1)), capsys)
    assert (doc["job"], doc["side"]) == ("randread-4k-qd32", "ours")
    assert "QEMU exited" in str(doc["error"])


@pytest.mark.parametrize(("output", "status", "words"), [
    (fio_output("read", error=5), 1, "error 5 (Input/output error)"),
    (["fio: io_u error on file /dev/vda: Input/output error"], 1, "fio printed no JSON"),
    (fio_output("read", iops=0.0, ios=0), 0, "no read I/O"),
])
def test_an_fio_run_without_a_figure_fails_naming_job_and_disk(output: list[str], status: int, words: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    key = ("ours", "seqread-1m", 0)
    doc, _ = _fails(ARGS, _boot(special={key: framed(*key, output, status)}), capsys)
    assert (doc["job"], doc["side"], doc["run"]) == ("seqread-1m", "ours", 0)
    assert words in str(doc["reason"])


def test_disks_not_found_fails(capsys: pytest.CaptureFixture[str]) -> None:
    @contextlib.contextmanager
    def boot(config: common.GuestConfig, params: b.Params, work: Path) -> Iterator[b.Booted]:
        yield b.Booted(FakeGuest(["DEVMODELS-CHECK bench.disks FAIL ours= peer=/dev/vda", "DEVMODELS-DONE"]))

    doc, _ = _fails(ARGS, boot, capsys)
    assert doc["reason"] == "guest check bench.disks failed: ours= peer=/dev/vda"


@pytest.mark.parametrize("argv", [["--maxcpus", "1"], ["--jobs", "nope"], ["--runs", "0"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        b.main(argv, boot=_boot())
    assert exc.value.code == 2


def test_qemu_11_1_is_a_choice_for_vhost_user(capsys: pytest.CaptureFixture[str]) -> None:
    assert b.main([*ARGS, "--json", "--qemu", "11.1"], boot=_boot()) == 0
    guest = json.loads(capsys.readouterr().out)["guest"]
    assert (guest["qemu_label"], guest["smp"], guest["maxcpus"], guest["barriers_kept"]) == ("11.1", 1, 1, True)


def test_guest_script_frames_every_job_for_both_disks() -> None:
    script = b.guest_script()
    assert "bench_job()" in script and f'"$s" = "{b.OUR_SERIAL}"' in script
    for job, spec in common.FIO_JOBS.items():
        assert f"bench_job $side {job} $i /usr/bin/fio --name={job}" in script and spec.args in script
    assert script.rstrip().endswith("report bench.done PASS")
