"""IrqfdLevelSink and IntxPort: INTx as irqfd + resample, as QEMU's remote iohub does it."""

from __future__ import annotations

import logging
import os

import pytest

from devmodels import RecordingLevelSink
from mpqemu import IntxPort, IrqfdLevelSink
from mpqemu.irqfd import is_eventfd


def _count(fd: int) -> int:
    """Read and clear an eventfd counter (0 if nothing was written)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.fixture
def pair():
    """(sink, our irqfd copy, our resample copy)."""
    irqfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    resample = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    sink = IrqfdLevelSink(os.dup(irqfd), os.dup(resample))
    yield sink, irqfd, resample
    sink.close()
    os.close(irqfd)
    os.close(resample)


def test_rising_edge_writes_the_irqfd_once(pair) -> None:  # type: ignore[no-untyped-def]
    sink, irqfd, _ = pair
    sink.set_level(True)
    sink.set_level(True)
    assert _count(irqfd) == 1
    sink.set_level(False)
    assert _count(irqfd) == 0
    assert sink.signals == 1


def test_resample_reasserts_while_high(pair) -> None:  # type: ignore[no-untyped-def]
    sink, irqfd, resample = pair
    sink.set_level(True)
    assert _count(irqfd) == 1
    os.eventfd_write(resample, 1)  # the guest's EOI
    sink.on_resample()
    assert _count(irqfd) == 1
    assert _count(resample) == 0  # drained
    assert sink.resamples == 1


def test_resample_after_the_line_fell_sends_nothing(pair) -> None:  # type: ignore[no-untyped-def]
    sink, irqfd, resample = pair
    sink.set_level(True)
    _count(irqfd)
    sink.set_level(False)
    os.eventfd_write(resample, 1)
    sink.on_resample()
    assert _count(irqfd) == 0


def test_spurious_resample_wakeup_is_harmless(pair) -> None:  # type: ignore[no-untyped-def]
    sink, irqfd, _ = pair
    sink.set_level(True)
    _count(irqfd)
    sink.on_resample()  # nothing to read
    assert _count(irqfd) == 0 and sink.resamples == 0


def test_close_closes_both_and_later_calls_are_dropped(pair) -> None:  # type: ignore[no-untyped-def]
    sink, irqfd, _ = pair
    mine = (sink.irqfd, sink.resamplefd)
    sink.close()
    for fd in mine:
        with pytest.raises(OSError):
            os.fstat(fd)
    sink.set_level(True)
    sink.on_resample()
    sink.close()
    assert _count(irqfd) == 0


def test_write_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    r, w = os.pipe()
    os.close(w)
    resample = os.eventfd(0, os.EFD_NONBLOCK)
    sink = IrqfdLevelSink(r, resample)  # a read-only pipe end: the write fails with EBADF
    with caplog.at_level(logging.ERROR, logger="mpqemu"):
        sink.set_level(True)
    assert sink.signals == 0 and "writing irqfd" in caplog.text
    sink.close()


def test_is_eventfd() -> None:
    efd = os.eventfd(0)
    r, w = os.pipe()
    try:
        assert is_eventfd(efd)
        assert not is_eventfd(r)
        assert not is_eventfd(10_000)  # not open
    finally:
        for fd in (efd, r, w):
            os.close(fd)


def test_intx_port_forwards_and_replays_the_level() -> None:
    port = IntxPort()
    first = RecordingLevelSink()
    port.set_level(True)  # nobody attached yet
    port.attach(first)
    assert first.history == [True]
    port.set_level(False)
    assert first.history == [True, False]
    port.detach()
    port.set_level(True)
    assert first.history == [True, False]
    second = RecordingLevelSink()
    port.attach(second)
    assert second.level is True
