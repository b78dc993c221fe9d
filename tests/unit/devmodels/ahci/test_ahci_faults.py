"""AHCI under disk faults: the error reports a real disk gives, and a reset that ends a hang."""

from __future__ import annotations

import struct

from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.ahci.faults import abandon_on_reset
from devmodels.ahci.testing import DriverTimeout
from devmodels.faults import FaultEngine, FaultyBlockBackend, MediaError, StuckIo
from tests.unit.devmodels.ahci.doubles import Rig, ScriptedDisk


def faulty_rig() -> tuple[Rig, FaultEngine, FaultyBlockBackend]:
    engine = FaultEngine()
    disk = FaultyBlockBackend(ScriptedDisk(4 << 20), engine)
    rig = Rig(disk=disk)  # type: ignore[arg-type]
    return rig, engine, disk


def d2h_lba(rig: Rig) -> int:
    fis = rig.memory.read(rig.driver.fb[0] + r.RX_FIS_RFIS, 20)
    return int.from_bytes(fis[4:7] + fis[8:11], "little")


def test_a_media_error_reports_the_first_bad_lba_in_the_d2h_fis() -> None:
    """Regression: the error LBA was the command's first LBA, not the unreadable one
    (ACS-3: the LBA of the first unrecoverable error); libata turns it into the sense data's
    information field and sd fails only the sectors from there."""
    rig, engine, _ = faulty_rig()
    engine.add(MediaError(lba=105))
    buf = rig.driver.alloc(16 * 512)
    result = rig.driver.rw_dma(0, 100, 16, buf, write=False)
    assert result.pxis & r.PxIS_TFES
    assert (result.status, result.error) == (d.STATUS_ERR, d.ATA_UNC)
    assert d2h_lba(rig) == 105


def test_an_ncq_media_error_reports_the_first_bad_lba_in_log_10h() -> None:
    """Regression: the same for READ FPDMA QUEUED, through the SDB FIS and log 10h."""
    rig, engine, _ = faulty_rig()
    engine.add(MediaError(lba=4100, sectors=4))
    drv = rig.driver
    buf = drv.alloc(3 * 8 * 512)
    drv.fpdma(0, 0, 0, 8, buf, write=False)
    drv.fpdma(0, 9, 4096, 8, buf + 4096, write=False)
    drv.issue(0, 1 << 0 | 1 << 9, queued=True)
    pxis = drv.preg(0, r.PxIS)
    assert pxis & r.PxIS_TFES and pxis & r.PxIS_SDBS
    sdb = rig.memory.read(drv.fb[0] + r.RX_FIS_SDBFIS, 8)
    assert sdb[0] == 0xA1 and sdb[2] & d.ATA_ERR and sdb[3] == d.ATA_UNC
    assert struct.unpack_from("<I", sdb, 4)[0] == 0  # an error completes no tag
    assert drv.preg(0, r.PxTFD) == d.ATA_UNC << 8 | d.STATUS_ERR
    drv.recover(0)
    _, log = drv.read_log(0, d.ATA_LOG_SATA_NCQ)
    assert log[0] == 9 and log[2] == d.STATUS_ERR and log[3] == d.ATA_UNC
    assert int.from_bytes(log[4:7] + log[8:11], "little") == 4100
    assert sum(log) & 0xFF == 0
    # the error state is left; the rest of the disk reads
    assert drv.rw_dma(0, 4104, 8, buf, write=False).ok
    assert drv.rw_dma(0, 4000, 8, buf, write=False).ok


def test_a_stuck_command_is_abandoned_by_comreset_and_the_disk_comes_back() -> None:
    rig, engine, disk = faulty_rig()
    assert abandon_on_reset(rig.hba) == 1
    engine.add(StuckIo(lba=50, count=1))
    drv = rig.driver
    buf = drv.alloc(512)
    drv.fpdma(0, 4, 50, 1, buf, write=False)
    drv.issue(0, 1 << 4, queued=True)
    try:
        drv.wait_slot(0, 4, queued=True)
        raise AssertionError("the stuck command completed")
    except DriverTimeout:
        pass
    assert disk.stuck == 1
    drv.hardreset(0)  # libata's EH after the timeout: COMRESET
    assert disk.stuck == 0
    assert drv.preg(0, r.PxSSTS) & 0xF == 3  # the link came back
    drv.start_engine(0)
    assert drv.identify(0)[0].ok
    assert drv.rw_dma(0, 50, 1, buf, write=False).ok  # count=1: the retry reads


def test_without_the_hook_the_link_waits_for_the_stuck_command() -> None:
    rig, engine, disk = faulty_rig()
    engine.add(StuckIo(lba=50))
    drv = rig.driver
    buf = drv.alloc(512)
    drv.fpdma(0, 4, 50, 1, buf, write=False)
    drv.issue(0, 1 << 4, queued=True)
    rig.hba.poll()
    drv.set_preg(0, r.PxSCTL, 1)  # COMRESET
    drv.set_preg(0, r.PxSCTL, 0)
    assert drv.preg(0, r.PxSSTS) & 0xF == 1  # AhciPort rule 5: device present, no link yet
    assert disk.stuck == 1
