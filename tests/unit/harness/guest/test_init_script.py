from __future__ import annotations

import shutil
import subprocess


from harness.guest import BUILTIN_TESTS, parse_checks
from harness.guest._init import MODULE_LIST, TEST_SCRIPT, TESTS_DIR, render_helpers, render_init
from tests.prerequisites import prerequisite

BUSYBOX = shutil.which("busybox")
needs_busybox = prerequisite(None if BUSYBOX else "busybox not installed (apt-get install busybox-static)")


def _run_helpers(script: str) -> str:
    assert BUSYBOX is not None
    proc = subprocess.run([BUSYBOX, "sh", "-c", render_helpers() + "\n" + script],
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.stdout


def test_init_loads_modules_runs_the_test_and_powers_off() -> None:
    init = render_init()
    assert init.startswith("#!/bin/sh\n")
    for needed in ("mount -t proc proc /proc", "mount -t sysfs sysfs /sys", "mount -t devtmpfs devtmpfs /dev",
                   f"done < {MODULE_LIST}", 'insmod "$_i_mod"', "devmodels.test", f"{TESTS_DIR}/",
                   TEST_SCRIPT, "echo DEVMODELS-DONE", "poweroff -f"):
        assert needed in init, needed
    assert "modprobe" not in init
    assert init.index("echo DEVMODELS-DONE") < init.index("poweroff -f")


def test_init_defines_the_check_helpers() -> None:
    init = render_init()
    for helper in ("report()", "check()", "check_module()", "wait_for()", "cmdline_value()", "pci_driver()",
                   "check_pci_driver()"):
        assert helper in init
    assert "DEVMODELS-CHECK" in init and "@" not in init.replace("$@", "")


@needs_busybox
def test_init_is_valid_busybox_shell() -> None:
    assert BUSYBOX is not None
    subprocess.run([BUSYBOX, "sh", "-n", "-c", render_init()], check=True)


@needs_busybox
def test_check_reports_pass_and_fail_with_detail() -> None:
    out = _run_helpers('check good true\ncheck bad sh -c "echo first; echo why it failed; exit 3"\n'
                       'report manual FAIL some detail\nreport bare PASS\n')
    assert parse_checks(out.splitlines()) == {
        "good": (True, ""),
        "bad": (False, "rc=3 why it failed"),
        "manual": (False, "some detail"),
        "bare": (True, ""),
    }


@needs_busybox
def test_check_returns_the_command_status() -> None:
    out = _run_helpers("check a false || echo RC-NONZERO\ncheck b true && echo RC-ZERO\n")
    assert "RC-NONZERO" in out and "RC-ZERO" in out


@needs_busybox
def test_wait_for_times_out_and_succeeds() -> None:
    out = _run_helpers("wait_for /nonexistent/x 0 || echo GAVE-UP\nwait_for / 1 && echo FOUND\n")
    assert "GAVE-UP" in out and "FOUND" in out


def test_smoke_test_is_embedded_and_checks_modules() -> None:
    assert "check_module" in BUILTIN_TESTS["smoke"] and MODULE_LIST in BUILTIN_TESTS["smoke"]
