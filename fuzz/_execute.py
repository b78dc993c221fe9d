"""Replay a program against a fresh rig, with the oracles.

Oracles (each raises ``Finding``):

1. ``exception``: anything escapes a device entry point. Guest errors must have become
   architected behaviour inside the device; no exception type is allowed out.
2. ``hang``: one op takes longer than ``op_seconds`` of wall time (SIGALRM; main thread).
3. ``memory``: the Python heap grew by more than ``memory_limit`` bytes over the program
   (sampled with tracemalloc when ``check_memory``).
4. ``reset``: after the program, a reset does not return the device to working order
   (``Rig.health_check``).
5. ``snapshot``: a snapshot round trip changes the state (``Rig.snapshot_roundtrip``).

DMA outside guest RAM cannot happen silently: ``GuestMemory`` holds only RAM and raises
``GuestMemoryError`` for anything else, which oracle 1 reports if a device lets it escape.
"""

from __future__ import annotations

import functools
import signal
import threading
import tracemalloc
import traceback
from collections.abc import Callable
from types import FrameType

from devmodels import GuestMemory

from ._ops import SIZES, Op, OpKind, Program, decode
from ._rig import Finding, Rig

__all__ = ["execute", "run_input", "fill_ram_pattern", "Finding"]


class _Timeout(BaseException):
    """Raised by the alarm handler inside a stuck op (BaseException: devices catch Exception)."""


def fill_ram_pattern(memory: GuestMemory, seed: int) -> None:
    """Fill RAM with a repeating page of plausible values (``_ops`` rule 2)."""
    ram = memory.regions[0]
    state = seed or 0x9E3779B9
    words = []
    for _ in range(512):  # one 4 KiB page of u64
        state = (state * 6364136223846793005 + 1442695040888963407) & 0xFFFF_FFFF_FFFF_FFFF
        choice = (state >> 60) & 0x7
        if choice < 3:  # an address inside RAM, 16-byte aligned
            value = (state >> 8) % ram.size & ~0xF
        elif choice < 5:  # a small length/flags word pair
            value = ((state >> 16) & 0x3FFF) | (((state >> 40) & 0xFF) << 32)
        elif choice == 5:
            value = 0
        else:
            value = state
        words.append(value)
    page = b"".join(w.to_bytes(8, "little") for w in words)
    for base in range(0, ram.size, len(page)):
        chunk = bytearray(page[: min(len(page), ram.size - base)])
        chunk[(base >> 12) % len(chunk)] ^= 0xFF  # slight mutation per page
        memory.write(ram.base + base, chunk)


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
        memory = rig.machine.memory
        gpa = a[0] % memory.size
        memory.fill(gpa, min(a[1], memory.size - gpa), a[2])
    elif kind is OpKind.RAM_WRITE:
        memory = rig.machine.memory
        size = SIZES[a[1] % 4]
        gpa = a[0] % (memory.size - 8) & ~(size - 1)
        memory.write(gpa, (a[2] & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
    elif kind is OpKind.NOTIFY:
        rig.notify(a[0])
    elif kind is OpKind.TICK:
        rig.tick(a[0])
    elif kind is OpKind.BACKEND:
        rig.backend_event(a[0], a[1])
    elif kind is OpKind.RESET:
        rig.reset()
    elif kind is OpKind.SNAPSHOT:
        rig.snapshot_roundtrip()
    elif kind is OpKind.PUMP:
        rig.pump()


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
    use_alarm = threading.current_thread() is threading.main_thread() and op_seconds > 0
    previous = None
    if use_alarm:

        def _on_alarm(signum: int, frame: FrameType | None) -> None:
            raise _Timeout()

        previous = signal.signal(signal.SIGALRM, _on_alarm)
    tracing_memory = check_memory and not tracemalloc.is_tracing()
    if tracing_memory:
        tracemalloc.start()
    try:
        fill_ram_pattern(rig.machine.memory, program.ram_seed)
        baseline = tracemalloc.get_traced_memory()[0] if tracing_memory else 0
        for index, op in enumerate(program.ops):
            if trace is not None:
                trace(f"{index:4d} {op.describe()}")
            _guarded(functools.partial(_apply, rig, op), f"op {index} ({op.describe()})", use_alarm, op_seconds)
            if tracing_memory and index % 16 == 15:
                grown = tracemalloc.get_traced_memory()[0] - baseline
                if grown > memory_limit:
                    raise Finding("memory", f"heap grew by {grown} bytes by op {index}")
        if tracing_memory:
            grown = tracemalloc.get_traced_memory()[0] - baseline
            if grown > memory_limit:
                raise Finding("memory", f"heap grew by {grown} bytes over the program")
        _guarded(rig.reset, "reset after the program", use_alarm, op_seconds)
        _guarded(rig.health_check, "health check after reset", use_alarm, op_seconds)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        if tracing_memory:
            tracemalloc.stop()
        rig.close()


def _guarded(action: Callable[[], None], what: str, use_alarm: bool, seconds: float) -> None:
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        action()
    except Finding:
        raise
    except _Timeout:
        raise Finding("hang", f"{what} took longer than {seconds} s") from None
    except Exception as exc:  # noqa: BLE001 - oracle 1: nothing may escape
        tail = "".join(traceback.format_exception(exc)[-6:])
        raise Finding("exception", f"{what} raised {type(exc).__name__}: {exc}\n{tail}") from exc
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)


def run_input(factory: Callable[[], Rig], data: bytes, **options: object) -> None:
    """Decode ``data`` and ``execute`` it (the body of every ``TestOneInput``)."""
    execute(factory, decode(data), **options)  # type: ignore[arg-type]
