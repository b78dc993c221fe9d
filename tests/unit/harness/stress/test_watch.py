"""The hang rule of the stress mode: progress groups and console silence, on a test clock."""

from __future__ import annotations

from harness.stress._watch import LoadWatch, parse_progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_parse_into_pairs_even_after_kernel_noise() -> None:
    assert parse_progress("[ 3.1] x STRESS-PROGRESS io=1,2,3,4 inflight=0 irq=7") == {
        "io": "1,2,3,4", "inflight": "0", "irq": "7"}
    assert parse_progress("STRESS-BEGIN disk vda") is None


def test_no_stall_before_the_load_begins_however_long_the_boot() -> None:
    clock = Clock()
    watch = LoadWatch(("io",), clock)
    clock.now += 1000
    assert watch.stall(30) is None and not watch.running


def test_a_group_that_stops_changing_is_a_hang_even_while_lines_keep_coming() -> None:
    clock = Clock()
    watch = LoadWatch(("tcp", "icmp"), clock)
    watch.feed("STRESS-BEGIN nic eth0")
    for step in range(20):
        clock.now += 2
        watch.feed(f"STRESS-PROGRESS io=1 tcp={step},{step} icmp=5 irq=1")  # icmp stuck at 5
    stall = watch.stall(30)
    assert stall is not None and stall.startswith("icmp counters unchanged") and "at 5" in stall
    assert watch.recent()[-1].startswith("STRESS-PROGRESS io=1 tcp=19,19")


def test_changing_counters_are_progress() -> None:
    clock = Clock()
    watch = LoadWatch(("io",), clock)
    watch.feed("STRESS-BEGIN disk vda")
    for step in range(50):
        clock.now += 2
        watch.feed(f"STRESS-PROGRESS io={step},0,0,0 inflight=32 irq={step}")
        assert watch.stall(30) is None


def test_a_silent_console_is_a_hang() -> None:
    clock = Clock()
    watch = LoadWatch(("io",), clock)
    watch.feed("STRESS-BEGIN disk vda")
    watch.feed("STRESS-PROGRESS io=1,0,0,0")
    clock.now += 31
    stall = watch.stall(30)
    assert stall is not None and "no progress line" in stall


def test_nothing_stalls_after_the_end_and_later_lines_are_ignored() -> None:
    clock = Clock()
    watch = LoadWatch(("io",), clock)
    watch.feed("STRESS-BEGIN disk vda")
    watch.feed("STRESS-FIO-END")  # not the end of the load
    assert watch.running
    watch.feed("STRESS-END")
    assert watch.ended_at == clock.now and not watch.running
    clock.now += 1000
    watch.feed("STRESS-PROGRESS io=9")
    assert watch.stall(30) is None and watch.progress_lines == 0
