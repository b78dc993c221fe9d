"""AHCI snapshots: plain frozen dataclasses, strict validation, then apply.

Rules (``devmodels._state``):

1. ``capture_state`` copies; nothing mutable is shared with the controller.
2. ``check_state`` checks ``args`` first (``AhciArgs``: the port count, MSI and each
   port's drive with its identity strings, against the live controller's), then validates
   every field against the live controller (its CAP, ports, drives and backends) and
   raises ``SnapshotError`` naming the field; ``apply_state`` runs only after it passed,
   so a rejected snapshot changes nothing.
3. The quiesce point: a snapshot holds no command in flight (``AhciController.state``
   refuses, naming ``quiesce()``, while posted work waits, a request is in flight or an
   HBA reset waits for one). So PxCMD.CR equals PxCMD.ST, no queued command is
   outstanding, and a port's PxCI/PxSACT bits are only those a halted port keeps for
   software or those issued while the link is not up (they start when it comes up).
4. Drives are host objects: a snapshot records their identity (in ``args``) and settings,
   not their media. Restoring needs the same drive on each port, the same disk size, and
   an ATAPI medium present exactly when it was; ``AhciController.from_state`` builds the
   drives from ``args`` around the media the restorer opens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import SnapshotError
from .._regs import Access, RegisterFile
from .._state import check_args, check_bool, check_bytes, check_int, check_type, check_version
from ..pci import PciFunctionState
from . import defs as d
from . import regs as r
from .ata import AtaDisk
from .atapi import AtapiCdrom, Sense
from .port import LinkState

if TYPE_CHECKING:
    from .hba import AhciController
    from .port import AhciPort

__all__ = ["AtaDiskArgs", "AtapiArgs", "AhciArgs", "AtaDiskState", "AtapiState", "PortState", "AhciState",
           "constructor_args", "capture_state", "check_state", "apply_state"]

STATE_VERSION = 2  # 2: args


@dataclass(frozen=True)
class AtaDiskArgs:
    """An ATA disk's constructor arguments (its backend is the restorer's)."""

    model: str
    serial: str
    firmware: str
    rotational: bool


@dataclass(frozen=True)
class AtapiArgs:
    """An ATAPI drive's constructor arguments (its medium is the restorer's)."""

    model: str
    serial: str
    firmware: str
    vendor: str
    product: str
    revision: str


@dataclass(frozen=True)
class AhciArgs:
    """The controller's constructor arguments and the drives attached to its ports (rule 4);
    ``posted_writes`` and the name are the restorer's to choose."""

    ports: int
    msi: bool
    drives: tuple[AtaDiskArgs | AtapiArgs | None, ...]


@dataclass(frozen=True)
class AtaDiskState:
    """An ATA disk's settings (SET FEATURES, SET MULTIPLE, power) and its NCQ error log."""

    sectors: int
    write_cache: bool
    read_ahead: bool
    udma_mode: int | None
    mwdma_mode: int | None
    multiple: int
    smart_enabled: bool
    power: int
    ncq_error: bytes | None


@dataclass(frozen=True)
class AtapiState:
    """An ATAPI drive's tray, lock, sense and event state."""

    has_medium: bool
    tray_open: bool
    locked: bool
    sense: tuple[int, int, int]
    unit_attention: tuple[int, int] | None
    media_event: int
    udma_mode: int | None
    mwdma_mode: int | None
    power: int


@dataclass(frozen=True)
class PortState:
    """One port: its registers, engine flags and drive settings."""

    registers: tuple[tuple[int, int], ...]
    halted: bool
    next_slot: int
    srst: bool
    link: int
    ata: AtaDiskState | None
    atapi: AtapiState | None


@dataclass(frozen=True)
class AhciState:
    """The whole controller."""

    version: int
    args: AhciArgs
    pci: PciFunctionState
    registers: tuple[tuple[int, int], ...]
    ports: tuple[PortState, ...]


# -- capture ------------------------------------------------------------------------------


