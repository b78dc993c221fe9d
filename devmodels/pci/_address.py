"""Typed PCI addresses on one bus: ``Slot`` (device number) and ``DevFn`` (slot and function).

Both are ``int`` subclasses, so arithmetic, comparisons and formatting work as before, but
a function that wants a devfn can tell a slot from one: ``Machine.add_pci`` returns a
``Slot``, and ``as_devfn`` (used by the config-cycle entry points and the driver
simulators) turns it into the devfn of its function 0 instead of reading it as devfn
``slot`` (which is slot 0, function ``slot``: a different device). A plain ``int`` is
taken as a devfn, as the configuration mechanism encodes it (PCI Local Bus 3.0 §3.2.2.3.2:
device number in bits 15:11 of CONFIG_ADDRESS, function number in bits 10:8, so a devfn is
``device << 3 | function``).
"""

from __future__ import annotations

from .._errors import UsageError

__all__ = ["DevFn", "Slot", "as_devfn"]


class DevFn(int):
    """A device/function number on one bus: ``slot << 3 | function`` (0..255).

    Raises:
        UsageError: the value is out of range.
    """

    def __new__(cls, value: int) -> DevFn:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 256:
            raise UsageError(f"a devfn is an integer 0..255 (slot << 3 | function), got {value!r}")
        return super().__new__(cls, value)

    @classmethod
    def of(cls, slot: int, function: int = 0) -> DevFn:
        """The devfn of ``function`` (0..7) of ``slot`` (0..31)."""
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < 32:
            raise UsageError(f"slot must be 0..31, got {slot!r}")
        if isinstance(function, bool) or not isinstance(function, int) or not 0 <= function < 8:
            raise UsageError(f"function must be 0..7, got {function!r}")
        return cls(slot << 3 | function)

    @property
    def slot(self) -> Slot:
        """The device (slot) number."""
        return Slot(int(self) >> 3)

    @property
    def function(self) -> int:
        """The function number."""
        return int(self) & 7

    def __repr__(self) -> str:
        return f"DevFn({int(self) >> 3:02x}.{int(self) & 7})"

    def __str__(self) -> str:  # formats as the number it is (command lines, JSON, f-strings)
        return str(int(self))


class Slot(int):
    """A device (slot) number on one bus (0..31), as ``Machine.add_pci`` returns it.

    Raises:
        UsageError: the value is out of range.
    """

    def __new__(cls, value: int) -> Slot:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 32:
            raise UsageError(f"a slot is an integer 0..31, got {value!r}")
        return super().__new__(cls, value)

    @property
    def devfn(self) -> DevFn:
        """The devfn of function 0 of this slot."""
        return DevFn(int(self) << 3)

    def function(self, number: int) -> DevFn:
        """The devfn of function ``number`` of this slot."""
        return DevFn.of(int(self), number)

    def __repr__(self) -> str:
        return f"Slot({int(self):#04x})"

    def __str__(self) -> str:  # formats as the number it is (command lines, JSON, f-strings)
        return str(int(self))


def as_devfn(value: int) -> DevFn:
    """``value`` as a devfn: a ``Slot`` means its function 0; a ``DevFn`` or plain int is a devfn.

    Raises:
        UsageError: out of range.
    """
    if isinstance(value, Slot):
        return value.devfn
    if isinstance(value, DevFn):
        return value
    return DevFn(value)
