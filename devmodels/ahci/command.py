"""The contract between a port (the HBA side) and a drive (the device side).

Rules:

1. The port decodes a command slot into a ``Command`` (task file, ATAPI CDB, PRDT) and hands
   it to ``Drive.execute``. A drive never touches guest memory directly: it asks the
   command for ``segments`` (checked ``(gpa, length)`` pieces for backend I/O) or to
   ``gather`` data-out bytes, and returns device-produced data in ``Finish.data``.
2. ``execute`` returns a ``Finish`` (the ending task file, and how the data phase was
   signalled) or a ``Pending`` (backend requests plus a ``resume`` continuation that turns
   their completions into the next ``Finish``/``Pending``). The port owns the requests
   while they are in flight; the drive keeps no reference to them.
3. PRDT walks are bounded (CONVENTIONS: bounded): entries are read lazily, 256 at a time, only as
   far as the bytes a command needs, and never past PRDTL (at most 65,535). Bit 0 of DBC
   is treated as set: AHCI 1.3.1 §4.2.3.3 says it "shall always be 1" (even byte counts).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .._memory import Access, GuestMemory
from ..backends import BlockBackend, BlockCompletion, BlockRequest
from .errors import PrdtOverflow, PrdtUnderflow
from .fis import TaskFile
from .layouts import PRD_ENTRY
from .regs import CMD_TABLE_PRDT, PRD_DBC_MAX, PRDT_ENTRY_SIZE

__all__ = ["DataPhase", "Command", "Finish", "Pending", "Outcome", "Drive", "Prdt"]

_PRD_CHUNK = 256  # entries per guest read (4 KiB)
_PRD_I = 1 << 31
_PRD_DBC = PRD_DBC_MAX - 1


class DataPhase(enum.Enum):
    """How a command's data phase and ending status travel (ACS-3 protocols, SATA §11)."""

    NON_DATA = "non-data"  # Register D2H FIS
    PIO_IN = "pio-in"  # PIO Setup FIS carrying E_Status; no D2H FIS
    PIO_OUT = "pio-out"  # PIO Setup FIS, then Register D2H FIS
    DMA = "dma"  # (DMA Activate) then Register D2H FIS
    PACKET_PIO = "packet-pio"  # PIO Setup FIS per data phase, then Register D2H FIS
    PACKET_DMA = "packet-dma"  # Register D2H FIS
    NCQ = "ncq"  # accepted by a D2H FIS, completed by a Set Device Bits FIS


class Prdt:
    """A command's physical region descriptor table, read lazily from guest memory.

    Args:
        memory: guest RAM.
        table: gpa of the command table (the PRDT starts at ``table + 0x80``).
        length: PRDTL, the number of entries.
    """

    def __init__(self, memory: GuestMemory, table: int, length: int) -> None:
        self._memory = memory
        self._base = table + CMD_TABLE_PRDT
        self.length = length
        self._entries: list[tuple[int, int, bool]] = []  # (gpa, bytes, interrupt)
        self._total = 0

    def _fill(self, need: int) -> None:
        """Read entries until they cover ``need`` bytes or the table ends."""
        while self._total < need and len(self._entries) < self.length:
            start = len(self._entries)
            count = min(_PRD_CHUNK, self.length - start)
            raw = self._memory.read(self._base + start * PRDT_ENTRY_SIZE, count * PRDT_ENTRY_SIZE)
            for dba, dbau, _reserved, dw3 in PRD_ENTRY.iter_unpack(raw):
                size = (dw3 & _PRD_DBC | 1) + 1
                self._entries.append(((dbau << 32 | dba) & ~1, size, bool(dw3 & _PRD_I)))
                self._total += size

    def available(self, need: int) -> int:
        """Bytes described by the table, counted at least up to ``need``."""
        self._fill(need)
        return self._total

    def interrupt_within(self, nbytes: int) -> bool:
        """Whether an entry that ``nbytes`` of transfer completes has its I bit set (§4.2.3.3)."""
        self._fill(nbytes)
        done = 0
        for _gpa, size, interrupt in self._entries:
            if done >= nbytes:
                break
            done += size
            if interrupt and done <= nbytes:
                return True
        return False

    def segments(self, nbytes: int) -> list[tuple[int, int]]:
        """``(gpa, length)`` pieces covering exactly the first ``nbytes``; short tables raise
        ``ValueError`` (the caller picks overflow or underflow)."""
        self._fill(nbytes)
        if self._total < nbytes:
            raise ValueError(nbytes)
        out: list[tuple[int, int]] = []
        left = nbytes
        for gpa, size, _ in self._entries:
            if not left:
                break
            take = min(size, left)
            out.append((gpa, take))
            left -= take
        return out


