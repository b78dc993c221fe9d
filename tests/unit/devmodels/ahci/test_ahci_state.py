"""Snapshots: plain data, quiesce point, validate-then-apply, and I/O after restore."""

from __future__ import annotations

import dataclasses

import pytest

from devmodels import SnapshotError, UsageError, from_dict, to_dict
from devmodels.ahci import AhciController, AhciState, AtaDisk, AtapiCdrom, TaskFile
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.ahci.testing import AhciDriver
from tests.unit.devmodels.ahci.doubles import DMA_BASE, RAM_SIZE, Rig, ScriptedDisk


def busy_rig() -> tuple[Rig, ScriptedDisk]:
    disk = ScriptedDisk(1 << 20, auto=False)
    rig = Rig(disk=disk)
    buf = rig.driver.alloc(512)
    rig.driver.prepare(0, 0, TaskFile(command=d.ATA_CMD_READ_EXT, count=1, device=d.ATA_LBA), [(buf, 512)])
    rig.driver.issue(0, 1)
    return rig, disk


def twin(rig: Rig) -> AhciController:
    """A fresh controller with the same drives (what a migration target builds)."""
    hba = AhciController(rig.memory, ports=len(rig.hba.ports))
    hba.attach(0, AtaDisk(rig.disk))
    hba.attach(1, AtapiCdrom(rig.cd))
    return hba


def test_state_requires_a_quiesced_controller() -> None:
    rig, disk = busy_rig()
    with pytest.raises(UsageError, match=r"backend requests in flight; call quiesce\(\) first"):
        rig.hba.state()
    with pytest.raises(UsageError, match=r"quiesce\(\)"):
        rig.hba.restore(twin(rig).state())
    disk.release()
    rig.hba.quiesce()
    rig.hba.state()


def test_round_trip_through_plain_data_and_continue_io() -> None:
    rig = Rig()
    rig.driver.set_features(0, d.SETFEATURES_WC_OFF)
    rig.driver.packet(1, bytes([d.GPCMD_PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1]).ljust(12, b"\0"), 0)
    state = rig.hba.state()
    data = to_dict(state)
    again = from_dict(AhciState, data)
    assert again == state
    target = twin(rig)
    target.restore(again)
    assert target.state() == state
    assert not target.ports[0].drive.write_cache  # type: ignore[union-attr]
    assert target.ports[1].drive.locked  # type: ignore[union-attr]
    driver = AhciDriver(target.read, target.write, rig.memory, DMA_BASE + (4 << 20), RAM_SIZE - DMA_BASE - (4 << 20),
                        target.poll)
    driver.clb, driver.fb, driver.tables = rig.driver.clb, rig.driver.fb, rig.driver.tables
    result, ident = driver.identify(0)
    assert result.ok and ident[170] & 0x20 == 0  # word 85 bit 5: write cache still off


def test_halted_port_survives_a_snapshot() -> None:
    rig = Rig()
    buf = rig.driver.alloc(512)
    rig.driver.rw_dma(0, 1 << 30, 1, buf, write=False)  # IDNF: TFES, halted, PxCI kept
    state = rig.hba.state()
    target = twin(rig)
    target.restore(state)
    assert target.read(r.PORT_BASE + r.PxCI, 4) == 1 and target.ports[0].halted


def corrupt(state: AhciState, path: str, value: object) -> AhciState:
    """Replace one field (``ports.0.ata.multiple``-style path)."""
    head, _, rest = path.partition(".")
    if head.isdigit():
        items = list(state)  # type: ignore[call-overload]
        items[int(head)] = corrupt(items[int(head)], rest, value) if rest else value
        return tuple(items)  # type: ignore[return-value]
    if not rest:
        return dataclasses.replace(state, **{head: value})
    return dataclasses.replace(state, **{head: corrupt(getattr(state, head), rest, value)})


def with_register(regs: tuple, offset: int, value: int) -> tuple:
    return tuple((o, value if o == offset else v) for o, v in regs)


