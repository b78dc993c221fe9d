"""The volatile cache behind ``disk.torn-write``: write tails acknowledged but not yet on disk.

Rules:

1. A torn write keeps its tail (every block after the first ``keep_sectors``) here, copied
   out of guest memory when the write is submitted, block by block. Held bytes are bounded
   (``MAX_HELD``); a write whose tail does not fit is not torn (it is written whole).
2. Reads see what was acknowledged: a read that overlaps held blocks gets them copied over
   what the image returned (``overlay``). A later write, discard or write-zeroes of a held
   block supersedes it (``drop``): the newer data wins and the held copy is forgotten.
3. A group (the tail of one write) lands on the image when its ``persist_ms`` passes, or
   at a clean close; if the process dies first the image keeps the old data: the write is
   torn. Blocks being written out are no longer held: requests that touch them wait until
   the write-out completed (``busy``), so an older tail never overtakes newer data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._memory import GuestMemory, MemoryRegion

__all__ = ["TornCache", "MAX_HELD", "scatter"]

MAX_HELD = 64 << 20
"""Most tail bytes held at once (rule 1)."""


def scatter(memory: GuestMemory, segments: Sequence[tuple[int, int]], position: int, data: bytes) -> None:
    """Write ``data`` at byte ``position`` of the buffer ``segments`` describe.

    Raises:
        GuestMemoryError: a segment is not guest RAM.
    """
    start = 0
    for gpa, length in segments:
        end = start + length
        if position < end and position + len(data) > start:
            lo = max(position, start)
            hi = min(position + len(data), end)
            memory.write(gpa + lo - start, data[lo - position : hi - position])
        start = end
        if start >= position + len(data):
            return


class TornCache:
    """Held write tails (rules 1–3), keyed by block offset.

    Args:
        block: the backend's logical block size.
    """

    def __init__(self, block: int) -> None:
        self.block = block
        self.held: dict[int, bytes] = {}  # block offset -> data
        self.groups: dict[int, set[int]] = {}  # group -> block offsets still held
        self.busy: dict[int, int] = {}  # block offset -> write-outs in flight
        self._next_group = 0
        self.torn = 0  # writes torn so far
        self.whole = 0  # writes that could not be held (rule 1)

    @property
    def held_bytes(self) -> int:
        """Bytes held now."""
        return len(self.held) * self.block

    def hold(self, offset: int, data: bytes) -> int | None:
        """Hold ``data`` (whole blocks) written at ``offset``; return its group, or None if
        it does not fit (rule 1)."""
        if self.held_bytes + len(data) > MAX_HELD:
            self.whole += 1
            return None
        group = self._next_group
        self._next_group += 1
        blocks = set()
        for pos in range(0, len(data), self.block):
            key = offset + pos
            self.held[key] = data[pos : pos + self.block]
            for other in self.groups.values():
                other.discard(key)  # the newer tail wins
            blocks.add(key)
        self.groups[group] = blocks
        self.torn += 1
        return group

    def _keys(self, table: Mapping[int, object], offset: int, length: int) -> list[int]:
        """The keys of ``table`` in the blocks ``[offset, offset+length)`` touches, found by
        walking whichever is shorter: the range or the table (a guest's discard of the whole
        disk costs no more than the blocks held)."""
        if not table:
            return []
        first = offset - offset % self.block
        end = offset + max(length, 1)
        if (end - first) // self.block <= len(table):
            return [key for key in range(first, end, self.block) if key in table]
        return sorted(key for key in table if first <= key < end)

    def overlaps(self, offset: int, length: int) -> bool:
        """Whether ``[offset, offset+length)`` touches held blocks."""
        return bool(self._keys(self.held, offset, length))

    def is_busy(self, offset: int, length: int) -> bool:
        """Whether a write-out of a block in the range is in flight (rule 3)."""
        return bool(self._keys(self.busy, offset, length))

    def overlay(self, memory: GuestMemory, offset: int, length: int, segments: Sequence[tuple[int, int]]) -> None:
        """Copy held blocks over a read of ``[offset, offset+length)`` into ``segments`` (rule 2)."""
        for key in self._keys(self.held, offset, length):
            data = self.held[key]
            lo, hi = max(key, offset), min(key + self.block, offset + length)
            scatter(memory, segments, lo - offset, data[lo - key : hi - key])

    def drop(self, offset: int, length: int) -> None:
        """Forget held blocks a newer write of the range supersedes (rule 2)."""
        for key in self._keys(self.held, offset, length):
            del self.held[key]
            for blocks in self.groups.values():
                blocks.discard(key)

    def take(self, group: int | None = None) -> list[tuple[int, bytes]]:
        """Remove ``group``'s blocks (all with None) for writing out, as contiguous runs
        ``(offset, data)``; they are ``busy`` until ``written`` (rule 3)."""
        groups = list(self.groups) if group is None else [group]
        keys: set[int] = set()
        for g in groups:
            keys |= self.groups.pop(g, set())
        runs: list[tuple[int, bytes]] = []
        for key in sorted(keys):
            data = self.held.pop(key, None)
            if data is None:
                continue
            self.busy[key] = self.busy.get(key, 0) + 1
            if runs and runs[-1][0] + len(runs[-1][1]) == key:
                runs[-1] = (runs[-1][0], runs[-1][1] + data)
            else:
                runs.append((key, data))
        return runs

    def written(self, offset: int, length: int) -> None:
        """A write-out of ``[offset, offset+length)`` completed (rule 3)."""
        for key in range(offset, offset + length, self.block):
            left = self.busy.get(key, 0) - 1
            if left > 0:
                self.busy[key] = left
            else:
                self.busy.pop(key, None)

    @staticmethod
    def memory_for(data: bytes) -> GuestMemory:
        """A private memory holding ``data`` at address 0, for writing it out through the
        backend interface."""
        memory = GuestMemory([MemoryRegion.from_bytearray(0, max(len(data), 1))])
        memory.write(0, data)
        return memory
