"""A plain-text progress bar for slow image builds.

Rules:

1. It draws only when asked (``enabled=True``) or, by default, when the stream is a terminal,
   so logs and CI output stay clean.
2. On a terminal it redraws one line with ``\\r``; elsewhere it prints one line per step.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 24


class Progress:
    """Counts named steps out of a planned total and draws them on ``stream`` (stderr).

    Args:
        total: the number of steps planned; more steps than that just stay at 100%.
        enabled: draw or not; None means "when ``stream`` is a terminal".
        stream: where to draw (default ``sys.stderr``).
    """

    def __init__(self, total: int, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self.enabled = self._tty if enabled is None else enabled
        self.total = max(total, 1)
        self.done_steps = 0
        self._last_len = 0

    def _draw(self, label: str, final: bool = False) -> None:
        if not self.enabled:
            return
        filled = min(self.done_steps, self.total) * _WIDTH // self.total
        line = f"[{'#' * filled}{'.' * (_WIDTH - filled)}] {label}"
        if self._tty:
            pad = " " * max(self._last_len - len(line), 0)
            self._stream.write("\r" + line + pad + ("\n" if final else ""))
            self._last_len = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def step(self, label: str) -> None:
        """Start the next step, named ``label``."""
        self._draw(label)
        self.done_steps += 1

    def finish(self, label: str = "done") -> None:
        """Mark everything done and end the line."""
        self.done_steps = self.total
        self._draw(label, final=True)
