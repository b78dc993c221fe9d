"""Table-driven register files (devmodels._regs)."""

from __future__ import annotations

import logging

import pytest

from devmodels import Reg, RegAccess, RegisterFile, UsageError
from devmodels._trace import RecordingSink

A = RegAccess


def _file(*regs: Reg) -> RegisterFile:
    return RegisterFile(regs, device="dev")


def test_rw_respects_mask_and_reset() -> None:
    rf = _file(Reg("CTRL", 0, mask=0x0000_FF0F, reset=0x1234_0001))
    assert rf.read(0, 4) == 0x1234_0001
    rf.write(0, 4, 0xFFFF_FFFF)
    assert rf.read(0, 4) == 0x1234_FF0F
    rf.write(0, 4, 0)
    assert rf.read(0, 4) == 0x1234_0000
    rf.reset()
    assert rf["CTRL"] == 0x1234_0001


def test_ro_ignores_writes() -> None:
    rf = _file(Reg("ID", 0, access=A.RO, reset=0xABCD))
    rf.write(0, 4, 0)
    assert rf.read(0, 4) == 0xABCD


def test_w1c_clears_only_written_ones() -> None:
    rf = _file(Reg("ISR", 0, access=A.W1C, reset=0b1111, mask=0b0111))
    rf.write(0, 4, 0b1010)
    assert rf.read(0, 4) == 0b1101  # bit 3 is outside the mask, bit 1 cleared
    rf.write(0, 4, 0)
    assert rf.read(0, 4) == 0b1101


def test_w1s_sets_only_written_ones() -> None:
    rf = _file(Reg("SET", 0, access=A.W1S, reset=0b0001, mask=0b0111))
    rf.write(0, 4, 0b1010)
    assert rf.read(0, 4) == 0b0011
    rf.write(0, 4, 0)
    assert rf.read(0, 4) == 0b0011


def test_rc_clears_on_read() -> None:
    rf = _file(Reg("ICR", 0, access=A.RC, reset=0x5))
    rf.write(0, 4, 0xFF)  # writes to RC are ignored
    assert rf.read(0, 4) == 0x5
    assert rf.read(0, 4) == 0


def test_wo_reads_zero_and_passes_written_value_to_hook() -> None:
    seen: list[tuple[int, int]] = []

    def hook(old: int, new: int) -> int:
        seen.append((old, new))
        return new

    rf = _file(Reg("CMD", 0, access=A.WO, mask=0xFF, on_write=hook))
    rf.write(0, 4, 0x1234)
    assert seen == [(0, 0x34)]
    assert rf.read(0, 4) == 0
    assert rf["CMD"] == 0x34


def test_hooks_replace_values() -> None:
    rf = _file(Reg("X", 0, on_read=lambda v: v ^ 0xFF, on_write=lambda old, new: new + 1))
    rf.write(0, 4, 0x10)
    assert rf["X"] == 0x11
    assert rf.read(0, 4) == 0x11 ^ 0xFF


def test_hook_result_is_truncated_to_register_width() -> None:
    rf = _file(Reg("X", 0, size=2, mask=0xFFFF, on_write=lambda old, new: 0x12345))
    rf.write(0, 2, 1)
    assert rf["X"] == 0x2345


def test_partial_register_byte_lanes() -> None:
    rf = _file(Reg("SCRATCH", 0, partial=True), Reg("NEXT", 4))
    rf.write(0, 4, 0x11223344)
    assert rf.read(1, 1) == 0x33
    assert rf.read(2, 2) == 0x1122
    rf.write(2, 1, 0xAA)
    assert rf.read(0, 4) == 0x11AA3344
    rf.write(1, 2, 0xBBCC)
    assert rf.read(0, 4) == 0x11BBCC44
    assert rf.read(3, 2) == 0  # leaves the register: unimplemented


