"""Interrupt delivery, injected into devices (vm-superio ``Trigger``).

Rules:

1. A device never calls a global interrupt controller. It is handed objects that speak
   one of three small protocols:
   - ``Trigger.trigger()``: an edge (an eventfd write, a pulse);
   - ``LevelSink.set_level(bool)``: a level-triggered line (INTx, a legacy IRQ pin);
   - ``MsiSink.deliver_msi(address, data)``: a message-signalled interrupt.
2. ``IrqLine`` is a shared level-triggered line: several ``IrqSource`` handles drive it and
   the line is the OR of them (PCI INTx wire-OR). Its sink hears only changes.
3. ``Null*`` implementations drop everything; ``Recording*`` ones keep what they saw, for tests.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "Trigger",
    "LevelSink",
    "MsiSink",
    "MsiMessage",
    "IrqLine",
    "IrqSource",
    "NullTrigger",
    "RecordingTrigger",
    "NullLevelSink",
    "RecordingLevelSink",
    "NullMsiSink",
    "RecordingMsiSink",
    "TriggerLevelSink",
]


@runtime_checkable
class Trigger(Protocol):
    """An edge-triggered interrupt."""

    def trigger(self) -> None:
        """Signal the interrupt once."""
        ...


@runtime_checkable
class LevelSink(Protocol):
    """Something that follows the level of an interrupt line."""

    def set_level(self, asserted: bool) -> None:
        """The line is now asserted (``True``) or deasserted."""
        ...


class MsiMessage(NamedTuple):
    """An MSI/MSI-X message: a DWORD ``data`` written to ``address``."""

    address: int
    data: int


@runtime_checkable
class MsiSink(Protocol):
    """Where a function's MSI/MSI-X messages go (an interrupt controller, an irqfd map)."""

    def deliver_msi(self, address: int, data: int) -> None:
        """Deliver one message."""
        ...


class NullTrigger:
    """A trigger that does nothing."""

    def trigger(self) -> None:
        """Do nothing."""


class RecordingTrigger:
    """A trigger that counts its edges."""

    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        """Count one edge."""
        self.count += 1


class NullLevelSink:
    """A level sink that ignores the line."""

    def set_level(self, asserted: bool) -> None:
        """Ignore the new level."""


class RecordingLevelSink:
    """A level sink that keeps the current level and every change."""

    def __init__(self) -> None:
        self.level = False
        self.history: list[bool] = []

    def set_level(self, asserted: bool) -> None:
        """Record the new level."""
        self.level = asserted
        self.history.append(asserted)


class TriggerLevelSink:
    """Turns a rising level into an edge (an irqfd without resample; a conservative bridge)."""

    def __init__(self, trigger: Trigger) -> None:
        self._trigger = trigger
        self.level = False

    def set_level(self, asserted: bool) -> None:
        """Pulse the trigger on a rising edge."""
        if asserted and not self.level:
            self._trigger.trigger()
        self.level = asserted


class NullMsiSink:
    """An MSI sink that drops messages."""

    def deliver_msi(self, address: int, data: int) -> None:
        """Drop the message."""


class RecordingMsiSink:
    """An MSI sink that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[MsiMessage] = []

    def deliver_msi(self, address: int, data: int) -> None:
        """Record the message."""
        self.messages.append(MsiMessage(address, data))


class IrqLine:
    """A shared level-triggered line: the OR of its sources.

    Args:
        sink: told of every change of the line's level.
        name: for traces and repr.
    """

    def __init__(self, sink: LevelSink | None = None, name: str = "irq") -> None:
        self.sink: LevelSink = sink if sink is not None else NullLevelSink()
        self.name = name
        self._asserted: set[int] = set()
        self._next_id = 0

    @property
    def level(self) -> bool:
        """Whether any source asserts the line."""
        return bool(self._asserted)

    def source(self) -> IrqSource:
        """A new handle that drives this line."""
        self._next_id += 1
        return IrqSource(self, self._next_id)

    def _set(self, source_id: int, asserted: bool) -> None:
        before = bool(self._asserted)
        if asserted:
            self._asserted.add(source_id)
        else:
            self._asserted.discard(source_id)
        after = bool(self._asserted)
        if after != before:
            self.sink.set_level(after)

    def __repr__(self) -> str:
        return f"IrqLine({self.name!r}, level={self.level})"


class IrqSource:
    """One driver of a shared ``IrqLine``; itself a ``LevelSink``."""

    __slots__ = ("_line", "_id", "asserted")

    def __init__(self, line: IrqLine, source_id: int) -> None:
        self._line = line
        self._id = source_id
        self.asserted = False

    def set_level(self, asserted: bool) -> None:
        """Drive this source's contribution to the line."""
        asserted = bool(asserted)
        if asserted != self.asserted:
            self.asserted = asserted
            self._line._set(self._id, asserted)
