"""Reading fio and ping, judging a run, adding a path's runs up, and the output."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.stress._report import as_json, format_table
from harness.stress._results import RunResult, parse_fio, parse_ping, summarize
from tests.prerequisites import prerequisite

_FIO = shutil.which("fio")


def _fio(*args: str, cwd: Path) -> tuple[int, str]:
    assert _FIO is not None
    proc = subprocess.run([_FIO, *args, "--output-format=json"], cwd=cwd, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@prerequisite(None if _FIO else "fio is not installed (apt-get install fio)")
def test_a_clean_verified_randrw_run_reads_as_figures_without_errors(tmp_path: Path) -> None:
    (tmp_path / "f.img").write_bytes(bytes(4 << 20))
    status, text = _fio("--name=s", "--filename=f.img", "--rw=randrw", "--bs=4k", "--iodepth=4", "--size=2M",
                        "--verify=crc32c", "--verify_backlog=64", "--verify_fatal=1", cwd=tmp_path)
    fio = parse_fio(f"STRESS-FIO-RC {status}", text)
    assert fio.readable and fio.status == 0 and fio.verify_errors == 0
    assert fio.write_bytes > 0 and fio.read_bytes >= fio.write_bytes  # reads include the verification


@prerequisite(None if _FIO else "fio is not installed (apt-get install fio)")
def test_a_corrupted_block_is_a_verify_error(tmp_path: Path) -> None:
    (tmp_path / "f.img").write_bytes(bytes(1 << 20))
    common = ["--name=s", "--filename=f.img", "--rw=randwrite", "--bs=4k", "--size=1M", "--verify=crc32c"]
    _fio(*common, "--do_verify=0", cwd=tmp_path)
    with open(tmp_path / "f.img", "r+b") as f:
        f.seek(5 * 4096 + 100)
        f.write(b"X" * 8)
    status, text = _fio(*common, "--verify_only", "--verify_fatal=1", cwd=tmp_path)
    fio = parse_fio(f"STRESS-FIO-RC {status}", text)
    assert fio.status != 0 and 84 in fio.job_errors
    assert fio.verify_messages and fio.verify_errors >= 2


def test_unreadable_or_failed_fio_output_never_passes() -> None:
    assert parse_fio("STRESS-FIO-RC 0", "no json here").verify_errors == 1
    good = json.dumps({"jobs": [{"jobname": "s", "error": 0, "job_runtime": 1000,
                                 "read": {"io_bytes": 4096, "total_ios": 1}, "write": {"io_bytes": 4096,
                                                                                      "total_ios": 1}}]})
    assert parse_fio("STRESS-FIO-RC 0", good).verify_errors == 0
    assert parse_fio("STRESS-FIO-RC 1", good).verify_errors == 1
    assert parse_fio(None, good).verify_errors == 0
    assert parse_fio("STRESS-FIO-RC 0", good + "\ncrc32c: verify failed at file /dev/vda offset 8192").verify_errors == 1


def test_busybox_ping_summary() -> None:
    line = "STRESS-PING rc=0 12000 packets transmitted, 11998 packets received, 0% packet loss round-trip ..."
    assert parse_ping(line) == (12000, 11998)
    assert parse_ping("STRESS-PING rc=1") is None


def _passing(path: str = "p", run: int = 1) -> RunResult:
    result = RunResult(path, run, began=True, ended=True, bytes_moved=1 << 20, mb_per_s=1.0, server_same=True,
                       ping=(100, 99))
    result.judge()
    return result


def test_a_run_passes_only_when_every_rule_holds() -> None:
    assert _passing().passed
    changes: list[tuple[dict[str, object], str]] = [({"hung": True, "hang": "io stuck"}, "hang"), ({"verify_errors": 2}, "verify"),
                         ({"data_errors": 1}, "data"), ({"server_same": False}, "server"),
                         ({"fallback": "the front-end disconnected"}, "vhost-user"),
                         ({"driver_messages": ["ata1: hard resetting link"]}, "driver"), ({"hogs": False}, "hog"),
                         ({"ended": False}, "never ended"), ({"bytes_moved": 0}, "no data")]
    for change, word in changes:
        result = _passing()
        for key, value in change.items():
            setattr(result, key, value)
        result.judge()
        assert not result.passed and any(word in p for p in result.problems), (change, result.problems)


def test_summary_adds_up_and_the_output_shows_it() -> None:
    bad = _passing(run=2)
    bad.hung, bad.hang = True, "tcp counters unchanged for 31 s"
    bad.diagnosis.append("last progress: STRESS-PROGRESS io=1")
    bad.judge()
    runs = [_passing(), bad]
    summary = summarize("vhost-user-net", "nic", "vhost-user", "7.2.22", "2", runs)
    assert (summary.runs, summary.passed_runs, summary.hangs, summary.ping_sent) == (2, 1, 1, 200)
    assert not summary.passed and summary.ping_loss == pytest.approx(1.0)
    text = format_table([summary], runs, 12.0)
    assert "vhost-user-net" in text and "FAIL" in text and "tcp counters unchanged" in text
    assert "last progress" in text
    data = json.loads(json.dumps(as_json([summary], runs, {"duration": 5}, 12.0)))
    assert data["passed"] is False and data["paths"][0]["hangs"] == 1 and len(data["runs"]) == 2
    assert summarize("x", "disk", "a", "q", "1", []).passed is False
