"""Interrupt protocols and the shared level line (devmodels._irq)."""

from __future__ import annotations

from devmodels import (
    IrqLine,
    LevelSink,
    MsiMessage,
    MsiSink,
    NullLevelSink,
    NullMsiSink,
    NullTrigger,
    RecordingLevelSink,
    RecordingMsiSink,
    RecordingTrigger,
    Trigger,
    TriggerLevelSink,
)


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(NullTrigger(), Trigger) and isinstance(RecordingTrigger(), Trigger)
    assert isinstance(NullLevelSink(), LevelSink) and isinstance(RecordingLevelSink(), LevelSink)
    assert isinstance(NullMsiSink(), MsiSink) and isinstance(RecordingMsiSink(), MsiSink)
    assert not isinstance(NullTrigger(), LevelSink)
    assert isinstance(IrqLine().source(), LevelSink)


def test_recording_doubles() -> None:
    trig = RecordingTrigger()
    trig.trigger()
    trig.trigger()
    assert trig.count == 2
    level = RecordingLevelSink()
    level.set_level(True)
    level.set_level(False)
    assert level.history == [True, False] and level.level is False
    msi = RecordingMsiSink()
    msi.deliver_msi(0xFEE0_0000, 0x41)
    assert msi.messages == [MsiMessage(0xFEE0_0000, 0x41)]
    assert msi.messages[0].address == 0xFEE0_0000 and msi.messages[0].data == 0x41


def test_trigger_level_sink_pulses_on_rising_edges_only() -> None:
    trig = RecordingTrigger()
    sink = TriggerLevelSink(trig)
    for level in (False, True, True, False, True, False, False):
        sink.set_level(level)
    assert trig.count == 2
    assert sink.level is False


def test_line_is_the_or_of_its_sources_and_sink_hears_only_changes() -> None:
    sink = RecordingLevelSink()
    line = IrqLine(sink, name="gsi16")
    a, b = line.source(), line.source()
    a.set_level(True)
    b.set_level(True)
    assert line.level and sink.history == [True]
    a.set_level(False)
    assert line.level and sink.history == [True]
    b.set_level(False)
    assert not line.level and sink.history == [True, False]
    b.set_level(False)
    assert sink.history == [True, False]
    assert "gsi16" in repr(line)


def test_a_source_repeating_its_level_does_not_count_twice() -> None:
    sink = RecordingLevelSink()
    line = IrqLine(sink)
    a, b = line.source(), line.source()
    a.set_level(True)
    a.set_level(True)
    b.set_level(True)
    a.set_level(False)
    assert line.level  # b still asserts it
    b.set_level(False)
    assert sink.history == [True, False]


def test_truthy_levels_are_normalised() -> None:
    sink = RecordingLevelSink()
    line = IrqLine(sink)
    src = line.source()
    src.set_level(5)  # type: ignore[arg-type]
    assert src.asserted is True
    src.set_level(0)  # type: ignore[arg-type]
    assert sink.history == [True, False]


def test_line_without_sink_still_tracks_level() -> None:
    line = IrqLine()
    src = line.source()
    src.set_level(True)
    assert line.level
    src.set_level(False)
    assert not line.level
