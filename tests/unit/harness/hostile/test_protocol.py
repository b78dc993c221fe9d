"""The hostile guest's console/handshake lines, parsed as the host reads them."""

from __future__ import annotations

import pytest

from harness.hostile._protocol import Begin, End, Finished, GuestError, Outcome, parse_line


def test_begin_end_finished_error() -> None:
    assert parse_line("HOSTILE-BEGIN 3 desc-loop\n") == Begin(3, "desc-loop")
    assert parse_line("HOSTILE-END 3 desc-loop PASS ") == End(3, "desc-loop", Outcome.PASS, "")
    assert parse_line("HOSTILE-END 4 x DEVICE-DEAD no ARP reply in 8000 ms") == End(
        4, "x", Outcome.DEVICE_DEAD, "no ARP reply in 8000 ms")
    assert parse_line("HOSTILE-FINISHED 12") == Finished(12)
    assert parse_line("HOSTILE-ERROR no PCI function 8086:(100e...)") == GuestError("no PCI function 8086:(100e...)")


def test_a_marker_after_a_printk_on_the_same_line_is_found() -> None:
    assert parse_line("[    3.1] e1000: eth0 NIC Link is Up HOSTILE-BEGIN 1 tdt-beyond-ring") == Begin(1, "tdt-beyond-ring")


@pytest.mark.parametrize("line", ["", "hostile: unbound 0000:00:02.0", "HOSTILE-BEGIN x y", "DEVMODELS-DONE"])
def test_other_lines_are_not_events(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize("outcome", ["SERVER-DIED", "VMM-DIED", "NOT-RUN", "SKIPPED", "BOGUS"])
def test_the_guest_cannot_report_what_only_the_host_knows(outcome: str) -> None:
    assert isinstance(parse_line(f"HOSTILE-END 1 x {outcome} detail"), GuestError)
