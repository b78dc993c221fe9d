from __future__ import annotations

import io

from harness.guest import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_by_default_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(3, stream=out)
    bar.step("a")
    bar.finish()
    assert out.getvalue() == ""


def test_one_line_per_step_when_asked_without_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(2, enabled=True, stream=out)
    bar.step("download")
    bar.step("unpack")
    bar.finish("done")
    lines = out.getvalue().splitlines()
    assert lines == ["[........................] download", "[############............] unpack",
                     "[########################] done"]


def test_redraws_in_place_on_a_terminal() -> None:
    out = _Tty()
    bar = Progress(2, stream=out)
    bar.step("a long label")
    bar.finish("ok")
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