@pytest.mark.parametrize(
    ("path", "make"),
    [
        ("version", lambda s: 99),
        ("ports", lambda s: s.ports[:1]),
        ("registers", lambda s: with_register(s.registers, r.CAP, 0)),
        ("registers", lambda s: with_register(s.registers, r.GHC, r.GHC_HR | r.GHC_AE)),
        ("registers", lambda s: s.registers[1:]),
        ("ports.0.registers", lambda s: with_register(s.ports[0].registers, r.PxCMD, r.PxCMD_POD | r.PxCMD_ST)),
        ("ports.0.registers", lambda s: with_register(s.ports[0].registers, r.PxIE, 0xFFFF_FFFF)),
        ("ports.0.registers", lambda s: with_register(s.ports[0].registers, r.PxCI, 1)),
        ("ports.0.registers", lambda s: with_register(s.ports[0].registers, r.PxSSTS, 1 << 40)),
        ("ports.0.link", lambda s: 2),
        ("ports.0.link", lambda s: 9),
        ("ports.0.next_slot", lambda s: 32),
        ("ports.0.ata", lambda s: None),
        ("ports.0.atapi", lambda s: s.ports[1].atapi),
        ("ports.0.ata.sectors", lambda s: 5),
        ("ports.0.ata.multiple", lambda s: 3),
        ("ports.0.ata.udma_mode", lambda s: 9),
        ("ports.0.ata.power", lambda s: 7),
        ("ports.0.ata.ncq_error", lambda s: b"\x01" + bytes(511)),
        ("ports.0.ata.write_cache", lambda s: 1),
        ("ports.1.atapi.has_medium", lambda s: False),
        ("ports.1.atapi.sense", lambda s: (16, 0, 0)),
        ("ports.1.atapi.unit_attention", lambda s: (1, 2, 3)),
    ],
)
def test_restore_rejects_inconsistent_snapshots_and_changes_nothing(path: str, make) -> None:
    rig = Rig()
    state = rig.hba.state()
    bad = corrupt(state, path, make(state))
    target = twin(rig)
    before = target.state()
    with pytest.raises(SnapshotError):
        target.restore(bad)
    assert target.state() == before


def test_restore_rejects_the_wrong_type() -> None:
    rig = Rig()
    with pytest.raises(SnapshotError):
        rig.hba.restore("nope")  # type: ignore[arg-type]


def test_restore_into_a_controller_equipped_differently_names_the_port() -> None:
    rig = Rig()
    state = rig.hba.state()
    swapped = AhciController(rig.memory, ports=2)
    swapped.attach(0, AtaDisk(rig.disk))
    swapped.attach(1, AtaDisk(rig.cd))  # a disk where the snapshot had a CD drive
    with pytest.raises(SnapshotError) as info:
        swapped.restore(state)
    assert info.value.field == "args.drives[1]"
    other_serial = AhciController(rig.memory, ports=2)
    other_serial.attach(0, AtaDisk(rig.disk, serial="OTHER"))
    other_serial.attach(1, AtapiCdrom(rig.cd))
    with pytest.raises(SnapshotError, match="serial='DM0000000001'") as info:
        other_serial.restore(state)
    assert info.value.field == "args.drives[0]"
    with pytest.raises(SnapshotError) as info:
        AhciController(rig.memory, ports=2, msi=True).restore(state)
    assert info.value.field == "args.msi"


def test_from_state_builds_the_controller_and_its_drives() -> None:
    rig = Rig()
    rig.driver.set_features(0, d.SETFEATURES_WC_OFF)
    rig.hba.quiesce()
    state = from_dict(AhciState, to_dict(rig.hba.state()))
    rebuilt = AhciController.from_state(state, rig.memory, [rig.disk, rig.cd], name="sata1")
    assert rebuilt.state() == state and rebuilt.name == "sata1"
    assert isinstance(rebuilt.ports[1].drive, AtapiCdrom) and rebuilt.ports[1].drive.backend is rig.cd
    assert not rebuilt.ports[0].drive.write_cache  # type: ignore[union-attr]
    with pytest.raises(SnapshotError) as info:
        AhciController.from_state(state, rig.memory, [None, rig.cd])
    assert info.value.field == "args.drives[0]" and "backend" in info.value.reason
    with pytest.raises(SnapshotError, match="has_medium"):
        AhciController.from_state(state, rig.memory, [rig.disk])  # the CD tray would be empty
    with pytest.raises(SnapshotError, match="3 media for 2 ports"):
        AhciController.from_state(state, rig.memory, [rig.disk, rig.cd, rig.disk])
