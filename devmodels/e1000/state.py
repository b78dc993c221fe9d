"""The e1000 snapshot: plain, versioned data (devmodels ``_state`` contract).

Rules:

1. ``E1000State`` holds the constructor arguments (``E1000Args``: what the guest sees of
   how the device was built) and everything that survives between two device calls: PCI
   config, every register value, the EEPROM image and Microwire port, the PHY, the
   interrupt unit (time, output level, deadlines), both transmit contexts and IOADDR.
   There is no in-flight packet to save: the engines never hold one between calls, and
   posted ring work is run by ``quiesce()`` before ``state()`` (which refuses otherwise).
2. ``check_state`` checks ``args`` against the device's first, then validates every
   field against the device it is meant for and raises ``SnapshotError`` naming the
   field; ``E1000.restore`` calls it before applying anything.
3. Deadlines are absolute times in the VMM's clock; a VMM restoring elsewhere must keep
   its clock continuous (or call ``tick`` with a matching time base).
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import SnapshotError
from .._regs import RegisterFile
from .._state import check_args, check_bool, check_int, check_version
from ..pci import PciFunctionState
from .eeprom import MicrowirePort, check_image
from .interrupts import InterruptUnit
from .phy import M88Phy

__all__ = ["E1000Args", "E1000State", "STATE_VERSION", "CONTEXT_FIELDS", "check_state"]

STATE_VERSION = 2  # 2: args
# TsoContext fields in snapshot order, with their bit widths
CONTEXT_FIELDS = (
    ("ipcss", 8),
    ("ipcso", 8),
    ("ipcse", 16),
    ("tucss", 8),
    ("tucso", 8),
    ("tucse", 16),
    ("paylen", 20),
    ("tucmd", 8),
    ("hdrlen", 8),
    ("mss", 16),
)


@dataclass(frozen=True)
class E1000Args:
    """The constructor arguments of an ``E1000`` that the guest sees (``devmodels._state``
    rule 3). The backend, the name and ``posted_writes`` are the restorer's to choose."""

    mac: bytes
    eeprom: tuple[int, ...] | None
    revision: int
    msi: bool
    mitigation: bool
    link: bool


@dataclass(frozen=True)
class E1000State:
    """A snapshot of an ``E1000`` (rule 1)."""

    version: int
    args: E1000Args
    pci: PciFunctionState
    registers: tuple[tuple[int, int], ...]
    io_addr: int
    eeprom: tuple[int, ...]
    eeprom_write_enabled: bool
    eeprom_port: tuple[int, ...]
    phy_regs: tuple[int, ...]
    phy_cable: bool
    phy_link_latched_low: bool
    phy_an_complete: bool
    link_reported: bool
    irq_now: int
    irq_asserted: bool
    irq_last_assert: int
    irq_deadlines: tuple[int, ...]
    tx_context_normal: tuple[int, ...]
    tx_context_tso: tuple[int, ...]


def check_state(state: E1000State, args: E1000Args, registers: RegisterFile) -> dict[int, int]:
    """Validate ``state`` for a device built with ``args`` and this register table (rule 2).

    Returns:
        the register values as a dict, ready to apply.

    Raises:
        SnapshotError: any inconsistent field.
    """
    if not isinstance(state, E1000State):
        raise SnapshotError("state", f"expected E1000State, got {type(state).__name__}")
    check_version("version", state.version, STATE_VERSION)
    check_args("args", state.args, args)
    known = {reg.offset: reg for reg in registers.registers}
    if not isinstance(state.registers, tuple):
        raise SnapshotError("registers", "expected a tuple of (offset, value) pairs")
    values: dict[int, int] = {}
    for i, pair in enumerate(state.registers):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise SnapshotError(f"registers[{i}]", "expected an (offset, value) pair")
        offset, value = pair
        reg = known.get(offset) if isinstance(offset, int) else None
        if reg is None or offset in values:
            raise SnapshotError(f"registers[{i}]", f"unknown or repeated offset {offset!r}")
        values[offset] = check_int(f"registers[{reg.name}]", value, 0, (1 << (8 * reg.size)) - 1)
    if set(values) != set(known):
        missing = sorted(known[o].name for o in set(known) - set(values))
        raise SnapshotError("registers", f"missing {missing[:5]}")
    check_int("io_addr", state.io_addr, 0, 0x1_FFFF)
    if not isinstance(state.eeprom, tuple):
        raise SnapshotError("eeprom.words", "expected a tuple")
    check_image(state.eeprom, SnapshotError)
    check_bool("eeprom_write_enabled", state.eeprom_write_enabled)
    MicrowirePort.check_snapshot(state.eeprom_port)
    M88Phy.check_snapshot(state.phy_regs, state.phy_cable, state.phy_link_latched_low, state.phy_an_complete)
    check_bool("link_reported", state.link_reported)
    InterruptUnit.check_snapshot(state.irq_now, state.irq_asserted, state.irq_last_assert, state.irq_deadlines)
    for name in ("tx_context_normal", "tx_context_tso"):
        fields = getattr(state, name)
        if not isinstance(fields, tuple) or len(fields) != len(CONTEXT_FIELDS):
            raise SnapshotError(name, f"expected {len(CONTEXT_FIELDS)} integers")
        for (field_name, bits), value in zip(CONTEXT_FIELDS, fields, strict=True):
            check_int(f"{name}.{field_name}", value, 0, (1 << bits) - 1)
    return values
