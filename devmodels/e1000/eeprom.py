"""The 82540EM's serial EEPROM: a 64-word Microwire part behind EECD, plus EERD (SDM ch. 5).

Rules:

1. ``Eeprom`` owns the 64 words. ``default_image`` builds the image the VMM gets unless
   it brings its own: MAC address in words 0–2, PCI IDs in 0x0B–0x0E, and word 0x3F chosen
   so that words 0x00–0x3F sum to 0xBABA (SDM §5.6.1 "Checksum Word Calculation").
2. ``MicrowirePort`` is the bit-banged interface of EECD (SDM §5.3, §13.4.3): the driver
   drives SK/CS/DI and samples DO. On each rising SK edge with CS high the part shifts DI
   in; after the start bit, 2 opcode bits and 6 address bits, a READ clocks data out MSB
   first on DO and keeps going into the following words (sequential read). Dropping CS
   returns the part to idle. WRITE/ERASE/ERAL/WRAL need EWEN first (93C46 protocol).
3. Everything here is bounded per edge; no guest sequence can make it raise or grow.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import SnapshotError, UsageError
from .._state import check_int

__all__ = [
    "EEPROM_WORDS",
    "EEPROM_SUM",
    "EEPROM_CHECKSUM_REG",
    "Eeprom",
    "MicrowirePort",
    "default_image",
    "mac_to_words",
]

EEPROM_WORDS = 64
EEPROM_SUM = 0xBABA
EEPROM_CHECKSUM_REG = 0x3F
ADDRESS_BITS = 6

# Word map (SDM Table 5-2)
WORD_MAC0 = 0x00
WORD_ID_LED = 0x04
WORD_IMAGE_VERSION = 0x05
WORD_PBA0 = 0x08
WORD_INIT_CONTROL1 = 0x0A
WORD_SUBSYSTEM_ID = 0x0B
WORD_SUBSYSTEM_VENDOR = 0x0C
WORD_DEVICE_ID = 0x0D
WORD_VENDOR_ID = 0x0E
WORD_INIT_CONTROL2 = 0x0F

# Initialization Control Word 1 (SDM §5.6.5): signature 01b in bits 15:14, load the
# subsystem and device IDs from the EEPROM (bits 0 and 1).
INIT_CONTROL1 = 0b0100_0000_0000_0011
# Initialization Control Word 2 (SDM §5.6.8): no PAUSE advertisement, APM off.
INIT_CONTROL2 = 0x0000

# Microwire opcodes after the start bit (93C46 x16)
_OP_READ = 0b10
_OP_WRITE = 0b01
_OP_ERASE = 0b11
_OP_EXTENDED = 0b00
# Extended opcodes: the top two address bits
_EXT_EWDS = 0b00
_EXT_WRAL = 0b01
_EXT_ERAL = 0b10
_EXT_EWEN = 0b11

# Port states
IDLE = 0  # waiting for the start bit
COMMAND = 1  # shifting in opcode + address
READING = 2  # shifting data out
WRITING = 3  # shifting data in for WRITE / WRAL
DONE = 4  # command finished; DO shows "ready" until CS drops


def mac_to_words(mac: bytes) -> tuple[int, int, int]:
    """Words 0–2 of the image for ``mac`` (byte 0 in the low byte of word 0)."""
    return (mac[0] | mac[1] << 8, mac[2] | mac[3] << 8, mac[4] | mac[5] << 8)


def default_image(
    mac: bytes,
    *,
    device_id: int,
    vendor_id: int,
    subsystem_id: int,
    subsystem_vendor_id: int,
) -> list[int]:
    """A 64-word image with a valid checksum (rule 1).

    Raises:
        UsageError: ``mac`` is not 6 bytes or is a multicast address.
    """
    if len(mac) != 6:
        raise UsageError(f"a MAC address has 6 bytes, got {len(mac)}")
    if mac[0] & 1:
        raise UsageError(f"MAC {mac.hex(':')} is a multicast address")
    words = [0xFFFF] * EEPROM_WORDS  # unprogrammed words read as all ones
    words[0:3] = mac_to_words(mac)
    words[0x03] = 0x0000  # compatibility: no special features
    words[WORD_ID_LED] = 0xFFFF  # "reserved": the driver uses its default LED mode
    words[WORD_IMAGE_VERSION] = 0x0001
    words[0x06] = 0x0000
    words[0x07] = 0x0000
    words[WORD_PBA0] = 0x0000
    words[WORD_PBA0 + 1] = 0x0000
    words[WORD_INIT_CONTROL1] = INIT_CONTROL1
    words[WORD_SUBSYSTEM_ID] = subsystem_id
    words[WORD_SUBSYSTEM_VENDOR] = subsystem_vendor_id
    words[WORD_DEVICE_ID] = device_id
    words[WORD_VENDOR_ID] = vendor_id
    words[WORD_INIT_CONTROL2] = INIT_CONTROL2
    fix_checksum(words)
    return words


def fix_checksum(words: list[int]) -> None:
    """Set word 0x3F so that words 0x00–0x3F sum to 0xBABA (SDM §5.6.1)."""
    words[EEPROM_CHECKSUM_REG] = (EEPROM_SUM - sum(words[:EEPROM_CHECKSUM_REG])) & 0xFFFF


class Eeprom:
    """The 64 words and the write-enable latch.

    Args:
        words: the image (64 values of 16 bits).
    """

    def __init__(self, words: Sequence[int]) -> None:
        self.words = check_image(words, UsageError)
        self.write_enabled = False

    def read(self, address: int) -> int:
        """The word at ``address`` (modulo the part size, as the address counter wraps)."""
        return self.words[address % EEPROM_WORDS]

    def write(self, address: int, value: int) -> None:
        """Program one word if the write-enable latch is set (93C46 EWEN)."""
        if self.write_enabled:
            self.words[address % EEPROM_WORDS] = value & 0xFFFF

    @property
    def checksum_valid(self) -> bool:
        """Whether words 0x00–0x3F sum to 0xBABA."""
        return sum(self.words) & 0xFFFF == EEPROM_SUM

    @property
    def mac(self) -> bytes:
        """The MAC address in words 0–2."""
        return bytes(b for w in self.words[0:3] for b in (w & 0xFF, w >> 8))


def check_image(words: Sequence[int], error: type[Exception]) -> list[int]:
    """Validate an image: 64 integers of 16 bits."""
    if len(words) != EEPROM_WORDS:
        if error is SnapshotError:
            raise SnapshotError("eeprom.words", f"expected {EEPROM_WORDS} words, got {len(words)}")
        raise error(f"an 82540EM EEPROM image has {EEPROM_WORDS} words, got {len(words)}")
    out = []
    for i, word in enumerate(words):
        if error is SnapshotError:
            out.append(check_int(f"eeprom.words[{i}]", word, 0, 0xFFFF))
        elif not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise error(f"EEPROM word {i} must be a 16-bit integer, got {word!r}")
        else:
            out.append(word)
    return out


class MicrowirePort:
    """The EECD bit-bang state machine (rule 2).

    The port state is four integers (``state``, ``shift``, ``count``, ``address``) plus
    the last SK/CS levels, all saved in snapshots.
    """

    def __init__(self, eeprom: Eeprom) -> None:
        self.eeprom = eeprom
        self.reset()

    def reset(self) -> None:
        """Idle, CS and SK low."""
        self.state = IDLE
        self.shift = 0  # bits shifted in (command or data)
        self.count = 0  # how many bits are in ``shift`` / how many were shifted out
        self.address = 0
        self.opcode = 0
        self.sk = False
        self.cs = False
        self.do = False

    def snapshot(self) -> tuple[int, ...]:
        """The port state as plain integers."""
        return (self.state, self.shift, self.count, self.address, self.opcode, int(self.sk), int(self.cs), int(self.do))

    def load(self, values: tuple[int, ...]) -> None:
        """Apply ``snapshot`` output already checked by ``check_snapshot``."""
        self.state, self.shift, self.count, self.address, self.opcode = values[:5]
        self.sk, self.cs, self.do = bool(values[5]), bool(values[6]), bool(values[7])

    @staticmethod
    def check_snapshot(values: tuple[int, ...]) -> None:
        """Validate a port snapshot.

        Raises:
            SnapshotError: a field is out of range.
        """
        if not isinstance(values, tuple) or len(values) != 8:
            raise SnapshotError("eeprom.port", "expected 8 integers")
        limits = (DONE, 0xFFFF, 32, EEPROM_WORDS - 1, 0b11, 1, 1, 1)
        for i, (value, hi) in enumerate(zip(values, limits, strict=True)):
            check_int(f"eeprom.port[{i}]", value, 0, hi)

    def pins(self, sk: bool, cs: bool, di: bool) -> None:
        """The driver set new SK/CS/DI levels (an EECD write)."""
        if not cs:
            # Deselect: back to idle. After a programming command DO keeps reading
            # "ready" (1) so that the driver's status poll on re-select sees it.
            self.do = self.state == DONE
            self.state = IDLE
            self.shift = self.count = 0
            self.cs = False
            self.sk = sk
            return
        rising = sk and not self.sk
        self.cs, self.sk = True, sk
        if rising:
            self._clock(di)

    def _clock(self, di: bool) -> None:
        state = self.state
        if state == IDLE:
            if di:  # the start bit; leading zeros are ignored
                self.state = COMMAND
                self.do = False
                self.shift = self.count = 0
        elif state == COMMAND:
            self.shift = (self.shift << 1) | int(di)
            self.count += 1
            if self.count == 2 + ADDRESS_BITS:
                self._decode(self.shift >> ADDRESS_BITS, self.shift & (EEPROM_WORDS - 1))
        elif state == READING:
            # The dummy 0 was presented after the last address bit; each later rising
            # edge presents the next data bit, MSB first, running into the next word.
            word = self.eeprom.read(self.address)
            self.do = bool(word >> (15 - self.count) & 1)
            self.count += 1
            if self.count == 16:
                self.count = 0
                self.address = (self.address + 1) % EEPROM_WORDS
        elif state == WRITING:
            self.shift = ((self.shift << 1) | int(di)) & 0xFFFF
            self.count += 1
            if self.count == 16:
                if self.opcode == _OP_WRITE:
                    self.eeprom.write(self.address, self.shift)
                else:  # WRAL
                    for address in range(EEPROM_WORDS):
                        self.eeprom.write(address, self.shift)
                self._finish()
        # DONE: further clocks are ignored until CS drops

    def _decode(self, opcode: int, address: int) -> None:
        self.opcode = opcode
        self.address = address
        self.shift = self.count = 0
        if opcode == _OP_READ:
            self.state = READING
            self.do = False  # the dummy zero bit
        elif opcode == _OP_WRITE:
            self.state = WRITING
        elif opcode == _OP_ERASE:
            self.eeprom.write(address, 0xFFFF)
            self._finish()
        else:
            extended = address >> (ADDRESS_BITS - 2)
            if extended == _EXT_EWEN:
                self.eeprom.write_enabled = True
                self._finish()
            elif extended == _EXT_EWDS:
                self.eeprom.write_enabled = False
                self._finish()
            elif extended == _EXT_ERAL:
                for word in range(EEPROM_WORDS):
                    self.eeprom.write(word, 0xFFFF)
                self._finish()
            else:  # WRAL: opcode stays _OP_EXTENDED
                self.state = WRITING

    def _finish(self) -> None:
        # Programming is instantaneous: DO reads "ready" (1) while CS stays high.
        self.state = DONE
        self.do = True
