"""Coverage instrumentation for the atheris fuzzer scripts, limited to the device packages.

Rules:

1. A fuzzer script imports its device modules inside ``with instrumented(__name__):``. Run
   as a script (``__main__``) with atheris installed, the modules of ``PACKAGES`` imported in
   that block get atheris' coverage hooks; imported by the runner or the tests, the block
   does nothing.
2. Only the device packages are instrumented, not the harness, the standard library or
   ``construct``: their edges are noise in ``cov:``/``ft:`` and cost speed.
3. This module imports nothing from the device packages (it must run before them).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["PACKAGES", "instrumented", "fuzz_main"]

PACKAGES = ("devmodels", "virtio", "passthrough")


def instrumented(module_name: str) -> contextlib.AbstractContextManager[Any]:
    """The ``with`` block a fuzzer script imports its targets in (rule 1).

    Args:
        module_name: the script's ``__name__``; instrumentation happens for ``"__main__"``.
    """
    if module_name == "__main__" and importlib.util.find_spec("atheris") is not None:
        import atheris

        return atheris.instrument_imports(include=list(PACKAGES))
    return contextlib.nullcontext()


def fuzz_main(test_one_input: Callable[[bytes], None]) -> None:
    """``atheris.Setup`` + ``atheris.Fuzz`` with the process's arguments (libFuzzer flags)."""
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # refused-message logs are noise at fuzzing rates
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