def test_non_partial_register_rejects_other_sizes() -> None:
    rf = _file(Reg("R", 0, reset=0xAABBCCDD))
    assert rf.read(0, 2) == 0
    assert rf.read(1, 1) == 0
    assert rf.read(0, 8) == 0
    rf.write(0, 2, 0)
    rf.write(2, 2, 0)
    assert rf["R"] == 0xAABBCCDD


def test_64bit_register() -> None:
    rf = _file(Reg("ADDR", 0x20, size=8, mask=(1 << 64) - 1))
    rf.write(0x20, 8, 0x1122_3344_5566_7788)
    assert rf.read(0x20, 8) == 0x1122_3344_5566_7788


def test_unimplemented_reads_zero_logs_once_and_traces(caplog: pytest.LogCaptureFixture) -> None:
    rf = _file(Reg("R", 0))
    with caplog.at_level(logging.INFO, logger="devmodels.regs"), RecordingSink("dev.unimplemented") as rec:
        assert rf.read(0x40, 4) == 0
        assert rf.read(0x40, 4) == 0
        rf.write(0x40, 4, 1)
    logged = [r for r in caplog.records if r.name == "devmodels.regs"]
    assert len(logged) == 2  # one read, one write, the repeat is not logged again
    assert [f["op"] for _, f in rec.events] == ["read", "read", "write"]


def test_unimplemented_log_memory_is_bounded() -> None:
    rf = _file(Reg("R", 0))
    for offset in range(0x100, 0x100 + 5000 * 4, 4):
        rf.read(offset, 4)
    assert len(rf._logged) <= 4096


def test_declaration_errors() -> None:
    with pytest.raises(UsageError, match="size 3"):
        _file(Reg("BAD", 0, size=3))
    with pytest.raises(UsageError, match="overlaps"):
        _file(Reg("A", 0, size=8), Reg("B", 4))


def test_array_and_lookup_helpers() -> None:
    regs = Reg.array("RAL", 0x100, 4, stride=8, mask=0xFF)
    assert [(r.name, r.offset, r.mask) for r in regs] == [
        ("RAL[0]", 0x100, 0xFF),
        ("RAL[1]", 0x108, 0xFF),
        ("RAL[2]", 0x110, 0xFF),
        ("RAL[3]", 0x118, 0xFF),
    ]
    rf = _file(*reversed(regs))
    assert [r.offset for r in rf.registers] == [0x100, 0x108, 0x110, 0x118]
    assert "RAL[2]" in rf and "RAL[9]" not in rf
    assert rf.reg("RAL[1]").offset == 0x108
    rf["RAL[3]"] = 0x1_0000_0005
    assert rf["RAL[3]"] == 5
    rf.write(0x110, 4, 0x1FF)
    assert rf["RAL[2]"] == 0xFF


def test_read_write_trace_events() -> None:
    rf = _file(Reg("R", 0))
    with RecordingSink("dev.reg_*") as rec:
        rf.write(0, 4, 9)
        rf.read(0, 4)
    assert rec.events == [("dev.reg_write", {"reg": "R", "value": 9}), ("dev.reg_read", {"reg": "R", "value": 9})]


def test_rc_w1c_reads_clear_and_writing_one_clears() -> None:
    regs = RegisterFile([Reg("CAUSE", 0x0, 4, RegAccess.RC_W1C, 0xFF)], "dev")
    regs["CAUSE"] = 0b1011
    regs.write(0, 4, 0b0001)
    assert regs["CAUSE"] == 0b1010
    assert regs.read(0, 4) == 0b1010
    assert regs["CAUSE"] == 0


def test_hooks_for_names_not_in_the_table_are_refused() -> None:
    from devmodels._regs import check_hook_names

    check_hook_names(["CTRL", "ICR"], {"ICR": None}, "dev")
    with pytest.raises(UsageError, match="dev: hooks for registers not in the table: IRC"):
        check_hook_names(["CTRL", "ICR"], {"IRC": None, "ICR": None}, "dev")
