"""Statistics counters (SDM §13.7): saturating 32-bit counters and 64-bit low/high pairs.

Rules: counters only ever increase and stick at all ones (SDM §13.7 "the counters do not
wrap"); the guest clears them by reading (the register table marks them RC; reading the
high half of a 64-bit pair clears both halves).
"""

from __future__ import annotations

from .._regs import RegisterFile

__all__ = ["Stats"]

_U32_MAX = 0xFFFF_FFFF
_U64_MAX = (1 << 64) - 1
_RX_BUCKETS = ((64, "PRC64"), (127, "PRC127"), (255, "PRC255"), (511, "PRC511"), (1023, "PRC1023"))
_TX_BUCKETS = ((64, "PTC64"), (127, "PTC127"), (255, "PTC255"), (511, "PTC511"), (1023, "PTC1023"))


class Stats:
    """Increments counters held in the device's register file."""

    __slots__ = ("_regs", "_offsets")

    def __init__(self, regs: RegisterFile) -> None:
        self._regs = regs  # its ``values`` dict is replaced on reset: never cache it
        self._offsets = {reg.name: reg.offset for reg in regs.registers}

    def add(self, name: str, count: int = 1) -> None:
        """Add to a 32-bit counter, saturating."""
        values = self._regs.values
        offset = self._offsets[name]
        values[offset] = min(values[offset] + count, _U32_MAX)

    def add64(self, name: str, count: int) -> None:
        """Add to a 64-bit counter ``name`` (``GORC``, ``GOTC``, ``TOR``, ``TOT``), saturating."""
        values = self._regs.values
        low, high = self._offsets[name + "L"], self._offsets[name + "H"]
        value = min((values[high] << 32 | values[low]) + count, _U64_MAX)
        values[low] = value & _U32_MAX
        values[high] = value >> 32

    def rx_good(self, frame: bytes | bytearray, length_with_fcs: int) -> None:
        """A good frame was received (GPRC, BPRC/MPRC, GORC, TPR, TOR, PRCxx)."""
        self.add("GPRC")
        self.add("TPR")
        self.add64("GORC", length_with_fcs)
        self.add64("TOR", length_with_fcs)
        if frame[0] & 1:
            self.add("BPRC" if frame[:6] == b"\xff" * 6 else "MPRC")
        self.add(_bucket(length_with_fcs, _RX_BUCKETS, "PRC1522"))

    def tx_good(self, frame: bytes | bytearray, length_with_fcs: int) -> None:
        """A frame was transmitted (GPTC, BPTC/MPTC, GOTC, TPT, TOT, PTCxx)."""
        self.add("GPTC")
        self.add("TPT")
        self.add64("GOTC", length_with_fcs)
        self.add64("TOT", length_with_fcs)
        if frame[0] & 1:
            self.add("BPTC" if frame[:6] == b"\xff" * 6 else "MPTC")
        self.add(_bucket(length_with_fcs, _TX_BUCKETS, "PTC1522"))


def _bucket(length: int, buckets: tuple[tuple[int, str], ...], last: str) -> str:
    for limit, name in buckets:
        if length <= limit:
            return name
    return last
