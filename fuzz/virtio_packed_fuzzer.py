#!/usr/bin/env python3
"""Fuzz target: packed virtqueues, Cython ring against the pure-Python reference.

The rig, its ops and the differential oracle are described in ``fuzz._rings``.
OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    from fuzz._execute import run_input
    from fuzz._record import record
    from fuzz._rings import SEEDS, RingRig


def build() -> RingRig:
    """A fresh rig (one per input: runs are deterministic)."""
    return RingRig(packed=True)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    run_input(build, data)


def seeds() -> dict[str, bytes]:
    """The committed seed corpus, regenerated (``python -m fuzz seeds virtio_packed``)."""
    return {name: record(build, script) for name, script in SEEDS.items()}


if __name__ == "__main__":
    fuzz_main(TestOneInput)
