"""Fault plans: which faults, where and when, as data (JSON) and as the same Python objects.

A plan is a seed and a list of faults::

    {"seed": 7, "faults": [
        {"kind": "disk.media-error", "id": "bad-sector", "lba": 65536, "op": "read"},
        {"kind": "net.link-down", "armed": false, "for_ms": 2000},
        {"kind": "net.drop", "direction": "rx", "rate": 0.01}]}

Rules:

1. Each fault is a frozen dataclass of one kind (``KINDS``: ``disk.*``, ``net.*``,
   ``pci.*``), with keyword-only fields. ``Fault.from_dict``/``FaultPlan.from_dict`` build
   them from plain data and ``to_dict`` returns it (the fields that differ from their
   defaults, plus ``kind``): ``from_dict(to_dict(x)) == x``. An unknown kind, an unknown
   key, a value of the wrong type or out of range is a ``UsageError`` naming the fault,
   the key and what would be accepted; constructing a fault in Python validates the same.
2. Where: ``target`` names one part of the device (``disk0``, ``disk1`` for an AHCI port's
   drive or the virtio-blk image; ``nic0``; ``pci``); empty means every part of the
   fault's family.
3. When, the same fields for every kind: a fault is *armed* when it is added (``armed``
   false: when the control API arms it); its window opens ``after_ms`` later and stays open
   ``for_ms`` (None: until the fault is removed, or for ``net.tx-hang`` with
   ``until_reset``, until the device is reset). Faults that act on events (a block request,
   a frame, an interrupt: ``EventFault``) act inside the window on each matching event,
   after letting the first ``skip`` through, at most ``count`` times (None: no limit), each
   time with probability ``rate``. Faults that are a state of the part (a link that is
   down, a hung transmitter, a device that does not answer: ``StateFault``) hold for the
   whole window.
4. Reproducible: the random decisions of a fault come from its own stream, seeded by the
   plan's ``seed`` and the fault's ``id`` (``stream_seed``), so the same plan and the same
   sequence of events give the same decisions, and adding a fault does not change another
   fault's decisions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._errors import UsageError

__all__ = [
    "Fault",
    "EventFault",
    "StateFault",
    "MediaError",
    "SlowIo",
    "StuckIo",
    "TornWrite",
    "FrameDrop",
    "FrameCorrupt",
    "FrameDuplicate",
    "FrameReorder",
    "LinkDown",
    "RxOverrun",
    "TxHang",
    "NoResponse",
    "LostInterrupt",
    "FaultPlan",
    "KINDS",
    "stream_seed",
]

_OPS = ("read", "write", "any")
_DIRECTIONS = ("rx", "tx", "both")
_MAX_MS = 7 * 24 * 3600 * 1000  # a week: longer is a typo, and keeps deadlines small
_MAX_COUNT = 1 << 62


def _fail(fault: object, key: str, value: object, want: str) -> UsageError:
    kind = getattr(fault, "kind", type(fault).__name__)
    return UsageError(f"fault {kind}: {key}={value!r}: expected {want}")


def _int(fault: object, key: str, low: int = 0, high: int = _MAX_COUNT, *, optional: bool = False) -> None:
    value = getattr(fault, key)
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(fault, key, value, f"an integer in [{low}, {high}]" + (" or null" if optional else ""))


def _choice(fault: object, key: str, choices: Sequence[str]) -> None:
    value = getattr(fault, key)
    if value not in choices:
        raise _fail(fault, key, value, "one of " + ", ".join(choices))


@dataclass(frozen=True, kw_only=True)
class Fault:
    """What every fault has: its name, where it applies, and its window (rules 2–3).

    Attributes:
        id: a name for the control API (``remove``, ``arm``); empty: the engine names it
            ``KIND#N`` when it is added.
        target: the part it applies to (``disk0``, ``nic0``, ``pci``); empty: all parts of
            its family.
        armed: whether the window starts counting when the fault is added (else when armed).
        after_ms: the window opens this long after arming.
        for_ms: the window's length; None: open until removed.
    """

    kind: ClassVar[str] = ""
    family: ClassVar[str] = ""
    id: str = ""
    target: str = ""
    armed: bool = True
    after_ms: int = 0
    for_ms: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or len(self.id) > 64 or any(c.isspace() for c in self.id):
            raise _fail(self, "id", self.id, "a name of at most 64 characters without spaces")
        if not isinstance(self.target, str) or len(self.target) > 32:
            raise _fail(self, "target", self.target, "a part name such as disk0, nic0 or pci")
        if not isinstance(self.armed, bool):
            raise _fail(self, "armed", self.armed, "true or false")
        _int(self, "after_ms", 0, _MAX_MS)
        _int(self, "for_ms", 0, _MAX_MS, optional=True)
        self._validate()

    def _validate(self) -> None:
        """Kind-specific validation (rule 1); raises ``UsageError``."""

    # -- plain data (rule 1) --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``kind`` and every field that differs from its default."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Fault:
        """The fault ``data`` describes (rule 1).

        Raises:
            UsageError: not a mapping, unknown kind or key, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise UsageError(f"a fault is a JSON object, got {type(data).__name__}")
        kind = data.get("kind")
        cls = KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise UsageError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"kind"})
        if unknown:
            raise UsageError(f"fault {kind}: unknown key(s) {', '.join(unknown)} (keys: {', '.join(sorted(names))})")
        return cls(**{k: v for k, v in data.items() if k != "kind"})

    def with_id(self, fault_id: str) -> Fault:
        """A copy named ``fault_id``."""
        return dataclasses.replace(self, id=fault_id)


