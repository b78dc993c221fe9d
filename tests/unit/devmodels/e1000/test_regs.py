"""The register table: layout, masks Linux's ethtool register test expects, unknown offsets,
statistics read-to-clear semantics (SDM ch. 13)."""

from __future__ import annotations

import pytest

from devmodels import RegAccess, trace
from devmodels.e1000 import regs as r

from .conftest import Rig


def test_table_has_unique_names_and_offsets() -> None:
    names = [spec.name for spec in r.REGISTERS]
    offsets = [spec.offset for spec in r.REGISTERS]
    assert len(set(names)) == len(names)
    assert len(set(offsets)) == len(offsets)
    assert all(offset % 4 == 0 and offset < r.BAR0_SIZE for offset in offsets)


def test_every_register_linux_update_stats_reads_is_implemented() -> None:
    names = {spec.name for spec in r.REGISTERS}
    for name in ("CRCERRS", "SYMERRS", "MPC", "SCC", "ECOL", "MCC", "LATECOL", "COLC", "DC", "SEC", "RLEC",
                 "XONRXC", "XONTXC", "XOFFRXC", "XOFFTXC", "FCRUC", "PRC64", "PRC1522", "GPRC", "BPRC", "MPRC",
                 "GPTC", "GORCL", "GORCH", "GOTCL", "GOTCH", "RNBC", "RUC", "RFC", "ROC", "RJC", "TORL", "TORH",
                 "TOTL", "TOTH", "TPR", "TPT", "PTC64", "PTC1522", "MPTC", "BPTC", "ALGNERRC", "RXERRC",
                 "TNCRS", "CEXTERR", "TSCTC", "TSCTFC", "WUC", "WUFC", "MANC"):
        assert name in names, name


# (register, mask, write) as in Linux e1000_ethtool.c e1000_reg_test for the 82540
PATTERN_TESTS = [
    ("FCAL", 0xFFFFFFFF, 0xFFFFFFFF), ("FCAH", 0x0000FFFF, 0xFFFFFFFF), ("FCT", 0x0000FFFF, 0xFFFFFFFF),
    ("VET", 0x0000FFFF, 0xFFFFFFFF), ("RDTR", 0x0000FFFF, 0xFFFFFFFF), ("RDBAH", 0xFFFFFFFF, 0xFFFFFFFF),
    ("RDLEN", 0x000FFF80, 0x000FFFFF), ("RDH", 0x0000FFFF, 0x0000FFFF), ("RDT", 0x0000FFFF, 0x0000FFFF),
    ("FCRTH", 0x0000FFF8, 0x0000FFF8), ("FCTTV", 0x0000FFFF, 0x0000FFFF), ("TIPG", 0x3FFFFFFF, 0x3FFFFFFF),
    ("TDBAH", 0xFFFFFFFF, 0xFFFFFFFF), ("TDLEN", 0x000FFF80, 0x000FFFFF), ("RDBAL", 0xFFFFFFF0, 0xFFFFFFFF),
    ("TXCW", 0xC000FFFF, 0x0000FFFF), ("TDBAL", 0xFFFFFFF0, 0xFFFFFFFF), ("TIDV", 0x0000FFFF, 0x0000FFFF),
    ("RAH[3]", 0x8003FFFF, 0xFFFFFFFF), ("MTA[77]", 0xFFFFFFFF, 0xFFFFFFFF),
]  # fmt: skip


@pytest.mark.parametrize(("name", "mask", "write"), PATTERN_TESTS)
def test_ethtool_pattern_test(rig: Rig, name: str, mask: int, write: int) -> None:
    offset = rig.device.registers.reg(name).offset
    rig.device.config_write(0x04, 2, 0x0002)  # memory decode only: no DMA while testing rings
    for pattern in (0x5A5A5A5A, 0xA5A5A5A5, 0x00000000, 0xFFFFFFFF):
        rig.device.bar_write(0, offset, 4, pattern & write)
        assert rig.device.bar_read(0, offset, 4) & mask == pattern & write & mask


def test_rctl_set_and_check(rig: Rig) -> None:
    before = 0x06DFB3FE
    rig.device.bar_write(0, r.RCTL, 4, before & 0x003FFFFB)
    assert rig.device.bar_read(0, r.RCTL, 4) & 0x003FFFFB == before & 0x003FFFFB
    rig.device.bar_write(0, r.RCTL, 4, before)
    assert rig.device.bar_read(0, r.RCTL, 4) == before
    rig.device.bar_write(0, r.TCTL, 4, 0)
    assert rig.device.bar_read(0, r.TCTL, 4) == 0


