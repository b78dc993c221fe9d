"""``python -m fuzz smoke`` explores: a fresh engine seed each run, printed so it can be replayed."""

from __future__ import annotations

import re
from typing import Any

import pytest

import fuzz.__main__ as cli


@pytest.fixture
def seeds_used(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seed each smoke run handed to the (real) engine."""
    used: list[int] = []
    real = cli.run

    def recording_run(*args: Any, **kwargs: Any) -> Any:
        used.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "run", recording_run)
    return used


def _printed_seed(text: str) -> int:
    match = re.search(r"^fuzz smoke: seed (\d+) \(again: python -m fuzz smoke --seed \1 --time 0 testdev\)$", text,
                      re.MULTILINE)
    assert match, text
    return int(match.group(1))


def test_each_smoke_run_fuzzes_with_a_new_printed_seed(seeds_used: list[int],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    printed = []
    for _ in range(3):
        assert cli.main(["smoke", "--time", "0", "testdev"]) == 0
        printed.append(_printed_seed(capsys.readouterr().out))
    assert seeds_used == printed
    assert len(set(printed)) == 3  # 32 random bits each: equal seeds would mean a fixed seed


def test_a_given_seed_is_used_and_printed(seeds_used: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["smoke", "--time", "0", "--seed", "1234", "testdev"]) == 0
    assert _printed_seed(capsys.readouterr().out) == 1234 and seeds_used == [1234]


def test_smoke_seed() -> None:
    assert cli.smoke_seed(7) == 7 and cli.smoke_seed(0) == 0
    assert 0 <= cli.smoke_seed(None) < 1 << 32
