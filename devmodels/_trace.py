"""Named trace events, off by default and cheap when off.

Rules:

1. A module declares its events once, at import: ``_tp_read = tracepoint("e1000.reg_read")``.
2. The hot path checks one attribute before building anything:
   ``if _tp_read.on: _tp_read.emit(reg="RCTL", value=v)``.
3. A user switches events on by name or shell-style pattern (``enable("e1000.*")``), from
   code or with ``DEVMODELS_TRACE=pattern,pattern`` in the environment. Enabled events go
   to every sink; the default sink is the ``devmodels.trace`` logger at DEBUG level.
"""

from __future__ import annotations

import fnmatch
import logging
import os
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
]

TraceSink = Callable[[str, dict[str, Any]], None]

_log = logging.getLogger("devmodels.trace")
_lock = threading.Lock()
_points: dict[str, TracePoint] = {}
_patterns: list[tuple[bool, str]] = []  # (on?, pattern), applied in order


def _log_sink(name: str, fields: dict[str, Any]) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        _log.debug("%s %s", name, text)


def _fmt(value: Any) -> str:
    return hex(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)


_sinks: list[TraceSink] = [_log_sink]


class TracePoint:
    """One named event. ``on`` is a plain attribute so the disabled check costs one load."""

    __slots__ = ("name", "on")

    def __init__(self, name: str) -> None:
        self.name = name
        self.on = _matches(name)

    def emit(self, **fields: Any) -> None:
        """Send the event to every sink (call only when ``on``)."""
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


def tracepoint(name: str) -> TracePoint:
    """The trace point called ``name`` (created on first use, shared afterwards)."""
    with _lock:
        point = _points.get(name)
        if point is None:
            point = _points[name] = TracePoint(name)
        return point


def _refresh() -> None:
    for point in _points.values():
        point.on = _matches(point.name)


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
        enable(self.pattern)
        add_sink(self)
        return self

    def __exit__(self, *exc: object) -> None:
        remove_sink(self)
        with _lock:
            if (True, self.pattern) in _patterns:
                _patterns.remove((True, self.pattern))
            _refresh()


for _pattern in filter(None, os.environ.get("DEVMODELS_TRACE", "").split(",")):
    _patterns.append((True, _pattern.strip()))