class Command:
    """One decoded command slot.

    Attributes:
        slot: command slot (and NCQ tag).
        tf: the command FIS as shadow registers.
        cdb: the ATAPI command block (ACMD, 16 bytes; zeros for ATA commands).
        write: the header's W bit (host-to-device data).
        atapi: the header's A bit.
    """

    def __init__(
        self, memory: GuestMemory, slot: int, tf: TaskFile, cdb: bytes, write: bool, atapi: bool, prdt: Prdt
    ) -> None:
        self.slot = slot
        self.tf = tf
        self.cdb = cdb
        self.write = write
        self.atapi = atapi
        self.prdt = prdt
        self._memory = memory

    def segments(self, nbytes: int, *, to_host: bool) -> list[tuple[int, int]]:
        """Checked guest-RAM pieces for ``nbytes`` of transfer in the given direction.

        Raises:
            PrdtOverflow: device-to-host data does not fit the PRDT (PxIS.OFS).
            PrdtUnderflow: the PRDT holds too few bytes for a host-to-device transfer.
            GuestMemoryError: a piece is not (writable) RAM (PxIS.HBFS).
        """
        try:
            pieces = self.prdt.segments(nbytes)
        except ValueError:
            available = self.prdt.available(nbytes)
            if to_host:
                raise PrdtOverflow(nbytes, available) from None
            raise PrdtUnderflow(nbytes, available) from None
        access = Access.WRITE if to_host else Access.READ
        for gpa, length in pieces:
            if not self._memory.check_range(gpa, length, access):
                from .._errors import GuestMemoryError

                raise GuestMemoryError(gpa, length, "PRDT entry outside guest RAM")
        return pieces

    def gather(self, nbytes: int) -> bytes:
        """Read ``nbytes`` of data-out from the PRDT buffers."""
        out = bytearray()
        for gpa, length in self.segments(nbytes, to_host=False):
            out += self._memory.read(gpa, length)
        return bytes(out)

    def scatter(self, data: bytes) -> None:
        """Write device-to-host ``data`` into the PRDT buffers."""
        pos = 0
        for gpa, length in self.segments(len(data), to_host=True):
            self._memory.write(gpa, data[pos : pos + length])
            pos += length


@dataclass
class Finish:
    """How a command ended.

    Attributes:
        status, error: ending ATA status and error registers.
        lba, count, device: ending LBA / count / device registers (signatures, SMART,
            the first failing LBA, the ATAPI interrupt reason).
        phase: how the data phase and ending status are signalled.
        data: device-to-host bytes the device produced (IDENTIFY, logs, INQUIRY, ...).
        transferred: bytes moved by backend I/O (added to PRDBC).
    """

    status: int
    error: int = 0
    lba: int = 0
    count: int = 0
    device: int = 0
    phase: DataPhase = DataPhase.NON_DATA
    data: bytes | None = None
    transferred: int = 0

    @property
    def failed(self) -> bool:
        """ERR (CHK) or DF is set."""
        return bool(self.status & 0b0010_0001)


@dataclass
class Pending:
    """Backend requests to run before the command can finish.

    Attributes:
        requests: submitted in order; completions may come back in any order.
        resume: called once with every completion (in request order).
        to_host: the data direction (for the DMA Setup FIS of NCQ commands).
        nbytes: bytes of data the requests move.
    """

    requests: Sequence[BlockRequest]
    resume: Callable[[list[BlockCompletion]], Outcome]
    to_host: bool = True
    nbytes: int = 0


Outcome = Finish | Pending


class Drive(Protocol):
    """A device on a port: an ATA disk or an ATAPI drive.

    Attributes:
        backend: where the drive's ``Pending`` requests go (None: an empty CD drive).
    """

    @property
    def backend(self) -> BlockBackend | None:
        """Where the drive's requests go (read-only in the protocol so that a disk, whose
        backend is never None, satisfies it)."""
        ...

    @property
    def signature(self) -> tuple[int, int, int, int]:
        """(count, lba low, lba mid, lba high) sent after reset (ACS-3 Table 184)."""
        ...

    @property
    def reset_status(self) -> int:
        """Status register value of the signature FIS."""
        ...

    def is_queued(self, tf: TaskFile) -> bool:
        """Whether ``tf`` is a native-queued (FPDMA) command."""
        ...

    def execute(self, cmd: Command) -> Outcome:
        """Run one command (rule 2)."""
        ...

    def reset(self) -> None:
        """COMRESET / SRST / HBA reset: abort everything, keep persistent settings."""
        ...

    def ncq_failed(self, tag: int | None, result: Finish) -> None:
        """Record a queued command's failure for READ LOG EXT 10h (None: not tag-specific)."""
        ...

    def ncq_error_pending(self) -> bool:
        """Whether the device is in the NCQ error state (only log 10h is accepted)."""
        ...
