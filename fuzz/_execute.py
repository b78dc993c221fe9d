"""Replay a program against a fresh rig, with the oracles.

Oracles (each raises ``Finding``):

1. ``exception``: anything escapes a device entry point. Guest errors must have become
   architected behaviour inside the device; no exception type is allowed out.
2. ``hang``: one op takes more than ``op_seconds`` of CPU time (SIGPROF), or blocks for
   more than ``WALL_FACTOR`` times that in wall time (SIGALRM); main thread only. CPU time,
   because the campaign machine is shared and wall time under load is not the device's.
3. ``memory``: the Python heap grew by more than ``memory_limit`` bytes over the program
   (sampled with tracemalloc when ``check_memory``).
4. ``reset``: after the program, a reset does not return the device to working order
   (``Rig.health_check``).
5. ``snapshot``: a snapshot round trip changes the state (``Rig.snapshot_roundtrip``).
6. Target-specific oracles raise ``Finding`` from inside an op: ``differential`` (the Cython
   and pure-Python rings disagree), ``protocol`` (a reply a correct server never sends),
   ``fd-leak`` (descriptors left open after a byte-stream target closed).

``Guard`` packages oracles 1–3 for targets that are not op streams (``mpqemu``,
``vfio_user``); they define ``execute_input`` instead of ``build`` (see ``_runner``).

DMA outside guest RAM cannot happen silently: ``GuestMemory`` holds only RAM and raises
``GuestMemoryError`` for anything else, which oracle 1 reports if a device lets it escape.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
import tracemalloc
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from devmodels import GuestMemory

from ._ops import SIZES, Op, OpKind, Program, decode
from ._rig import Finding, Rig

__all__ = ["execute", "run_input", "fill_ram_pattern", "Finding", "Guard"]

T = TypeVar("T")


WALL_FACTOR = 10


class _Timeout(BaseException):
    """Raised by the alarm handler inside a stuck op (BaseException: devices catch Exception)."""


def fill_ram_pattern(memory: GuestMemory, seed: int) -> None:
    """Fill RAM with a repeating page of plausible values (``_ops`` rule 2)."""
    ram = memory.regions[0]
    memory.write(ram.base, _pattern_image(seed, ram.size))


@functools.lru_cache(maxsize=32)
def _pattern_image(seed: int, size: int) -> bytes:
    """The RAM image of ``seed``: one pattern page repeated, one byte flipped per page.

    Cached: the same seeds recur across a campaign and building the image dominated the
    cost of a short input.
    """
    state = seed or 0x9E3779B9
    words = []
    for _ in range(512):  # one 4 KiB page of u64
        state = (state * 6364136223846793005 + 1442695040888963407) & 0xFFFF_FFFF_FFFF_FFFF
        choice = (state >> 60) & 0x7
        if choice < 3:  # an address inside RAM, 16-byte aligned
            value = (state >> 8) % size & ~0xF
        elif choice < 5:  # a small length/flags word pair
            value = ((state >> 16) & 0x3FFF) | (((state >> 40) & 0xFF) << 32)
        elif choice == 5:
            value = 0
        else:
            value = state
        words.append(value)
    page = b"".join(w.to_bytes(8, "little") for w in words)
    image = bytearray((page * (size // len(page) + 1))[:size])
    for base in range(0, size, len(page)):
        image[base + (base >> 12) % min(len(page), size - base)] ^= 0xFF  # slight mutation per page
    return bytes(image)


def _apply(rig: Rig, op: Op) -> None:
    a = op.args
    kind = op.kind
    if kind is OpKind.MMIO_READ or kind is OpKind.MMIO_WRITE:
        if not rig.regions:
            return
        bus, base, length = rig.regions[a[0] % len(rig.regions)]
        size = SIZES[a[2] % 4]
        offset = (a[1] % length) & ~(size - 1) if length >= size else 0
        size = min(size, length)
        if kind is OpKind.MMIO_READ:
            bus.read(base + offset, size)
        else:
            bus.write(base + offset, size, a[3])
    elif kind is OpKind.CFG_READ:
        size = SIZES[a[1] % 3]
        rig.config_read(a[0] % 256 & ~(size - 1), size)
    elif kind is OpKind.CFG_WRITE:
        size = SIZES[a[1] % 3]
        rig.config_write(a[0] % 256 & ~(size - 1), size, a[2])
    elif kind is OpKind.RAM_FILL:
        ram = rig.machine.memory.size
        gpa = a[0] % ram
        rig.ram_fill(gpa, min(a[1], ram - gpa), a[2])
    elif kind is OpKind.RAM_WRITE:
        size = SIZES[a[1] % 4]
        gpa = a[0] % (rig.machine.memory.size - 8) & ~(size - 1)
        rig.ram_write(gpa, (a[2] & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
    elif kind is OpKind.NOTIFY:
        rig.notify(a[0])
    elif kind is OpKind.TICK:
        rig.tick(a[0])
    elif kind is OpKind.BACKEND:
        rig.backend_event(a[0], a[1])
    elif kind is OpKind.RESET:
        rig.reset()
    elif kind is OpKind.SNAPSHOT:
        if rig.snapshots_left > 0:
            rig.snapshots_left -= 1
            rig.snapshot_roundtrip()
    elif kind is OpKind.PUMP:
        rig.pump()


class Guard:
    """The hang, exception and memory oracles, for any target (op streams or byte streams).

    ``with Guard(...) as guard:`` installs the alarm handler (main thread only) and starts
    tracemalloc when asked; ``guard.call(action, what)`` runs one step under oracles 1–2 and
    ``guard.check_memory(where)`` applies oracle 3.
    """

    def __init__(self, op_seconds: float = 2.0, check_memory: bool = False, memory_limit: int = 64 << 20) -> None:
        self.op_seconds = op_seconds
        self.memory_limit = memory_limit
        self.use_alarm = threading.current_thread() is threading.main_thread() and op_seconds > 0
        self.tracing = check_memory and not tracemalloc.is_tracing()
        self._previous: Any = None
        self._outer_deadline: float | None = None
        self._baseline = 0

    def __enter__(self) -> Guard:
        if self.use_alarm:

            def _on_alarm(signum: int, frame: FrameType | None) -> None:
                raise _Timeout()

            self._previous = (signal.signal(signal.SIGALRM, _on_alarm), signal.signal(signal.SIGPROF, _on_alarm))
            # An outer wall-clock timer (pytest-timeout's) resumes on exit with what it had left.
            remaining = signal.getitimer(signal.ITIMER_REAL)[0]
            self._outer_deadline = time.monotonic() + remaining if remaining else None
        if self.tracing:
            tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.use_alarm:
            self._disarm()
            signal.signal(signal.SIGALRM, self._previous[0])
            signal.signal(signal.SIGPROF, self._previous[1])
            if self._outer_deadline is not None:
                signal.setitimer(signal.ITIMER_REAL, max(self._outer_deadline - time.monotonic(), 0.001))
        if self.tracing:
            tracemalloc.stop()

    def mark_memory(self) -> None:
        """Take the heap baseline oracle 3 measures growth from."""
        if self.tracing:
            self._baseline = tracemalloc.get_traced_memory()[0]

    def check_memory(self, where: str) -> None:
        """Oracle 3: raise ``Finding`` if the heap grew past the limit since ``mark_memory``."""
        if self.tracing:
            grown = tracemalloc.get_traced_memory()[0] - self._baseline
            if grown > self.memory_limit:
                raise Finding("memory", f"heap grew by {grown} bytes by {where}")

    def call(self, action: Callable[[], T], what: str) -> T:
        """Run ``action`` under oracles 1 and 2; return its result."""
        if self.use_alarm:
            signal.setitimer(signal.ITIMER_PROF, self.op_seconds)
            signal.setitimer(signal.ITIMER_REAL, self.op_seconds * WALL_FACTOR)
        try:
            return action()
        except Finding:
            raise
        except _Timeout:
            raise Finding("hang", f"{what} took more than {self.op_seconds} s of CPU time (or {self.op_seconds * WALL_FACTOR} s blocked)") from None
        except Exception as exc:  # noqa: BLE001 - oracle 1: nothing may escape
            tail = "".join(traceback.format_exception(exc)[-6:])
            raise Finding("exception", f"{what} raised {type(exc).__name__}: {exc}\n{tail}") from exc
        finally:
            if self.use_alarm:
                self._disarm()

    @staticmethod
    def _disarm() -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)


def execute(
    factory: Callable[[], Rig],
    program: Program,
    *,
    op_seconds: float = 2.0,
    check_memory: bool = False,
    memory_limit: int = 64 << 20,
    trace: Callable[[str], None] | None = None,
) -> None:
    """Run ``program`` on a fresh rig; raise ``Finding`` when an oracle fires."""
    rig = factory()
    try:
        with Guard(op_seconds, check_memory, memory_limit) as guard:
            fill_ram_pattern(rig.machine.memory, program.ram_seed)
            rig.ram_loaded()
            guard.mark_memory()
            for index, op in enumerate(program.ops):
                if trace is not None:
                    trace(f"{index:4d} {op.describe()}")
                guard.call(functools.partial(_apply, rig, op), f"op {index} ({op.describe()})")
                if index % 16 == 15:
                    guard.check_memory(f"op {index}")
            guard.check_memory("the end of the program")
            guard.call(rig.reset, "reset after the program")
            guard.call(rig.health_check, "health check after reset")
    finally:
        rig.close()


def run_input(factory: Callable[[], Rig], data: bytes, **options: object) -> None:
    """Decode ``data`` and ``execute`` it (the body of every ``TestOneInput``)."""
    execute(factory, decode(data), **options)  # type: ignore[arg-type]