@dataclass(frozen=True, kw_only=True)
class EventFault(Fault):
    """A fault that acts on events in its window (rule 3).

    Attributes:
        skip: matching events let through first.
        count: most events it acts on; None: no limit.
        rate: probability of acting on each event (0..1).
    """

    skip: int = 0
    count: int | None = None
    rate: float = 1.0

    def __post_init__(self) -> None:
        _int(self, "skip")
        _int(self, "count", 0, _MAX_COUNT, optional=True)
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0.0 <= self.rate <= 1.0:
            raise _fail(self, "rate", self.rate, "a number in [0, 1]")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class StateFault(Fault):
    """A state of the part that holds for the whole window (rule 3)."""


# -- disks ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _DiskFault(EventFault):
    """Requests that touch ``[lba, lba + sectors)`` (512-byte sectors; ``sectors`` None:
    to the end of the disk) with operation ``op`` (``read``, ``write`` or ``any``)."""

    family: ClassVar[str] = "disk"
    lba: int = 0
    sectors: int | None = None
    op: str = "any"

    def _validate(self) -> None:
        _int(self, "lba")
        _int(self, "sectors", 1, _MAX_COUNT, optional=True)
        _choice(self, "op", _OPS)

    def covers(self, offset: int, length: int) -> bool:
        """Whether the byte range ``[offset, offset+length)`` touches the fault's sectors."""
        start = self.lba * 512
        end = None if self.sectors is None else start + self.sectors * 512
        return offset + max(length, 1) > start and (end is None or offset < end)

    def first_bad_byte(self, offset: int) -> int:
        """The first byte at or after ``offset`` inside the fault's sectors."""
        return max(offset, self.lba * 512)


@dataclass(frozen=True, kw_only=True)
class MediaError(_DiskFault):
    """Unreadable (or unwritable) sectors: the request transfers up to the first bad sector
    and fails there; the device reports that sector (AHCI: ERR with UNC, the LBA in the
    D2H FIS or the NCQ error log; virtio-blk: VIRTIO_BLK_S_IOERR)."""

    kind: ClassVar[str] = "disk.media-error"
    sectors: int | None = 1
    op: str = "read"


@dataclass(frozen=True, kw_only=True)
class SlowIo(_DiskFault):
    """A request completes ``delay_ms`` after the backend finished it."""

    kind: ClassVar[str] = "disk.slow"
    delay_ms: int = 1000

    def _validate(self) -> None:
        super()._validate()
        _int(self, "delay_ms", 0, _MAX_MS)


