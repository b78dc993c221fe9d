"""Seed programs recorded from driver simulators: what a guest did, written down as ops.

A deep seed (rings set up, a request posted, a doorbell rung) is tedious to write by hand
as an op list. ``Recorder`` runs ordinary driver-simulator code (``E1000Driver``,
``virtio.testing``, ``AhciDriver``…) against a rig and turns every guest action into the op
that replays it.

Rules:

1. The recorder patches, on the rig's machine only, the bus entry points (``mmio``/``pio``
   ``read``/``write``), the config-cycle helpers and the ``GuestMemory`` store methods a
   simulator uses. Each captured action becomes ops, and the *ops* are what is applied to
   the rig (through the same ``_execute._apply`` the replay uses), so a recorded program
   replays exactly what the recording did. Reads return the value the device gave.
2. Guest RAM stores become RAM_FILL (``fill``) and RAM_WRITE ops (naturally aligned
   1/2/4/8-byte pieces). Stores the *device* makes during an access (DMA) are not guest
   actions and are not recorded: they happen again on replay.
3. Rig-specific inputs (NOTIFY, TICK, BACKEND, PUMP, RESET) are recorded with ``op``.
   Config-space reads have no side effects in PCI, so they are performed but not recorded
   unless ``config_reads`` is set (a driver walking capabilities byte by byte would
   otherwise spend the op budget).
4. An access the op format cannot express (outside every region of the rig, a config
   offset past 255, an odd size, RAM past the op range) raises ``RecordError``: the seed
   script must change, not the format. So does a program longer than ``MAX_OPS``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ._execute import _apply, fill_ram_pattern
from ._ops import MAX_OPS, SIZES, Op, OpKind, Program, encode
from ._rig import Rig

__all__ = ["Recorder", "RecordError", "record"]

_FILL_MAX = 0xFFFF  # RAM_FILL length is a u16


class RecordError(Exception):
    """A seed script did something the op format cannot express (rule 4)."""


class Recorder:
    """Records guest actions on ``rig`` as a program (rules 1–3).

    Args:
        rig: a fresh rig; its RAM is filled with the pattern of ``ram_seed`` first.
        ram_seed: the program's RAM seed.
        config_reads: record config-space reads too (rule 3).
    """

    def __init__(self, rig: Rig, ram_seed: int = 0, *, config_reads: bool = False) -> None:
        self.rig = rig
        self.config_reads = config_reads
        self.machine = rig.machine
        self.ram_seed = ram_seed
        self.ops: list[Op] = []
        self._inside = 0
        fill_ram_pattern(rig.machine.memory, ram_seed)
        rig.ram_loaded()
        self._patch()

    # -- patching (rule 1) ----------------------------------------------------------------

    def _patch(self) -> None:
        machine = self.machine
        memory = machine.memory
        self._orig: dict[tuple[int, str], Callable[..., Any]] = {}
        for obj, name, wrapper in (
            (machine.mmio, "read", self._bus_read(machine.mmio)),
            (machine.mmio, "write", self._bus_write(machine.mmio)),
            (machine.pio, "read", self._bus_read(machine.pio)),
            (machine.pio, "write", self._bus_write(machine.pio)),
            (machine, "config_read", self._config_read),
            (machine, "config_write", self._config_write),
            (memory, "write", self._mem_write),
            (memory, "fill", self._mem_fill),
            (memory, "write_struct", self._mem_write_struct),
            (memory, "store_u8", self._store(1)),
            (memory, "store_u16", self._store(2)),
            (memory, "store_u32", self._store(4)),
            (memory, "store_u64", self._store(8)),
        ):
            self._orig[(id(obj), name)] = getattr(obj, name)
            setattr(obj, name, wrapper)
        self._patched = [machine.mmio, machine.pio, machine, memory]

    def close(self) -> None:
        """Remove the patches (the rig works normally again)."""
        for obj in self._patched:
            for name in ("read", "write", "config_read", "config_write", "fill", "write_struct",
                         "store_u8", "store_u16", "store_u32", "store_u64"):
                if name in vars(obj):
                    delattr(obj, name)
        self._patched = []

    def _call(self, obj: object, name: str, *args: Any) -> Any:
        self._inside += 1
        try:
            return self._orig[(id(obj), name)](*args)
        finally:
            self._inside -= 1

    # -- recording ------------------------------------------------------------------------

    def op(self, kind: OpKind, *args: int) -> None:
        """Record and apply one op (rule 3); arguments as ``_ops`` defines them."""
        self._add(Op(kind, tuple(args) + (0,) * (_arity(kind) - len(args))))

    def _add(self, op: Op) -> None:
        if len(self.ops) >= MAX_OPS:
            raise RecordError(f"the seed needs more than {MAX_OPS} ops")
        self.ops.append(op)
        self._inside += 1
        try:
            _apply(self.rig, op)
        finally:
            self._inside -= 1

    def _region(self, bus: Any, addr: int, size: int) -> tuple[int, int]:
        for index, (rbus, base, length) in enumerate(self.rig.regions):
            if rbus is bus and base <= addr and addr + size <= base + length:
                offset = addr - base
                if size not in SIZES or offset % size:
                    raise RecordError(f"{bus.name} access of {size} bytes at {addr:#x} is not a natural 1/2/4/8-byte access")
                return index, offset
        raise RecordError(f"{bus.name} access at {addr:#x} is outside every region of the rig")

    def _bus_read(self, bus: Any) -> Callable[[int, int], int]:
        def read(addr: int, size: int) -> int:
            if self._inside:
                return self._call(bus, "read", addr, size)
            index, offset = self._region(bus, addr, size)
            self.ops.append(Op(OpKind.MMIO_READ, (index, offset, SIZES.index(size))))
            if len(self.ops) > MAX_OPS:
                raise RecordError(f"the seed needs more than {MAX_OPS} ops")
            return self._call(bus, "read", addr, size)

        return read

    def _bus_write(self, bus: Any) -> Callable[[int, int, int], None]:
        def write(addr: int, size: int, value: int) -> None:
            if self._inside:
                self._call(bus, "write", addr, size, value)
                return
            index, offset = self._region(bus, addr, size)
            self._add(Op(OpKind.MMIO_WRITE, (index, offset, SIZES.index(size), value & ((1 << 64) - 1))))

        return write

    def _config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        if self._inside:
            return self._call(self.machine, "config_read", bus, devfn, offset, size)
        self._check_config(bus, devfn, offset, size)
        if self.config_reads:
            self.ops.append(Op(OpKind.CFG_READ, (offset, SIZES.index(size))))
        return self._call(self.machine, "config_read", bus, devfn, offset, size)

    def _config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        if self._inside:
            self._call(self.machine, "config_write", bus, devfn, offset, size, value)
            return
        self._check_config(bus, devfn, offset, size)
        self._add(Op(OpKind.CFG_WRITE, (offset, SIZES.index(size), value & 0xFFFF_FFFF)))

    def _check_config(self, bus: int, devfn: int, offset: int, size: int) -> None:
        own = getattr(self.rig, "devfn", None)
        if bus != 0 or devfn != own:
            raise RecordError(f"config access to {bus}:{devfn:#x}, not the rig's function")
        if size not in (1, 2, 4) or offset % size or not 0 <= offset < 256:
            raise RecordError(f"config access of {size} bytes at {offset:#x} cannot be expressed")

    def _mem_write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        if self._inside:
            self._call(self.machine.memory, "write", gpa, data)
            return
        raw = bytes(data)
        limit = self.machine.memory.size - 8
        pos = 0
        while pos < len(raw):
            at = gpa + pos
            size = next(s for s in (8, 4, 2, 1) if at % s == 0 and pos + s <= len(raw))
            if at >= limit:
                raise RecordError(f"RAM store at {at:#x} is past what RAM_WRITE can address")
            value = int.from_bytes(raw[pos : pos + size], "little")
            self._add(Op(OpKind.RAM_WRITE, (at, SIZES.index(size), value)))
            pos += size

    def _mem_fill(self, gpa: int, length: int, value: int = 0) -> None:
        if self._inside:
            self._call(self.machine.memory, "fill", gpa, length, value)
            return
        if gpa + length > self.machine.memory.size:
            raise RecordError(f"RAM fill [{gpa:#x}, +{length:#x}) is outside RAM")
        pos = 0
        while pos < length:
            count = min(_FILL_MAX, length - pos)
            self._add(Op(OpKind.RAM_FILL, (gpa + pos, count, value & 0xFF)))
            pos += count

    def _mem_write_struct(self, layout: struct.Struct, gpa: int, *values: int) -> None:
        if self._inside:
            self._call(self.machine.memory, "write_struct", layout, gpa, *values)
            return
        self._mem_write(gpa, layout.pack(*values))

    def _store(self, size: int) -> Callable[[int, int], None]:
        name = f"store_u{8 * size}"

        def store(gpa: int, value: int) -> None:
            if self._inside:
                self._call(self.machine.memory, name, gpa, value)
                return
            self._mem_write(gpa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

        return store

    def program(self) -> Program:
        """The recorded program."""
        if len(self.ops) > MAX_OPS:
            raise RecordError(f"the seed needs {len(self.ops)} ops, more than {MAX_OPS}")
        return Program(self.ram_seed, tuple(self.ops))


def _arity(kind: OpKind) -> int:
    from ._ops import _ARGS

    return len(_ARGS[kind].unpack(bytes(_ARGS[kind].size)))


def record(factory: Callable[[], Rig], script: Callable[[Recorder], None], ram_seed: int = 0) -> bytes:
    """Run ``script`` on a fresh rig under a ``Recorder``; return the encoded seed."""
    rig = factory()
    recorder = Recorder(rig, ram_seed)
    try:
        script(recorder)
        return encode(recorder.program())
    finally:
        recorder.close()
        rig.close()
