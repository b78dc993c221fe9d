#!/usr/bin/env python3
"""Fuzz target: the virtio device framework behind a virtio-mmio version 2 window on a GSI.

The device is ``virtio.transport.testing.EchoDevice`` (see ``fuzz._echo``); the rig's
ops and health check are described in ``fuzz._virtio``.
OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    from fuzz._echo import ECHO_CHECK, ECHO_SEEDS, make_echo
    from fuzz._execute import run_input
    from fuzz._record import record
    from fuzz._virtio import VirtioMmioRig

def build() -> VirtioMmioRig:
    """A fresh rig (one per input: runs are deterministic)."""
    return VirtioMmioRig(make_echo, ECHO_CHECK)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    run_input(build, data)


def seeds() -> dict[str, bytes]:
    """The committed seed corpus, regenerated (``python -m fuzz seeds virtio_mmio``)."""
    return {name: record(build, script) for name, script in ECHO_SEEDS.items()}


if __name__ == "__main__":
    fuzz_main(TestOneInput)