@dataclass(frozen=True, kw_only=True)
class StuckIo(_DiskFault):
    """A request never completes: it is held until the device resets the drive (AHCI
    COMRESET/SRST/HBA reset, a virtio reset), which abandons it with an error, or until the
    fault is removed, which lets it run."""

    kind: ClassVar[str] = "disk.stuck"


@dataclass(frozen=True, kw_only=True)
class TornWrite(_DiskFault):
    """A write is acknowledged after only its first ``keep_sectors`` reached the image; the
    rest stays in the device's memory (reads see it) and lands ``persist_ms`` later, or at
    a clean shutdown (None: only then). If the device process dies first, the write is torn.
    FLUSH does not persist it: the device lies about its cache."""

    kind: ClassVar[str] = "disk.torn-write"
    op: str = "write"
    keep_sectors: int = 0
    persist_ms: int | None = None

    def _validate(self) -> None:
        super()._validate()
        if self.op != "write":
            raise _fail(self, "op", self.op, "write (only writes tear)")
        _int(self, "keep_sectors")
        _int(self, "persist_ms", 0, _MAX_MS, optional=True)


# -- NICs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _FrameFault(EventFault):
    """Frames in ``direction``: ``rx`` (wire to guest), ``tx`` (guest to wire) or ``both``."""

    family: ClassVar[str] = "net"
    direction: str = "both"

    def _validate(self) -> None:
        _choice(self, "direction", _DIRECTIONS)

    def applies(self, direction: str) -> bool:
        """Whether frames going ``direction`` (``rx``/``tx``) are subject to it."""
        return self.direction in ("both", direction)


@dataclass(frozen=True, kw_only=True)
class FrameDrop(_FrameFault):
    """Frames lost on the wire."""

    kind: ClassVar[str] = "net.drop"


@dataclass(frozen=True, kw_only=True)
class FrameCorrupt(_FrameFault):
    """A bit flipped after the Ethernet header: a NIC that checks the FCS (e1000) drops the
    frame and counts a CRC error; one that cannot (virtio-net) delivers it and the stack's
    IP/TCP/UDP checksum catches it."""

    kind: ClassVar[str] = "net.corrupt"


@dataclass(frozen=True, kw_only=True)
class FrameDuplicate(_FrameFault):
    """A frame delivered twice."""

    kind: ClassVar[str] = "net.duplicate"


@dataclass(frozen=True, kw_only=True)
class FrameReorder(_FrameFault):
    """A frame held back and delivered after the next one in the same direction."""

    kind: ClassVar[str] = "net.reorder"


@dataclass(frozen=True, kw_only=True)
class LinkDown(StateFault):
    """The cable is out for the window: no frames either way, and the NIC reports loss of
    link (e1000: STATUS.LU clear and an LSC interrupt; virtio-net: VIRTIO_NET_S_LINK_UP
    clear and a configuration interrupt), then link again when the window closes."""

    kind: ClassVar[str] = "net.link-down"
    family: ClassVar[str] = "net"


@dataclass(frozen=True, kw_only=True)
class RxOverrun(StateFault):
    """When the window opens, ``frames`` broadcast frames of ``size`` bytes arrive at once,
    whether the receive ring has room or not: the NIC drops what does not fit and reports
    it (e1000: MPC and RNBC counters, the RXO interrupt)."""

    kind: ClassVar[str] = "net.rx-overrun"
    family: ClassVar[str] = "net"
    frames: int = 1024
    size: int = 1514

    def _validate(self) -> None:
        _int(self, "frames", 1, 65536)
        _int(self, "size", 60, 1514)


@dataclass(frozen=True, kw_only=True)
class TxHang(StateFault):
    """The transmitter stops: descriptors are neither sent nor written back. With
    ``until_reset`` (default) it starts again when the driver resets the NIC, or at the
    end of the window, whichever comes first."""

    kind: ClassVar[str] = "net.tx-hang"
    family: ClassVar[str] = "net"
    until_reset: bool = True

    def _validate(self) -> None:
        if not isinstance(self.until_reset, bool):
            raise _fail(self, "until_reset", self.until_reset, "true or false")


