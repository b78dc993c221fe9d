"""A device mounted in the in-process machine, ready to be driven by an op stream.

Rules:

1. A fuzz target is a function ``build() -> Rig``. ``PciRig`` covers any ``PciFunction``:
   it plugs the function into a ``Machine``, runs firmware enumeration, and exposes every
   mapped BAR as a region the ops address by index. Devices not on PCI (virtio-mmio)
   subclass ``Rig`` and list their own regions.
2. RAM ops go through ``ram_write``/``ram_fill`` so a rig can mirror them (the ring
   differential keeps one RAM per implementation).
3. Target-specific inputs (queue notifies, backend events such as a received frame or a
   block completion, clock ticks) go through the ``notify``/``backend_event``/``tick``
   hooks; the defaults do nothing.
4. A program gets ``SNAPSHOT_BUDGET`` snapshot round trips; later SNAPSHOT ops do nothing.
   One round trip of a large state (the e1000's register file) costs as much as hundreds
   of register ops, and the fuzzer would otherwise breed inputs made of little else.
5. ``health_check`` runs after a reset and must prove the device works again (a register
   that reads its reset value, a queue that accepts a request); it raises ``Finding``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from devmodels import Bus, Machine, from_dict, to_dict
from devmodels.pci import PciFunction

__all__ = [
    "Rig", "PciRig", "Finding", "TargetFactory", "RAM_SIZE", "SNAPSHOT_BUDGET",
]

RAM_SIZE = 1 << 20  # small RAM: more random addresses land in it
SNAPSHOT_BUDGET = 4

class Finding(Exception):
    """An oracle fired: the input exposes a bug."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


class Rig:
    """A device under fuzz, and how to reach it."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.regions: list[tuple[Bus, int, int]] = []  # (bus, base, size)
        self.snapshots_left = SNAPSHOT_BUDGET

    def ram_loaded(self) -> None:
        """Called once the RAM pattern is in place, before the first op."""

    def ram_write(self, gpa: int, data: bytes) -> None:
        """A RAM_WRITE op (the guest's CPU stores; ``gpa`` is inside RAM)."""
        self.machine.memory.write(gpa, data)

    def ram_fill(self, gpa: int, length: int, value: int) -> None:
        """A RAM_FILL op (``[gpa, gpa+length)`` is inside RAM)."""
        self.machine.memory.fill(gpa, length, value)

    def config_read(self, offset: int, size: int) -> int:
        """A config read of the device (non-PCI rigs: 0)."""
        return 0

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A config write to the device (non-PCI rigs: ignored)."""

    def notify(self, queue: int) -> None:
        """A queue notification / doorbell not expressed as a register write."""

    def tick(self, delta_ns: int) -> None:
        """Advance the device's clock."""

    def backend_event(self, event: int, arg: int) -> None:
        """A host-side event (received frame, I/O completion)."""

    def pump(self) -> None:
        """Let asynchronous backend completions reach the device."""

    def reset(self) -> None:
        """Reset the device."""

    def snapshot_roundtrip(self) -> None:
        """state() -> plain dict -> state -> restore(); the state must survive unchanged."""

    def health_check(self) -> None:
        """After ``reset``: prove the device works (rule 3)."""

    def close(self) -> None:
        """Release host resources."""
        self.machine.close()


class PciRig(Rig):
    """A ``PciFunction`` on bus 0 of a machine, BARs assigned by firmware enumeration.

    Args:
        machine: the machine (its RAM is what DMA reaches).
        function: the device.
        state_type: the device's state dataclass, for the dict round trip.
    """

    def __init__(self, machine: Machine, function: PciFunction, state_type: type | None = None) -> None:
        super().__init__(machine)
        self.function = function
        self.state_type = state_type
        slot = machine.add_pci(function)
        self.devfn = slot << 3
        for info in machine.enumerate():
            if info.devfn != self.devfn:
                continue
            for bar in info.bars:
                if bar.address is not None:
                    bus = machine.pio if bar.kind == "io" else machine.mmio
                    self.regions.append((bus, bar.address, bar.size))

    def config_read(self, offset: int, size: int) -> int:
        """Through the legacy config ports, as a guest does."""
        return self.machine.config_read(0, self.devfn, offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Through the legacy config ports, as a guest does."""
        self.machine.config_write(0, self.devfn, offset, size, value)

    def reset(self) -> None:
        """The device's own reset if it has one, else the PCI function reset."""
        reset: Callable[[], None] | None = getattr(self.function, "reset", None)
        (reset or self.function.reset_function)()

    def snapshot_roundtrip(self) -> None:
        """Rule: a snapshot taken at the quiesce point (``quiesce()`` then ``state()``, the
        snapshot contract) survives plain-data transport and restore unchanged."""
        state_fn: Callable[[], Any] | None = getattr(self.function, "state", None)
        restore_fn: Callable[[Any], None] | None = getattr(self.function, "restore", None)
        if state_fn is None or restore_fn is None or self.state_type is None:
            return
        self.function.quiesce()
        before = state_fn()
        state_type = getattr(self.function, "state_type", self.state_type)  # parameterized if generic
        rebuilt: Any = from_dict(state_type, to_dict(before))
        if rebuilt != before:
            raise Finding("snapshot", "state changed through to_dict/from_dict")
        restore_fn(rebuilt)
        after = state_fn()
        if dataclasses.is_dataclass(after) and after != before:
            raise Finding("snapshot", "restore(state()) changed the device state")


TargetFactory = Callable[[], Rig]
