"""The op-stream format: fuzzer bytes -> a guest RAM image and a list of operations.

Rules (vm-virtio ``fuzz/README.md``, QEMU generic-fuzz):

1. Decoding is total and deterministic: every byte string decodes to a program, the same
   bytes always to the same program, and decoding never raises.
2. The first 4 bytes seed the RAM pattern: guest RAM starts filled with a repeating,
   slightly mutated pattern whose words are plausible guest addresses, so descriptors and
   PRDTs the device reads point back into RAM often enough to go deep.
3. Each op starts with an opcode byte (taken modulo the number of op kinds) followed by
   fixed-width little-endian arguments; a truncated op reads missing bytes as zero.
4. ``encode`` is the inverse of ``decode`` for seeds written by hand (the committed corpora).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = ["OpKind", "Op", "Program", "decode", "encode", "MAX_OPS", "SIZES"]

MAX_OPS = 512
SIZES = (1, 2, 4, 8)


class OpKind(enum.IntEnum):
    """What an op does; the value is its opcode."""

    MMIO_READ = 0  # region, offset, size
    MMIO_WRITE = 1  # region, offset, size, value
    CFG_READ = 2  # offset, size
    CFG_WRITE = 3  # offset, size, value
    RAM_FILL = 4  # gpa, length, byte
    RAM_WRITE = 5  # gpa, size, value
    NOTIFY = 6  # queue
    TICK = 7  # nanoseconds
    BACKEND = 8  # target-specific event, arg
    RESET = 9
    SNAPSHOT = 10
    PUMP = 11  # let asynchronous completions land


# opcode -> struct of its arguments
_ARGS: dict[OpKind, struct.Struct] = {
    OpKind.MMIO_READ: struct.Struct("<BIB"),
    OpKind.MMIO_WRITE: struct.Struct("<BIBQ"),
    OpKind.CFG_READ: struct.Struct("<HB"),
    OpKind.CFG_WRITE: struct.Struct("<HBI"),
    OpKind.RAM_FILL: struct.Struct("<IHB"),
    OpKind.RAM_WRITE: struct.Struct("<IBQ"),
    OpKind.NOTIFY: struct.Struct("<B"),
    OpKind.TICK: struct.Struct("<I"),
    OpKind.BACKEND: struct.Struct("<BI"),
    OpKind.RESET: struct.Struct("<"),
    OpKind.SNAPSHOT: struct.Struct("<"),
    OpKind.PUMP: struct.Struct("<"),
}


@dataclass(frozen=True)
class Op:
    """One operation with its raw arguments (interpreted by the executor)."""

    kind: OpKind
    args: tuple[int, ...]

    def describe(self) -> str:
        """A readable one-line form for reproducer traces."""
        a = self.args
        k = self.kind
        if k is OpKind.MMIO_READ:
            return f"mmio_read  region={a[0]} offset={a[1]:#x} size={SIZES[a[2] % 4]}"
        if k is OpKind.MMIO_WRITE:
            return f"mmio_write region={a[0]} offset={a[1]:#x} size={SIZES[a[2] % 4]} value={a[3]:#x}"
        if k is OpKind.CFG_READ:
            return f"cfg_read   offset={a[0]:#x} size={SIZES[a[1] % 3]}"
        if k is OpKind.CFG_WRITE:
            return f"cfg_write  offset={a[0]:#x} size={SIZES[a[1] % 3]} value={a[2]:#x}"
        if k is OpKind.RAM_FILL:
            return f"ram_fill   gpa={a[0]:#x} length={a[1]:#x} byte={a[2]:#x}"
        if k is OpKind.RAM_WRITE:
            return f"ram_write  gpa={a[0]:#x} size={SIZES[a[1] % 4]} value={a[2]:#x}"
        if k is OpKind.NOTIFY:
            return f"notify     queue={a[0]}"
        if k is OpKind.TICK:
            return f"tick       ns={a[0]}"
        if k is OpKind.BACKEND:
            return f"backend    event={a[0]} arg={a[1]:#x}"
        return k.name.lower()


@dataclass(frozen=True)
class Program:
    """A decoded input."""

    ram_seed: int
    ops: tuple[Op, ...]


def decode(data: bytes) -> Program:
    """Decode fuzzer bytes (rules 1–3)."""
    head = data[:4].ljust(4, b"\0")
    seed = int.from_bytes(head, "little")
    ops: list[Op] = []
    pos = 4
    kinds = list(OpKind)
    while pos < len(data) and len(ops) < MAX_OPS:
        kind = kinds[data[pos] % len(kinds)]
        pos += 1
        layout = _ARGS[kind]
        raw = data[pos : pos + layout.size].ljust(layout.size, b"\0")
        pos += layout.size
        ops.append(Op(kind, layout.unpack(raw)))
    return Program(seed, tuple(ops))


def encode(program: Program) -> bytes:
    """The bytes that decode to ``program`` (rule 4)."""
    out = bytearray(program.ram_seed.to_bytes(4, "little"))
    for op in program.ops:
        out.append(int(op.kind))
        out += _ARGS[op.kind].pack(*op.args)
    return bytes(out)