def _drive_states(port: AhciPort) -> tuple[AtaDiskState | None, AtapiState | None]:
    drive = port.drive
    if isinstance(drive, AtaDisk):
        return (
            AtaDiskState(
                drive.sectors, drive.write_cache, drive.read_ahead, drive.udma_mode, drive.mwdma_mode,
                drive.multiple, drive.smart_enabled, drive.power, drive.ncq_error,
            ),
            None,
        )
    if isinstance(drive, AtapiCdrom):
        sense = drive.sense
        return None, AtapiState(
            drive.backend is not None, drive.tray_open, drive.locked, (sense.key, sense.asc, sense.ascq),
            drive.unit_attention, drive.media_event, drive.udma_mode, drive.mwdma_mode, drive.power,
        )
    return None, None


def _drive_args(drive: object) -> AtaDiskArgs | AtapiArgs | None:
    if isinstance(drive, AtaDisk):
        info = drive.info
        return AtaDiskArgs(info.model, info.serial, info.firmware, bool(drive.rotational))
    if isinstance(drive, AtapiCdrom):
        info, inquiry = drive.info, drive._inquiry_strings  # vendor, product, revision as INQUIRY pads them
        text = [inquiry[a:b].decode("ascii").rstrip(" ") for a, b in ((0, 8), (8, 24), (24, 28))]
        return AtapiArgs(info.model, info.serial, info.firmware, *text)
    return None


def constructor_args(hba: AhciController) -> AhciArgs:
    """The controller's ``AhciArgs`` as attached now (rule 4)."""
    return AhciArgs(len(hba.ports), hba.msi is not None, tuple(_drive_args(port.drive) for port in hba.ports))


def capture_state(hba: AhciController) -> AhciState:
    """Rule 1."""
    ports = []
    for port in hba.ports:
        ata, atapi = _drive_states(port)
        ports.append(
            PortState(tuple(sorted(port.regs.values.items())), port.halted, port.next_slot, port.srst, int(port.link), ata, atapi)
        )
    return AhciState(STATE_VERSION, constructor_args(hba), hba.pci_state(), tuple(sorted(hba.registers.values.items())),
                     tuple(ports))


# -- validation ---------------------------------------------------------------------------


def _check_registers(field: str, regs: RegisterFile, values: object) -> dict[int, int]:
    check_type(field, values, tuple)
    assert isinstance(values, tuple)
    known = {reg.offset: reg for reg in regs.registers}
    out: dict[int, int] = {}
    for i, item in enumerate(values):
        check_type(f"{field}[{i}]", item, tuple)
        if len(item) != 2:
            raise SnapshotError(f"{field}[{i}]", "expected (offset, value)")
        offset, value = item
        reg = known.get(offset) if isinstance(offset, int) else None
        if reg is None or offset in out:
            raise SnapshotError(f"{field}[{i}]", f"unknown or repeated register offset {offset!r}")
        out[offset] = check_int(f"{field}.{reg.name}", value, 0, (1 << (8 * reg.size)) - 1)
    if set(out) != set(known):
        raise SnapshotError(field, "register set does not match this controller")
    for offset, reg in known.items():
        value = out[offset]
        if reg.access is Access.RO and reg.name in ("CAP", "PI", "VS", "CCC_CTL", "CCC_PORTS", "EM_LOC", "EM_CTL",
                                                     "CAP2", "BOHC") and value != reg.reset:
            raise SnapshotError(f"{field}.{reg.name}", "read-only register differs from this controller")
        if reg.access in (Access.RW, Access.W1C) and reg.name not in ("PxCMD", "GHC") and value & ~reg.mask:
            raise SnapshotError(f"{field}.{reg.name}", f"{value:#x} has bits outside {reg.mask:#x}")
    return out


