from __future__ import annotations

from harness.guest import CheckResult, parse_check_line, parse_checks


def test_plain_lines() -> None:
    assert parse_check_line("DEVMODELS-CHECK net.link PASS") == CheckResult("net.link", True, "")
    assert parse_check_line("DEVMODELS-CHECK blk.read FAIL rc=1 short read\r\n") == CheckResult(
        "blk.read", False, "rc=1 short read")


def test_marker_after_kernel_noise_on_the_same_line() -> None:
    line = "[    2.1] e1000 0000:00:02.0: eth0: linkDEVMODELS-CHECK x PASS ok"
    assert parse_check_line(line) == CheckResult("x", True, "ok")


def test_non_check_lines() -> None:
    for line in ("", "DEVMODELS-DONE", "DEVMODELS-CHECK x MAYBE", "DEVMODELS-CHECK PASS", "hello"):
        assert parse_check_line(line) is None


def test_a_fail_is_never_hidden_by_a_later_pass() -> None:
    log = ["DEVMODELS-CHECK a FAIL first", "DEVMODELS-CHECK a PASS", "DEVMODELS-CHECK b PASS",
           "DEVMODELS-CHECK b PASS again"]
    assert parse_checks(log) == {"a": (False, "first"), "b": (True, "again")}
