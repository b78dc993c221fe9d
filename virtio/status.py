"""The device status machine (VIRTIO 1.2 §2.1, §3.1.1) as an allow-list transition table.

Rules:

1. Everything that decides what a driver's write to ``device status`` does lives here, in
   one pure function, ``transition(status, written)``. Transports and devices never test
   status bits to decide a transition themselves.
2. ``VALID_TRANSITIONS`` is an allow-list, like Firecracker ``transport/mmio.rs``: the
   driver walks ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK, each write adding exactly
   one bit (§3.1.1), and may rewrite the current value (a no-op). Two inputs are handled
   before the table: writing 0 resets the device from any state (§4.1.4.3.1, §4.2.2), and a
   value with FAILED set adds FAILED to whatever the status is (§2.1: the driver gives up).
3. DEVICE_NEEDS_RESET is the device's bit: the driver's copy of it in a write is ignored
   (drivers write back ``status | new_bit``), and it is never cleared except by reset.
   The same holds for any other bit outside the driver's (none is reachable, but the
   function is total over 8-bit states).
4. Anything missing from the table (clearing a bit, skipping a step, reserved bits, any
   progress after FAILED) is a driver error. It leaves the driver's bits as they were and
   sets DEVICE_NEEDS_RESET, the sticky state the driver must reset to leave (§2.1.2).
5. A transition may carry a side effect that the device performs: ``NEGOTIATE`` (validate
   the accepted features; the device may refuse, leaving FEATURES_OK clear, §2.2.2) and
   ``ACTIVATE`` (the device goes live).
"""

from __future__ import annotations

import enum

from .defs import ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK

__all__ = [
    "StatusEffect",
    "VALID_TRANSITIONS",
    "DRIVER_BITS",
    "transition",
    "describe",
    "status_names",
]

# Bits the driver owns; DEVICE_NEEDS_RESET is the device's.
DRIVER_BITS = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED


class StatusEffect(enum.Enum):
    """What the device does when a status write is applied."""

    NONE = "none"
    RESET = "reset"  # written 0: device reset (§2.4)
    NEGOTIATE = "negotiate"  # FEATURES_OK: check the accepted features (§2.2.2, §3.1.1 step 5)
    ACTIVATE = "activate"  # DRIVER_OK: the device is live (§3.1.1 step 8)
    FAIL = "fail"  # FAILED: the driver gave up (§2.1)
    ILLEGAL = "illegal"  # not in the table: DEVICE_NEEDS_RESET (rule 4)


_A = ACKNOWLEDGE
_AD = ACKNOWLEDGE | DRIVER
_ADF = ACKNOWLEDGE | DRIVER | FEATURES_OK
_ADFO = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK

# (driver bits now, value written) -> (side effect, driver bits after)
VALID_TRANSITIONS: dict[tuple[int, int], tuple[StatusEffect, int]] = {
    (0, _A): (StatusEffect.NONE, _A),
    (_A, _AD): (StatusEffect.NONE, _AD),
    (_AD, _ADF): (StatusEffect.NEGOTIATE, _ADF),
    (_ADF, _ADFO): (StatusEffect.ACTIVATE, _ADFO),
    # Rewriting the current value changes nothing (a driver's read-modify-write of a bit
    # it already set).
    (_A, _A): (StatusEffect.NONE, _A),
    (_AD, _AD): (StatusEffect.NONE, _AD),
    (_ADF, _ADF): (StatusEffect.NONE, _ADF),
    (_ADFO, _ADFO): (StatusEffect.NONE, _ADFO),
}


def transition(status: int, written: int) -> tuple[StatusEffect, int]:
    """Apply a driver write of ``written`` to a device whose status is ``status``.

    Returns ``(effect, new_status)``. For ``NEGOTIATE`` the returned status assumes the
    device accepts the features; a device that refuses keeps ``status`` instead. ``RESET``
    returns 0: the caller performs the reset. Never raises for any integer input.
    """
    status &= 0xFF
    if written == 0:
        return StatusEffect.RESET, 0
    # DEVICE_NEEDS_RESET (and any bit no transition produces) belongs to the device.
    sticky = status & ~DRIVER_BITS
    if written & FAILED and not written & ~0xFF:
        return StatusEffect.FAIL, status | FAILED
    current = status & DRIVER_BITS
    requested = written & ~DEVICE_NEEDS_RESET if 0 <= written <= 0xFF else -1
    entry = VALID_TRANSITIONS.get((current, requested))
    if entry is None:
        return StatusEffect.ILLEGAL, status | DEVICE_NEEDS_RESET
    effect, after = entry
    return effect, after | sticky


_NAMES = (
    (ACKNOWLEDGE, "ACKNOWLEDGE"),
    (DRIVER, "DRIVER"),
    (FEATURES_OK, "FEATURES_OK"),
    (DRIVER_OK, "DRIVER_OK"),
    (DEVICE_NEEDS_RESET, "DEVICE_NEEDS_RESET"),
    (FAILED, "FAILED"),
)


def status_names(status: int) -> str:
    """``"ACKNOWLEDGE|DRIVER"`` for a status value (``"0"`` for reset, ``0x..`` for unknown bits)."""
    parts = [name for bit, name in _NAMES if status & bit]
    unknown = status & ~(DRIVER_BITS | DEVICE_NEEDS_RESET)
    if unknown:
        parts.append(f"{unknown:#x}")
    return "|".join(parts) or "0"


def describe() -> list[str]:
    """The table as text lines ``from --value--> to [effect]`` (for docs and diagrams)."""
    lines = ["* --0--> 0 [reset]", "* --(v with FAILED)--> *|FAILED [fail]"]
    for (before, written), (effect, after) in VALID_TRANSITIONS.items():
        lines.append(
            f"{status_names(before)} --{status_names(written)}--> {status_names(after)} [{effect.value}]"
        )
    lines.append("anything else --> unchanged|DEVICE_NEEDS_RESET [illegal]")
    return lines
