"""Ending the processes the harness started (servers, responders), by their PID.

``end_process`` sends SIGTERM, waits ``grace`` seconds, then SIGKILL, and reaps the process
either way, so nothing it started outlives the case, run or bench that started it.
"""

from __future__ import annotations

import subprocess

__all__ = ["end_process"]


def end_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM ``process`` if it still runs; SIGKILL after ``grace`` s; reaped (within 5 s of the kill)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
