"""Snapshots: everything round-trips; a bad snapshot is rejected whole (devmodels _state)."""

from __future__ import annotations

import dataclasses

import pytest

from devmodels import SnapshotError, from_dict, to_dict
from devmodels import GuestMemory, MemoryRegion
from devmodels.e1000 import E1000, E1000State
from devmodels.e1000 import regs as r
from devmodels.e1000.testing import E1000Driver

from .conftest import Rig


def _busy(rig: Rig) -> E1000Driver:
    drv = rig.up()
    drv.ew32(r.TIDV, 50)
    drv.xmit(b"\xff" * 6 + drv.mac + b"\x08\x06" + bytes(46))  # TIDV timer armed
    rig.device.receive_frame(drv.mac + b"\x02" * 6 + b"\x08\x00" + bytes(46))
    drv.ew32(r.MTA + 4 * 5, 0xF0F0)
    drv.read_phy(1)
    return drv


def test_roundtrip_through_dict_into_a_new_device() -> None:
    a, b = Rig(), Rig()
    try:
        drv = _busy(a)
        state = a.device.state()
        data = to_dict(state)
        restored = from_dict(E1000State, data)
        assert restored == state
        b.device.restore(restored)
        assert b.device.state() == state
        # With guest RAM copied over, the restored device carries on where A stopped.
        b.machine.memory.write(0, a.machine.memory.read(0, 16 << 20))
        drv_b = E1000Driver(b.machine, b.device)
        for name in ("bar0", "io", "gsi", "devfn", "mac", "link", "tx_next", "tx_clean", "tx_watch", "rx_clean", "now"):
            setattr(drv_b, name, getattr(drv, name))
        assert drv_b.er32(r.MTA + 4 * 5) == 0xF0F0
        assert b.device.next_deadline() == a.device.next_deadline()
        drv_b.run_timers()
        drv_b.clean_tx()
        assert drv_b.tx_clean == drv_b.tx_next
        got = drv_b.clean_rx()
        assert [f.data for f in got] == [drv.mac + b"\x02" * 6 + b"\x08\x00" + bytes(46)]
        frame = drv.mac + b"\x03" * 6 + b"\x08\x00" + bytes(46)
        b.device.receive_frame(frame)
        assert [f.data for f in drv_b.clean_rx()] == [frame]
    finally:
        a.close()
        b.close()


def test_restore_rewinds_ring_positions(up: Rig) -> None:
    drv = up.driver
    state = up.device.state()
    head = up.device.registers["RDH"]
    up.device.receive_frame(drv.mac + b"\x02" * 6 + b"\x08\x00" + bytes(46))
    assert up.device.registers["RDH"] != head
    up.device.restore(state)
    assert up.device.registers["RDH"] == head
    assert up.device.state() == state


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 99),
        ("io_addr", 1 << 20),
        ("eeprom", (0,) * 63),
        ("eeprom_port", (9, 0, 0, 0, 0, 0, 0, 0)),
        ("phy_regs", (0,) * 32),
        ("irq_deadlines", (-2, -1, -1, -1, -1)),
        ("irq_now", -1),
        ("tx_context_tso", (0,) * 9),
        ("tx_context_normal", (256,) + (0,) * 9),
        ("registers", ((0, 1),)),
        ("phy_cable", 1),
    ],
)
def test_bad_snapshot_rejected_and_nothing_applied(up: Rig, field: str, value: object) -> None:
    dev = up.device
    good = dev.state()
    dev.registers["FCAL"] = 0x77
    before = dev.state()
    with pytest.raises(SnapshotError):
        dev.restore(dataclasses.replace(good, **{field: value}))
    assert dev.state() == before


def test_register_value_too_wide_rejected(up: Rig) -> None:
    good = up.device.state()
    regs = tuple((o, (1 << 32) if o == r.FCAL else v) for o, v in good.registers)
    with pytest.raises(SnapshotError, match="FCAL"):
        up.device.restore(dataclasses.replace(good, registers=regs))


def test_pci_readonly_bits_checked(up: Rig) -> None:
    good = up.device.state()
    config = bytearray(good.pci.config)
    config[2] ^= 0xFF  # device ID
    with pytest.raises(SnapshotError):
        up.device.restore(dataclasses.replace(good, pci=dataclasses.replace(good.pci, config=bytes(config))))


def _ram(size: int) -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, size)])


def test_restore_into_a_device_built_differently_names_the_argument() -> None:
    """Issue 15: an e1000 built with msi=on restored into one built without used to fail on
    a derived field ('pci.config': read-only bits differ at offset 0xdd)."""
    with_msi, without = E1000(_ram(1 << 20), msi=True), E1000(_ram(1 << 20))
    state = with_msi.state()
    before = without.state()
    with pytest.raises(SnapshotError) as info:
        without.restore(state)
    assert info.value.field == "args.msi"
    assert "msi=True" in info.value.reason and "from_state" in info.value.reason
    assert without.state() == before
    other_mac = E1000(_ram(1 << 20), mac=bytes.fromhex("525400aabbcc"))
    with pytest.raises(SnapshotError) as info:
        other_mac.restore(without.state())
    assert info.value.field == "args.mac"


def test_from_state_builds_the_device_the_snapshot_describes(up: Rig) -> None:
    _busy(up)
    up.device.quiesce()
    state = from_dict(E1000State, to_dict(up.device.state()))
    memory = _ram(16 << 20)
    rebuilt = E1000.from_state(state, memory, name="nic1")
    assert rebuilt.state() == state and rebuilt.name == "nic1" and rebuilt.backend is None
    msi = E1000.from_state(E1000(memory, msi=True).state(), memory)
    assert msi.msi is not None and msi.constructor_args().msi


def test_from_state_refuses_bad_args() -> None:
    state = E1000(_ram(1 << 20)).state()
    bad = dataclasses.replace(state, args=dataclasses.replace(state.args, revision=7))
    with pytest.raises(SnapshotError) as info:
        E1000.from_state(bad, _ram(1 << 20))
    assert info.value.field == "args" and "revision" in info.value.reason
    with pytest.raises(SnapshotError, match="args"):
        E1000.from_state(dataclasses.replace(state, args=None), _ram(1 << 20))  # type: ignore[arg-type]
