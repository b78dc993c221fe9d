"""The suite's own guards: tests cannot vanish as skips in CI, nor hang it.

- ``DEVMODELS_REQUIRE_GUEST=1``: guest tests and host prerequisites cannot vanish as skips.
- pytest-timeout: a test that loops fails, named, and guest tests get ``GUEST_TIMEOUT``.

Each case runs a small test file in a fresh pytest (``pytester``) with the hooks of
``tests.prerequisites`` (or ``tests.conftest``) loaded, as the suite loads them.
"""

from __future__ import annotations

import pytest

from tests.prerequisites import ENV

pytest_plugins = ["pytester"]

GUEST_MODULE = """
import pytest
from tests.prerequisites import missing, need

pytestmark = pytest.mark.guest

@pytest.fixture(scope="module")
def image():
    pytest.skip("cannot build the guest image: no kernel package")

def test_a(image):
    pass

def test_b(image):
    pass

@pytest.mark.skipif(True, reason="QEMU 11.1 is not provisioned")
def test_marked():
    pass

def test_helper():
    need("fio not installed")

def test_present():
    need(None)

@pytest.mark.xfail(reason="known", run=False)
def test_expected_failure():
    pass
"""

PLAIN_MODULE = """
import pytest
from tests.prerequisites import missing, prerequisite

@prerequisite("needs root")
def test_root():
    pass

@prerequisite(None)
def test_root_present():
    pass

def test_qemu_helper():
    missing("qemu-system-x86_64 not found")

def test_ordinary_skip():
    pytest.skip("this filesystem has no O_DIRECT")
"""


def _run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_it=source)
    return pytester.runpytest("-p", "tests.prerequisites", "-p", "no:cacheprovider", "-rA",
                              "-W", "ignore::pytest.PytestUnknownMarkWarning",
                              "-W", "ignore::pytest.PytestAssertRewriteWarning")


def test_without_the_switch_missing_prerequisites_skip(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    _run(pytester, GUEST_MODULE).assert_outcomes(skipped=4, passed=1, xfailed=1)
    _run(pytester, PLAIN_MODULE).assert_outcomes(skipped=3, passed=1)


def test_with_the_switch_every_guest_skip_fails_naming_its_reason(pytester: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1")
    result = _run(pytester, GUEST_MODULE)
    result.assert_outcomes(errors=3, failed=1, passed=1, xfailed=1)  # errors: failed in setup
    text = result.stdout.str()
    assert text.count("cannot build the guest image: no kernel package") >= 2  # both tests of the fixture
    assert "guest test test_it.py::test_a skipped in setup" in text
    assert "QEMU 11.1 is not provisioned" in text
    assert "fio not installed" in text
    assert f"{ENV}=1 and a required prerequisite is missing" in text


def test_with_the_switch_marked_prerequisites_fail_and_other_skips_stay(pytester: pytest.Pytester,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1")
    result = _run(pytester, PLAIN_MODULE)
    result.assert_outcomes(errors=1, failed=1, passed=1, skipped=1)
    text = result.stdout.str()
    assert "needs root" in text and "qemu-system-x86_64 not found" in text
    assert "SKIPPED [1] test_it.py" in text and "no O_DIRECT" in text


def test_switch_zero_is_off(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "0")
    _run(pytester, GUEST_MODULE).assert_outcomes(skipped=4, passed=1, xfailed=1)


TIMEOUT_MODULE = """
import pytest

pytestmark = pytest.mark.guest

def test_guest_default(request):
    print("LIMIT", request.node.get_closest_marker("timeout").args)

@pytest.mark.timeout(7)
def test_guest_own_limit(request):
    print("LIMIT", request.node.get_closest_marker("timeout").args)
"""

LOOP_MODULE = """
def test_spins_forever():
    while True:
        pass

def test_after_it_runs():
    pass
"""


def test_guest_tests_get_the_guest_timeout(pytester: pytest.Pytester) -> None:
    from tests.conftest import GUEST_TIMEOUT

    pytester.makepyfile(test_it=TIMEOUT_MODULE)
    result = pytester.runpytest("-p", "tests.conftest", "-p", "no:cacheprovider", "-s",
                                "-W", "ignore::pytest.PytestAssertRewriteWarning")
    result.assert_outcomes(passed=2)
    assert f"LIMIT ({GUEST_TIMEOUT},)" in result.stdout.str() and "LIMIT (7,)" in result.stdout.str()


def test_a_looping_test_fails_named_and_the_run_goes_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it=LOOP_MODULE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "timeout=1", "-o",
                                           "timeout_method=signal", timeout=60)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*FAILED test_it.py::test_spins_forever - Failed: Timeout (>1.0s)*"])
