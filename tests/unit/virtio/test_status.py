"""The device status transition table (VIRTIO 1.2 §2.1, §3.1.1)."""

from __future__ import annotations

import pytest

from virtio.defs import ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK
from virtio.status import DRIVER_BITS, VALID_TRANSITIONS, StatusEffect, describe, status_names, transition

A, AD, ADF, ADFO = ACKNOWLEDGE, ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | FEATURES_OK, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK


def test_the_initialization_sequence_walks_the_table() -> None:
    status = 0
    effects = []
    for written in (A, AD, ADF, ADFO):
        effect, status = transition(status, written)
        effects.append(effect)
    assert status == ADFO
    assert effects == [StatusEffect.NONE, StatusEffect.NONE, StatusEffect.NEGOTIATE, StatusEffect.ACTIVATE]


@pytest.mark.parametrize("status", [0, A, AD, ADF, ADFO, ADF | FAILED, A | DEVICE_NEEDS_RESET, 0xFF])
def test_spec_4_1_4_3_1_writing_zero_resets_from_any_state(status: int) -> None:
    # §4.1.4.3.1 / §4.2.2: the device MUST reset when 0 is written to device_status.
    assert transition(status, 0) == (StatusEffect.RESET, 0)


@pytest.mark.parametrize("status", [0, A, AD, ADF, ADFO, AD | DEVICE_NEEDS_RESET])
def test_failed_is_added_to_any_state(status: int) -> None:
    effect, after = transition(status, status | FAILED)
    assert effect is StatusEffect.FAIL
    assert after == status | FAILED


@pytest.mark.parametrize(
    ("status", "written"),
    [
        (0, AD),  # skipping ACKNOWLEDGE
        (A, ADF),  # skipping DRIVER
        (AD, ADFO),  # DRIVER_OK before FEATURES_OK
        (ADF, AD),  # clearing FEATURES_OK
        (ADFO, ADF),  # clearing DRIVER_OK
        (0, DRIVER),  # DRIVER without ACKNOWLEDGE
        (A, A | 0x10),  # a reserved bit
        (A | FAILED, AD),  # progress after FAILED
        (AD, 0x100 | ADF),  # a value wider than the 8-bit field
    ],
)
def test_spec_2_1_1_illegal_writes_set_needs_reset_and_keep_driver_bits(status: int, written: int) -> None:
    # §2.1.1: the driver MUST NOT clear a device status bit (and must follow §3.1.1).
    effect, after = transition(status, written)
    assert effect is StatusEffect.ILLEGAL
    assert after == status | DEVICE_NEEDS_RESET


def test_needs_reset_is_sticky_across_legal_progress() -> None:
    effect, after = transition(A | DEVICE_NEEDS_RESET, AD | DEVICE_NEEDS_RESET)
    assert effect is StatusEffect.NONE
    assert after == AD | DEVICE_NEEDS_RESET
    # The driver's copy of DEVICE_NEEDS_RESET does not matter either way.
    assert transition(A | DEVICE_NEEDS_RESET, AD) == (StatusEffect.NONE, AD | DEVICE_NEEDS_RESET)
    assert transition(A, AD | DEVICE_NEEDS_RESET) == (StatusEffect.NONE, AD)


@pytest.mark.parametrize("status", [A, AD, ADF, ADFO])
def test_rewriting_the_current_value_is_a_no_op(status: int) -> None:
    assert transition(status, status) == (StatusEffect.NONE, status)


def test_table_only_holds_driver_bits_and_single_steps() -> None:
    for (before, written), (_, after) in VALID_TRANSITIONS.items():
        assert before & ~DRIVER_BITS == 0 and written & ~DRIVER_BITS == 0
        assert after == written
        assert written & before == before  # never clears a bit
        assert bin(written ^ before).count("1") <= 1


def test_names_and_description() -> None:
    assert status_names(0) == "0"
    assert status_names(ADF) == "ACKNOWLEDGE|DRIVER|FEATURES_OK"
    assert status_names(0x30) == "0x30"
    lines = describe()
    assert any("NEGOTIATE".lower() in line for line in lines)
    assert len(lines) == len(VALID_TRANSITIONS) + 3


def test_exhaustive_over_every_state_and_byte_value() -> None:
    # Every 8-bit state (reachable or not) against every value a 9-bit write can carry.
    for status in range(0x100):
        for written in range(0x200):
            effect, after = transition(status, written)
            assert 0 <= after <= 0xFF
            if effect is not StatusEffect.RESET:
                assert after & status == status, (status, written)