def _check_modes(field: str, udma: object, mwdma: object, udma_max: int) -> None:
    if udma is not None:
        check_int(f"{field}.udma_mode", udma, 0, udma_max)
    if mwdma is not None:
        check_int(f"{field}.mwdma_mode", mwdma, 0, 2)
    if udma is not None and mwdma is not None:
        raise SnapshotError(field, "both a UDMA and an MWDMA mode are selected")


def _check_ata(field: str, drive: AtaDisk, s: AtaDiskState) -> None:
    check_type(field, s, AtaDiskState)
    check_int(f"{field}.sectors", s.sectors, drive.sectors, drive.sectors)
    for name in ("write_cache", "read_ahead", "smart_enabled"):
        check_bool(f"{field}.{name}", getattr(s, name))
    _check_modes(field, s.udma_mode, s.mwdma_mode, 6)
    multiple = check_int(f"{field}.multiple", s.multiple, 0, 16)
    if multiple & (multiple - 1):
        raise SnapshotError(f"{field}.multiple", "not a power of two")
    if s.power not in (d.POWER_STANDBY, d.POWER_IDLE, d.POWER_ACTIVE):
        raise SnapshotError(f"{field}.power", f"unknown power mode {s.power!r}")
    if s.ncq_error is not None:
        page = check_bytes(f"{field}.ncq_error", s.ncq_error, 512)
        if sum(page) & 0xFF:
            raise SnapshotError(f"{field}.ncq_error", "log page checksum is wrong")


def _check_atapi(field: str, drive: AtapiCdrom, s: AtapiState) -> None:
    check_type(field, s, AtapiState)
    if check_bool(f"{field}.has_medium", s.has_medium) != (drive.backend is not None):
        raise SnapshotError(f"{field}.has_medium", "the drive's medium presence differs")
    for name in ("tray_open", "locked"):
        check_bool(f"{field}.{name}", getattr(s, name))
    check_type(f"{field}.sense", s.sense, tuple)
    if len(s.sense) != 3:
        raise SnapshotError(f"{field}.sense", "expected (key, asc, ascq)")
    check_int(f"{field}.sense.key", s.sense[0], 0, 0xF)
    check_int(f"{field}.sense.asc", s.sense[1], 0, 0xFF)
    check_int(f"{field}.sense.ascq", s.sense[2], 0, 0xFF)
    if s.unit_attention is not None:
        check_type(f"{field}.unit_attention", s.unit_attention, tuple)
        if len(s.unit_attention) != 2:
            raise SnapshotError(f"{field}.unit_attention", "expected (asc, ascq)")
        for value in s.unit_attention:
            check_int(f"{field}.unit_attention", value, 0, 0xFF)
    check_int(f"{field}.media_event", s.media_event, 0, 0xF)
    _check_modes(field, s.udma_mode, s.mwdma_mode, 5)
    if s.power not in (d.POWER_STANDBY, d.POWER_IDLE, d.POWER_ACTIVE):
        raise SnapshotError(f"{field}.power", f"unknown power mode {s.power!r}")


