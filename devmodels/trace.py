"""Named trace events, public for device authors: ``tracepoint``, ``enable``/``disable``,
sinks and the output (``set_output``). The rules are in ``devmodels._trace``.
"""

from ._trace import (
    RecordingSink,
    TracePoint,
    add_sink,
    disable,
    enable,
    remove_sink,
    set_output,
    tracepoint,
    tracepoints,
)

__all__ = ["RecordingSink", "TracePoint", "add_sink", "disable", "enable", "remove_sink", "set_output", "tracepoint",
           "tracepoints"]
