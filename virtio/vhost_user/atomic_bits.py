"""Atomic bit setting in memory another process writes too (the vhost-user dirty log).

The dirty log is one bitmap shared by the front-end (which reads and clears it with
atomic exchanges) and every vhost-user back-end of the VM (vhost-user.rst § Migration:
"Use atomic operations, as the log may be concurrently manipulated"). A plain
read-modify-write of a byte from Python could write back a stale byte over a bit another
back-end set in between, and that page would then not be migrated. Python has no atomic
memory operations, so the kernel does the OR: ``futex(FUTEX_WAKE_OP)`` applies
``FUTEX_OP_OR`` to a 32-bit word atomically (futex(2)), waking nobody.

Rules:

1. ``set_bit(address, bit)`` sets bit ``bit`` (0..31) of the aligned 32-bit word at
   ``address`` of this process's memory with one atomic OR; it never clears anything.
2. ``available()`` says whether this machine has it (a known futex syscall number and a
   little-endian word layout, so that bit ``b`` of word ``w`` is bit ``b % 8`` of byte
   ``4 * w + b // 8``, the layout of the log's bytes). Without it the back-end does not
   offer dirty logging at all.
3. A failed syscall raises ``OSError`` (an unmapped address is the caller's bug).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Any

__all__ = ["available", "set_bit"]

# futex(2): FUTEX_WAKE_OP with op = FUTEX_OP_OR | FUTEX_OP_OPARG_SHIFT (oparg is a shift
# count), compare FUTEX_OP_CMP_EQ 0 (its result only decides a second wake-up of nobody).
_FUTEX_WAKE_OP = 5
_FUTEX_OP_OR = 2
_FUTEX_OP_OPARG_SHIFT = 8
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98, "ppc64le": 221}.get(
    platform.machine().lower())

_call: Any = None  # syscall(2), with its argument types set once


def available() -> bool:
    """Whether ``set_bit`` works on this machine (rule 2)."""
    return _SYS_FUTEX is not None and sys.byteorder == "little" and sys.platform.startswith("linux")


def _syscall() -> Any:
    global _call
    if _call is None:
        call = ctypes.CDLL(None, use_errno=True).syscall  # a private CDLL: its function object is ours
        call.restype = ctypes.c_long
        call.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                         ctypes.c_void_p, ctypes.c_uint]
        _call = call
    return _call


def set_bit(address: int, bit: int) -> None:
    """Atomically OR ``1 << bit`` into the 32-bit word at ``address`` (rule 1).

    Raises:
        ValueError: ``address`` not 4-byte aligned or ``bit`` outside 0..31 (caller bugs).
        OSError: the kernel refused (an address that is not mapped writable).
    """
    if address & 3 or not 0 <= bit < 32:
        raise ValueError(f"set_bit({address:#x}, {bit}): the word must be aligned and the bit 0..31")
    if _SYS_FUTEX is None:
        raise OSError("atomic bit setting is not available on this machine")
    op = ((_FUTEX_OP_OR | _FUTEX_OP_OPARG_SHIFT) << 28) | ((bit & 0xFFF) << 12)
    result = _syscall()(_SYS_FUTEX, address, _FUTEX_WAKE_OP, 0, None, address, op)
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"futex(FUTEX_WAKE_OP) on {address:#x}: {os.strerror(errno)}")