def test_unknown_offset_reads_zero_and_is_traced(rig: Rig) -> None:
    with trace.RecordingSink("e1000.unimplemented") as rec:
        assert rig.device.bar_read(0, 0x1F000, 4) == 0
        rig.device.bar_write(0, 0x1F000, 4, 0xDEAD)
        assert rig.device.bar_read(0, 0x1F000, 4) == 0
    assert rec.names().count("e1000.unimplemented") == 3


def test_unknown_offset_logged_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="devmodels.regs")
    for _ in range(5):
        rig.device.bar_read(0, 0x1E004, 4)
    assert sum("0x1e004" in rec.getMessage() for rec in caplog.records) == 1


def test_statistics_read_to_clear(up: Rig) -> None:
    dev = up.device
    dev.registers["MPC"] = 7
    assert dev.bar_read(0, r.STATS_32["MPC"], 4) == 7
    assert dev.bar_read(0, r.STATS_32["MPC"], 4) == 0


def test_64bit_counter_high_read_clears_both_halves(up: Rig) -> None:
    dev = up.device
    dev.stats.add64("GORC", (5 << 32) | 9)
    low, high = r.STATS_64["GORC"]
    assert dev.bar_read(0, low, 4) == 9
    assert dev.bar_read(0, low, 4) == 9  # the low half alone does not clear
    assert dev.bar_read(0, high, 4) == 5
    assert dev.bar_read(0, low, 4) == 0
    assert dev.bar_read(0, high, 4) == 0


def test_counters_saturate(up: Rig) -> None:
    dev = up.device
    dev.registers["GPRC"] = 0xFFFF_FFFE
    dev.stats.add("GPRC", 5)
    assert dev.registers["GPRC"] == 0xFFFF_FFFF
    dev.stats.add64("TOR", (1 << 64) + 3)
    assert (dev.registers["TORH"], dev.registers["TORL"]) == (0xFFFF_FFFF, 0xFFFF_FFFF)


def test_wakeup_registers_read_back(rig: Rig) -> None:
    rig.device.bar_write(0, r.WUC, 4, 0)
    rig.device.bar_write(0, r.WUFC, 4, 0x2)
    assert rig.device.bar_read(0, r.WUFC, 4) == 0x2
    assert rig.device.bar_read(0, r.WUC, 4) == 0


def test_eight_byte_access_splits(rig: Rig) -> None:
    rig.device.bar_write(0, r.RDBAL, 8, 0x1234_5678_9ABC_DEF0)
    assert rig.device.bar_read(0, r.RDBAL, 4) == 0x9ABC_DEF0
    assert rig.device.bar_read(0, r.RDBAH, 4) == 0x1234_5678
    assert rig.device.bar_read(0, r.RDBAL, 8) == 0x1234_5678_9ABC_DEF0


def test_narrow_access_hits_byte_lanes(rig: Rig) -> None:
    rig.device.bar_write(0, r.FCAL, 4, 0x1122_3344)
    assert rig.device.bar_read(0, r.FCAL + 2, 2) == 0x1122
    rig.device.bar_write(0, r.FCAL + 1, 1, 0xAA)
    assert rig.device.bar_read(0, r.FCAL, 4) == 0x1122_AA44


def test_pba_reports_transmit_allocation(rig: Rig) -> None:
    assert rig.device.bar_read(0, r.PBA, 4) == 16 << 16 | 48  # 48 KB receive, 16 KB transmit
    rig.device.bar_write(0, r.PBA, 4, 40)
    assert rig.device.bar_read(0, r.PBA, 4) == 24 << 16 | 40


def test_the_register_table_is_the_truth_about_access_kinds() -> None:
    # ICR and IMS are declared as what they are (SDM §13.4.17, §13.4.20); the device uses
    # the table's kinds as they stand, with no override.
    from devmodels import GuestMemory
    from devmodels.e1000 import E1000

    specs = {spec.name: spec for spec in r.REGISTERS}
    assert specs["ICR"].access is RegAccess.RC_W1C
    assert specs["IMS"].access is RegAccess.W1S
    device = E1000(GuestMemory())
    for reg in device.registers.registers:
        assert reg.access is specs[reg.name].access, reg.name
