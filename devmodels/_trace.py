"""Named trace events, off by default and cheap when off.

Rules:

1. A module declares its events once, at import: ``_tp_read = tracepoint("e1000.reg_read")``.
2. The hot path checks one attribute before building anything:
   ``if _tp_read.on: _tp_read.emit(reg="RCTL", value=v)``.
3. A user switches events on by name or shell-style pattern (``enable("e1000.*")``), from
   code or with ``DEVMODELS_TRACE=pattern,pattern`` in the environment. Enabled events go
   to the output and to every added sink.
4. The output prints by itself: by default one line per event on stderr (``trace NAME
   key=value ...``), so ``DEVMODELS_TRACE=virtio.*`` alone shows the device's refusal
   reasons. ``set_output`` (or ``DEVMODELS_TRACE_OUTPUT``) sends them elsewhere:
   ``"stderr"``, ``"logging"`` (the ``devmodels.trace`` logger at DEBUG level), a file
   path (appended to), or ``"none"`` (only the added sinks). Events switched on only by a
   ``RecordingSink`` (a test listening) go to that sink, not to the output.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "TracePoint",
    "tracepoint",
    "enable",
    "disable",
    "add_sink",
    "remove_sink",
    "tracepoints",
    "RecordingSink",
    "set_output",
]

TraceSink = Callable[[str, dict[str, Any]], None]

_log = logging.getLogger("devmodels.trace")
_lock = threading.Lock()
_points: dict[str, TracePoint] = {}
_patterns: list[tuple[bool, str]] = []  # (on?, pattern), applied in order
_listening: list[str] = []  # patterns of RecordingSinks: on for their sinks, not printed (rule 4)


def _text(name: str, fields: dict[str, Any]) -> str:
    return " ".join([name, *(f"{k}={_fmt(v)}" for k, v in fields.items())])


def _fmt(value: Any) -> str:
    return hex(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)


def _log_sink(name: str, fields: dict[str, Any]) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("%s", _text(name, fields))


def _stream_sink(stream: Callable[[], Any]) -> TraceSink:
    def sink(name: str, fields: dict[str, Any]) -> None:
        target = stream()
        try:
            target.write(f"trace {_text(name, fields)}\n")
            target.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream must not break the device that traced

    return sink


_stderr_sink = _stream_sink(lambda: sys.stderr)
_output: TraceSink | None = _stderr_sink  # rule 4
_sinks: list[TraceSink] = []


def set_output(target: str) -> None:
    """Where enabled events print (rule 4): ``"stderr"`` (default), ``"logging"``, a file
    path (appended to), or ``"none"``.

    Raises:
        UsageError: the file cannot be opened.
    """
    global _output
    if target == "stderr":
        sink: TraceSink | None = _stderr_sink
    elif target == "logging":
        sink = _log_sink
    elif target == "none":
        sink = None
    else:
        try:
            stream = open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the output
        except OSError as exc:
            from ._errors import UsageError

            raise UsageError(f"trace output {target!r}: {exc.strerror}") from None
        sink = _stream_sink(lambda: stream)
    with _lock:
        _output = sink


class TracePoint:
    """One named event. ``on`` is a plain attribute so the disabled check costs one load."""

    __slots__ = ("name", "on", "printed")

    def __init__(self, name: str) -> None:
        self.name = name
        self.printed = _matches(name)
        self.on = self.printed or _listened(name)

    def emit(self, **fields: Any) -> None:
        """Send the event to the output and every sink (call only when ``on``)."""
        output = _output
        if output is not None and self.printed:
            output(self.name, fields)
        for sink in tuple(_sinks):
            sink(self.name, fields)

    def __repr__(self) -> str:
        return f"TracePoint({self.name!r}, on={self.on})"


def _matches(name: str) -> bool:
    on = False
    for enabled, pattern in _patterns:
        if fnmatch.fnmatchcase(name, pattern):
            on = enabled
    return on


def _listened(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _listening)


def tracepoint(name: str) -> TracePoint:
    """The trace point called ``name`` (created on first use, shared afterwards)."""
    with _lock:
        point = _points.get(name)
        if point is None:
            point = _points[name] = TracePoint(name)
        return point


def _refresh() -> None:
    for point in _points.values():
        point.printed = _matches(point.name)
        point.on = point.printed or _listened(point.name)


def enable(pattern: str) -> None:
    """Switch on every event whose name matches ``pattern`` (``fnmatch`` syntax)."""
    with _lock:
        _patterns.append((True, pattern))
        _refresh()


def disable(pattern: str = "*") -> None:
    """Switch off every event whose name matches ``pattern`` (all of them by default)."""
    with _lock:
        if pattern == "*":
            _patterns.clear()
        else:
            _patterns.append((False, pattern))
        _refresh()


def add_sink(sink: TraceSink) -> None:
    """Also send enabled events to ``sink(name, fields)``."""
    with _lock:
        _sinks.append(sink)


def remove_sink(sink: TraceSink) -> None:
    """Stop sending events to ``sink``."""
    with _lock:
        if sink in _sinks:
            _sinks.remove(sink)


def tracepoints() -> dict[str, bool]:
    """Every declared event and whether it is on."""
    with _lock:
        return {name: p.on for name, p in sorted(_points.items())}


class RecordingSink:
    """A sink that keeps events in a list (tests): ``with RecordingSink("bus.*") as rec:``."""

    def __init__(self, pattern: str = "*") -> None:
        self.pattern = pattern
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        """Record one event."""
        self.events.append((name, fields))

    def names(self) -> list[str]:
        """The names of the recorded events, in order."""
        return [name for name, _ in self.events]

    def __enter__(self) -> RecordingSink:
        with _lock:
            _listening.append(self.pattern)
            _sinks.append(self)
            _refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            if self in _sinks:
                _sinks.remove(self)
            _listening.remove(self.pattern)
            _refresh()


for _pattern in filter(None, os.environ.get("DEVMODELS_TRACE", "").split(",")):
    _patterns.append((True, _pattern.strip()))
if os.environ.get("DEVMODELS_TRACE_OUTPUT"):
    set_output(os.environ["DEVMODELS_TRACE_OUTPUT"])
