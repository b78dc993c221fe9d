"""What the serving commands share: device arguments, signal handling, stats lines.

Rules:

1. Every command takes the same device words: ``--device NAME`` (``registry.DEVICES``),
   ``--backend SPEC`` (repeatable) and ``--opt KEY=VALUE`` (repeatable), and
   ``--log-level``; and the same fault words, ``--faults PLAN`` and ``--fault-socket
   PATH`` (``faults``).
2. Bad arguments print one line naming what was wrong and exit 2; a backend that cannot be
   opened exits 1. A server never exits because of what a guest or a VMM peer did.
3. SIGTERM and SIGINT stop the server cleanly (exit 0); SIGUSR1 writes one stats line to
   stderr with a single ``write(2)``, safe whatever the loop was doing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from .registry import DEVICES

__all__ = ["add_device_arguments", "device_help", "setup_logging", "signals", "write_stats"]


def device_help() -> str:
    """The device list for ``--help``."""
    return "; ".join(f"{kind.name}: {kind.summary} [--backend {kind.backends}]" for kind in DEVICES.values())


def add_device_arguments(parser: argparse.ArgumentParser, *, default: str | None = None,
                         choices: list[str] | None = None) -> None:
    """``--device``, ``--backend``, ``--opt``, ``--log-level``, ``--faults``, ``--fault-socket`` (rule 1)."""
    names = choices if choices is not None else list(DEVICES)
    parser.add_argument("--device", required=default is None, default=default, choices=names,
                        help=f"the device to serve ({device_help()})")
    parser.add_argument("--backend", action="append", default=[], metavar="SPEC",
                        help="host backend: file:PATH, file-ro:PATH, iso:PATH, mem:SIZE (disks); "
                             "socket:PATH, socket-fd:N, tap:NAME (NICs)")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="device option, e.g. posted=off, msi=on, packed=off, mac=52:54:00:12:34:56")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.add_argument("--faults", metavar="PLAN", default=None,
                        help="inject the faults of this JSON fault plan (docs/faults.md)")
    parser.add_argument("--fault-socket", metavar="PATH", default=None,
                        help="serve the fault control socket here: add, remove, arm, list faults at run time")


def setup_logging(level: str, name: str) -> None:
    """Log lines prefixed with the command's name."""
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")


def write_stats(prefix: str, counters: dict[str, object]) -> None:
    """One stats line on stderr in one ``write(2)`` (rule 3)."""
    fields = " ".join(f"{k}={v}" for k, v in counters.items())
    try:
        os.write(2, f"{prefix} stats: {fields}\n".encode())
    except OSError:
        pass


@contextlib.contextmanager
def signals(stop: Callable[[], None], stats: Callable[[], None] | None = None) -> Iterator[None]:
    """SIGTERM/SIGINT call ``stop``, SIGUSR1 calls ``stats`` (rule 3); restored on exit.

    Signal handlers can only be set on the main thread; elsewhere (tests) nothing is set.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop()

    def _stats(signum: int, frame: FrameType | None) -> None:
        if stats is not None:
            stats()

    handlers = {signal.SIGTERM: _stop, signal.SIGINT: _stop, signal.SIGUSR1: _stats}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