def _check_port(field: str, port: AhciPort, s: PortState) -> None:
    check_type(field, s, PortState)
    values = _check_registers(f"{field}.registers", port.regs, s.registers)
    check_bool(f"{field}.halted", s.halted)
    check_bool(f"{field}.srst", s.srst)
    check_int(f"{field}.next_slot", s.next_slot, 0, r.NUM_SLOTS - 1)
    link = check_int(f"{field}.link", s.link, LinkState.DOWN, LinkState.UP)
    if link == LinkState.WAITING:
        raise SnapshotError(f"{field}.link", "a link waiting for I/O to drain cannot be quiesced")
    if link == LinkState.UP and port.drive is None:
        raise SnapshotError(f"{field}.link", "link up without a drive")
    cmd = values[r.PxCMD]
    if cmd & ~(r.PxCMD_WRITABLE | r.PxCMD_CR | r.PxCMD_FR | r.PxCMD_CCS_MASK | r.PxCMD_POD) or not cmd & r.PxCMD_POD:
        raise SnapshotError(f"{field}.PxCMD", f"{cmd:#x} has bits this port cannot hold")
    if bool(cmd & r.PxCMD_CR) != bool(cmd & r.PxCMD_ST) or bool(cmd & r.PxCMD_FR) != bool(cmd & r.PxCMD_FRE):
        raise SnapshotError(f"{field}.PxCMD", "CR/FR disagree with ST/FRE at a quiesce point")
    if not cmd & r.PxCMD_ST and (values[r.PxCI] or values[r.PxSACT]):
        raise SnapshotError(f"{field}.PxCI", "commands issued while PxCMD.ST is clear")
    if cmd & r.PxCMD_ST and values[r.PxCI] and not s.halted and link == LinkState.UP:
        # Rule 3: a running port with the link up starts what is issued at once; without
        # a link (no spin-up yet, COMRESET held) the commands wait for it, and so will
        # the restored port.
        raise SnapshotError(f"{field}.PxCI", "issued commands on a running port at a quiesce point")
    ata, atapi = s.ata, s.atapi
    drive = port.drive
    if isinstance(drive, AtaDisk):
        if ata is None or atapi is not None:
            raise SnapshotError(f"{field}.ata", "the port has an ATA disk")
        _check_ata(f"{field}.ata", drive, ata)
    elif isinstance(drive, AtapiCdrom):
        if atapi is None or ata is not None:
            raise SnapshotError(f"{field}.atapi", "the port has an ATAPI drive")
        _check_atapi(f"{field}.atapi", drive, atapi)
    elif ata is not None or atapi is not None:
        raise SnapshotError(field, "the port has no drive")


def check_state(hba: AhciController, state: AhciState) -> None:
    """Rule 2: raise ``SnapshotError`` for anything this controller could not have produced."""
    check_type("state", state, AhciState)
    check_version("version", state.version, STATE_VERSION)
    check_args("args", state.args, constructor_args(hba))
    hba.check_pci_state(state.pci)
    values = _check_registers("registers", hba.registers, state.registers)
    if values[r.GHC] & ~(r.GHC_AE | r.GHC_IE) or not values[r.GHC] & r.GHC_AE:
        raise SnapshotError("registers.GHC", f"{values[r.GHC]:#x} is not a quiesced GHC value")
    check_type("ports", state.ports, tuple)
    if len(state.ports) != len(hba.ports):
        raise SnapshotError("ports", f"expected {len(hba.ports)} ports, got {len(state.ports)}")
    for i, (port, port_state) in enumerate(zip(hba.ports, state.ports, strict=True)):
        _check_port(f"ports[{i}]", port, port_state)


# -- apply --------------------------------------------------------------------------------


def apply_state(hba: AhciController, state: AhciState) -> None:
    """Apply a snapshot that ``check_state`` accepted."""
    hba.load_pci_state(state.pci)
    hba.registers.values = dict(state.registers)
    hba.resetting = False
    for port, s in zip(hba.ports, state.ports, strict=True):
        port.regs.values = dict(s.registers)
        port.halted, port.next_slot, port.srst, port.link = s.halted, s.next_slot, s.srst, LinkState(s.link)
        drive = port.drive
        if isinstance(drive, AtaDisk) and s.ata is not None:
            a = s.ata
            drive.write_cache, drive.read_ahead = a.write_cache, a.read_ahead
            drive.udma_mode, drive.mwdma_mode, drive.multiple = a.udma_mode, a.mwdma_mode, a.multiple
            drive.smart_enabled, drive.power, drive.ncq_error = a.smart_enabled, a.power, a.ncq_error
        elif isinstance(drive, AtapiCdrom) and s.atapi is not None:
            c = s.atapi
            drive.tray_open, drive.locked = c.tray_open, c.locked
            drive.sense = Sense(*c.sense)
            drive.unit_attention, drive.media_event = c.unit_attention, c.media_event
            drive.udma_mode, drive.mwdma_mode, drive.power = c.udma_mode, c.mwdma_mode, c.power