# -- PCI ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NoResponse(StateFault):
    """The device stops answering for the window: reads of its BARs (and, with ``config``,
    its configuration space) return all ones, writes are dropped, it raises no interrupt
    and does no work; afterwards it carries on from where it stopped."""

    kind: ClassVar[str] = "pci.no-response"
    family: ClassVar[str] = "pci"
    config: bool = True

    def _validate(self) -> None:
        if not isinstance(self.config, bool):
            raise _fail(self, "config", self.config, "true or false")


@dataclass(frozen=True, kw_only=True)
class LostInterrupt(EventFault):
    """Interrupts that never reach the guest: an MSI/MSI-X message dropped (``vector``:
    only that one), or an INTx assertion held back until the window closes or the fault is
    removed."""

    kind: ClassVar[str] = "pci.lost-irq"
    family: ClassVar[str] = "pci"
    vector: int | None = None

    def _validate(self) -> None:
        _int(self, "vector", 0, 2047, optional=True)


KINDS: dict[str, type[Fault]] = {
    cls.kind: cls
    for cls in (MediaError, SlowIo, StuckIo, TornWrite, FrameDrop, FrameCorrupt, FrameDuplicate, FrameReorder,
                LinkDown, RxOverrun, TxHang, NoResponse, LostInterrupt)
}
"""Every fault kind by name (rule 1)."""


def stream_seed(seed: int, fault_id: str) -> int:
    """The seed of fault ``fault_id``'s random stream in a plan seeded ``seed`` (rule 4)."""
    digest = hashlib.sha256(f"{seed}:{fault_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultPlan:
    """A seed and faults (the module docstring).

    Raises:
        UsageError: two faults with the same id, or a bad seed.
    """

    seed: int = 0
    faults: tuple[Fault, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 1 << 64:
            raise UsageError(f"plan seed {self.seed!r}: expected an integer in [0, 2**64)")
        object.__setattr__(self, "faults", tuple(self.faults))
        ids = [f.id for f in self.faults if f.id]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise UsageError(f"fault plan: id(s) {', '.join(duplicated)} used more than once")
        for fault in self.faults:
            if not isinstance(fault, Fault):
                raise UsageError(f"fault plan: {fault!r} is not a Fault")

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"seed": N, "faults": [...]}``."""
        return {"seed": self.seed, "faults": [f.to_dict() for f in self.faults]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultPlan:
        """The plan ``data`` describes.

        Raises:
            UsageError: not ``{"seed": int, "faults": [...]}`` or a bad fault (its index named).
        """
        if not isinstance(data, Mapping):
            raise UsageError(f"a fault plan is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"seed", "faults", "version"})
        if unknown:
            raise UsageError(f"fault plan: unknown key(s) {', '.join(unknown)} (keys: seed, faults, version)")
        if data.get("version", 1) != 1:
            raise UsageError(f"fault plan version {data.get('version')!r}: this devmodels reads version 1")
        faults = data.get("faults", [])
        if not isinstance(faults, list):
            raise UsageError("fault plan: faults must be a list")
        parsed = []
        for index, item in enumerate(faults):
            try:
                parsed.append(Fault.from_dict(item))
            except UsageError as exc:
                raise UsageError(f"fault plan: faults[{index}]: {exc}") from None
        return cls(data.get("seed", 0), tuple(parsed))

    def dumps(self) -> str:
        """The plan as JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def loads(cls, text: str) -> FaultPlan:
        """A plan from JSON text.

        Raises:
            UsageError: not JSON, or not a plan.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"fault plan is not JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FaultPlan:
        """A plan from a JSON file.

        Raises:
            UsageError: the file cannot be read or is not a plan (the path named).
        """
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"fault plan {os.fspath(path)}: {exc.strerror}") from None
        try:
            return cls.loads(text)
        except UsageError as exc:
            raise UsageError(f"{os.fspath(path)}: {exc}") from None
