"""Trace points (devmodels._trace)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devmodels import UsageError, trace


def test_tracepoints_are_shared_and_off_by_default() -> None:
    a = trace.tracepoint("test.shared")
    assert trace.tracepoint("test.shared") is a
    assert a.on is False
    assert trace.tracepoints()["test.shared"] is False
    assert "test.shared" in repr(a)


def test_enable_and_disable_by_pattern() -> None:
    read = trace.tracepoint("test_dev.reg_read")
    write = trace.tracepoint("test_dev.reg_write")
    other = trace.tracepoint("test_other.reg_read")
    trace.enable("test_dev.*")
    assert (read.on, write.on, other.on) == (True, True, False)
    trace.disable("test_dev.reg_write")
    assert (read.on, write.on) == (True, False)
    trace.enable("*.reg_read")
    assert other.on
    trace.disable()
    assert not (read.on or write.on or other.on)


def test_pattern_applies_to_points_declared_later() -> None:
    trace.enable("test_late.*")
    late = trace.tracepoint("test_late.event")
    assert late.on


def test_recording_sink_context_restores_state() -> None:
    point = trace.tracepoint("test_rec.event")
    with trace.RecordingSink("test_rec.*") as rec:
        assert point.on
        point.emit(a=1, b="x")
    assert not point.on
    assert rec.events == [("test_rec.event", {"a": 1, "b": "x"})]
    assert rec.names() == ["test_rec.event"]
    point.emit(a=2)  # a removed sink hears nothing more
    assert len(rec.events) == 1


def test_add_and_remove_sink() -> None:
    seen: list[str] = []

    def sink(name: str, fields: dict[str, object]) -> None:
        seen.append(name)

    point = trace.tracepoint("test_sink.event")
    trace.add_sink(sink)
    try:
        point.emit()
    finally:
        trace.remove_sink(sink)
    trace.remove_sink(sink)  # removing twice is harmless
    point.emit()
    assert seen == ["test_sink.event"]


def test_enabled_events_print_to_stderr_by_themselves(capsys: pytest.CaptureFixture[str]) -> None:
    point = trace.tracepoint("test_out.event")
    trace.enable("test_out.*")
    try:
        point.emit(addr=0x1000, name="x", ok=True)
    finally:
        trace.disable("test_out.*")
    assert capsys.readouterr().err == "trace test_out.event addr=0x1000 name='x' ok=True\n"


def test_output_to_logging_at_debug(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    point = trace.tracepoint("test_log.event")
    trace.enable("test_log.*")
    trace.set_output("logging")
    try:
        with caplog.at_level(logging.DEBUG, logger="devmodels.trace"):
            point.emit(addr=0x1000, name="x", ok=True)
    finally:
        trace.set_output("stderr")
        trace.disable("test_log.*")
    messages = [r.getMessage() for r in caplog.records if r.name == "devmodels.trace"]
    assert messages == ["test_log.event addr=0x1000 name='x' ok=True"]
    assert capsys.readouterr().err == ""


def test_output_to_a_file_and_to_nowhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    point = trace.tracepoint("test_file.event")
    trace.enable("test_file.*")
    try:
        trace.set_output(str(tmp_path / "trace.log"))
        point.emit(n=1)
        trace.set_output("none")
        point.emit(n=2)
    finally:
        trace.set_output("stderr")
        trace.disable("test_file.*")
    assert (tmp_path / "trace.log").read_text() == "trace test_file.event n=0x1\n"
    assert capsys.readouterr().err == ""
    with pytest.raises(UsageError, match="trace output"):
        trace.set_output(str(tmp_path / "no" / "such" / "dir"))


def test_environment_variable_enables_patterns() -> None:
    code = (
        "from devmodels import trace; import devmodels._bus;"
        "t = trace.tracepoints(); print(t['bus.unmapped'], t['bus.access'])"
    )
    env = dict(os.environ, DEVMODELS_TRACE="bus.unm*, pci.*")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert out.stdout.split() == ["True", "False"]


def test_environment_alone_makes_a_device_refusal_visible() -> None:
    # DEVMODELS_TRACE alone, no logging set up: an unmapped bus read prints its event.
    code = "from devmodels import Bus; Bus('mmio').read(0x1000, 4)"
    env = dict(os.environ, DEVMODELS_TRACE="bus.*")
    env.pop("DEVMODELS_TRACE_OUTPUT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert "trace bus.unmapped" in out.stderr, out.stderr


def test_a_recording_sink_listens_without_printing(capsys: pytest.CaptureFixture[str]) -> None:
    point = trace.tracepoint("test_quiet.event")
    with trace.RecordingSink("test_quiet.*") as rec:
        point.emit(n=1)
    assert rec.names() == ["test_quiet.event"]
    assert capsys.readouterr().err == ""
    assert not point.on
