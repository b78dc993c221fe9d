"""Constructor argument checks for device authors: a wrong argument is refused where it is passed.

A device that took ``E1000(memory, "tap0")`` would fail much later, inside a guest's
register write, far from the mistake. Constructors call these instead, so a VMM author
gets a ``UsageError`` naming the argument (CONVENTIONS: errors).
"""

from __future__ import annotations

from typing import Any, TypeVar

from ._errors import UsageError
from ._memory import GuestMemory

__all__ = ["check_memory", "check_implements", "protocol_members", "OWNER_MEMBERS"]

T = TypeVar("T")

_PROTOCOL_BASES = {"Protocol", "Generic", "object"}


def check_memory(owner: str, memory: Any, name: str = "memory") -> GuestMemory:
    """``memory`` if it is a ``GuestMemory``.

    Raises:
        UsageError: it is not; the message names ``owner`` and the argument.
    """
    if not isinstance(memory, GuestMemory):
        raise UsageError(f"{owner}: {name} must be a GuestMemory, got {_describe(memory)}")
    return memory


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The public methods and properties a ``typing.Protocol`` class declares (its bases too)."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass.__name__ in _PROTOCOL_BASES:
            continue
        names.update(n for n in vars(klass) if not n.startswith("_"))
        names.update(n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_"))
    return tuple(sorted(names))


OWNER_MEMBERS = ("close",)
"""Members a device never calls on what it is given: the VMM that made a backend closes it."""


def check_implements(owner: str, name: str, value: T, protocol: type, *, optional: bool = False,
                     ignore: tuple[str, ...] = OWNER_MEMBERS) -> T:
    """``value`` if it has every member of ``protocol`` but ``ignore`` (``None`` too when
    ``optional``).

    Raises:
        UsageError: a member is missing; the message names ``owner``, the argument and
            what is missing.
    """
    if value is None and optional:
        return value
    missing = [m for m in protocol_members(protocol) if m not in ignore and not hasattr(value, m)]
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise UsageError(
            f"{owner}: {name} must be a {protocol.__name__}{' or None' if optional else ''}, "
            f"got {_describe(value)} (it has no {shown})"
        )
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
