"""The 64-word Microwire EEPROM behind EECD, and EERD (SDM ch. 5, §13.4.3-4)."""

from __future__ import annotations

import pytest

from devmodels import UsageError
from devmodels.e1000 import E1000, EEPROM_SUM, Eeprom, MicrowirePort, default_image
from devmodels.e1000 import regs as r

from .conftest import Rig

IDS = {"device_id": 0x100E, "vendor_id": 0x8086, "subsystem_id": 0x001E, "subsystem_vendor_id": 0x8086}


def test_default_image_checksum_spec_5_6_1() -> None:
    words = default_image(bytes.fromhex("021122334455"), **IDS)
    assert len(words) == 64
    assert sum(words) & 0xFFFF == EEPROM_SUM
    assert words[0:3] == [0x1102, 0x3322, 0x5544]
    assert words[0x0B:0x0F] == [0x001E, 0x8086, 0x100E, 0x8086]


@pytest.mark.parametrize("mac", [b"\x01\x00\x00\x00\x00\x01", b"\x00" * 5])
def test_default_image_rejects_bad_mac(mac: bytes) -> None:
    with pytest.raises(UsageError):
        default_image(mac, **IDS)


def test_image_must_have_64_words() -> None:
    with pytest.raises(UsageError):
        Eeprom([0] * 63)
    with pytest.raises(UsageError):
        Eeprom([0x10000] + [0] * 63)


def _clock(port: MicrowirePort, bit: int) -> None:
    port.pins(False, True, bool(bit))
    port.pins(True, True, bool(bit))
    port.pins(False, True, bool(bit))


def _read_bits(port: MicrowirePort, count: int) -> int:
    value = 0
    for _ in range(count):
        port.pins(True, True, False)
        value = value << 1 | int(port.do)
        port.pins(False, True, False)
    return value


def _command(port: MicrowirePort, bits: str) -> None:
    port.pins(False, False, False)
    port.pins(False, True, False)
    for bit in bits:
        _clock(port, int(bit))


def test_microwire_read_and_sequential_read() -> None:
    words = list(range(0x100, 0x140))
    port = MicrowirePort(Eeprom(words))
    _command(port, "110" + format(5, "06b"))
    assert not port.do  # the dummy zero after the address
    assert _read_bits(port, 16) == 0x105
    assert _read_bits(port, 16) == 0x106  # sequential read runs into the next word
    port.pins(False, False, False)
    assert not port.do


def test_microwire_leading_zeros_before_start_bit_are_ignored() -> None:
    port = MicrowirePort(Eeprom([0xA5A5] * 64))
    _command(port, "000110" + format(63, "06b"))
    assert _read_bits(port, 16) == 0xA5A5


def test_microwire_write_needs_ewen_and_reports_ready() -> None:
    eeprom = Eeprom([0] * 64)
    port = MicrowirePort(eeprom)
    _command(port, "101" + format(3, "06b") + format(0xBEEF, "016b"))
    assert eeprom.words[3] == 0  # write-protected after power-on
    _command(port, "10011" + "0000")  # EWEN
    _command(port, "101" + format(3, "06b") + format(0xBEEF, "016b"))
    port.pins(False, False, False)
    port.pins(False, True, False)
    assert port.do  # ready
    assert eeprom.words[3] == 0xBEEF
    _command(port, "111" + format(3, "06b"))  # ERASE
    assert eeprom.words[3] == 0xFFFF
    _command(port, "10000" + "0000")  # EWDS
    _command(port, "101" + format(4, "06b") + format(0x1234, "016b"))
    assert eeprom.words[4] == 0


def test_driver_reads_eeprom_through_eecd(up: Rig) -> None:
    drv = up.driver
    words = [drv.read_eeprom(i) for i in range(64)]
    assert words == up.device.eeprom.words
    assert sum(words) & 0xFFFF == 0xBABA


def test_eecd_grant_follows_request_and_size_bit_clear(rig: Rig) -> None:
    dev = rig.device
    assert dev.bar_read(0, r.EECD, 4) & (r.EECD_PRES | r.EECD_GNT | r.EECD_SIZE) == r.EECD_PRES
    dev.bar_write(0, r.EECD, 4, r.EECD_REQ)
    assert dev.bar_read(0, r.EECD, 4) & r.EECD_GNT
    dev.bar_write(0, r.EECD, 4, 0)
    assert not dev.bar_read(0, r.EECD, 4) & r.EECD_GNT


def test_eerd_reads_words(rig: Rig) -> None:
    dev = rig.device
    for address in (0, 2, 0x3F):
        dev.bar_write(0, r.EERD, 4, address << 8 | r.EERD_START)
        value = dev.bar_read(0, r.EERD, 4)
        assert value & r.EERD_DONE
        assert value >> 16 == dev.eeprom.words[address]
    dev.bar_write(0, r.EERD, 4, 0xC8 << 8 | r.EERD_START)  # past the 64-word part
    assert dev.bar_read(0, r.EERD, 4) >> 16 == 0


def test_custom_mac_and_image(machine) -> None:  # type: ignore[no-untyped-def]
    mac = bytes.fromhex("0200deadbeef")
    dev = E1000(machine.memory, mac=mac)
    assert dev.eeprom.mac == mac
    assert dev.registers["RAL[0]"] == 0xADDE0002
    image = default_image(bytes.fromhex("020000000042"), **IDS)
    dev2 = E1000(machine.memory, eeprom=image)
    assert dev2.eeprom.mac == bytes.fromhex("020000000042")


def test_bad_checksum_image_fails_linux_probe(machine) -> None:  # type: ignore[no-untyped-def]
    from devmodels.e1000.testing import DriverError, E1000Driver

    image = default_image(bytes.fromhex("020000000042"), **IDS)
    image[0x20] ^= 1
    dev = E1000(machine.memory, eeprom=image)
    machine.add_pci(dev)
    with pytest.raises(DriverError, match="Checksum"):
        E1000Driver(machine, dev).probe()
