"""Fuzzing for devmodels devices: an op-stream harness, oracles, targets, a local runner.

- ``_ops``: fuzzer bytes -> (RAM pattern seed, ops) and back;
- ``_rig``: a device mounted in the in-process machine (``PciRig`` for any PCI function);
- ``_execute``: replays a program with the oracles (no escaping exception, no hang, bounded
  memory, reset works, snapshots round-trip); ``Guard`` gives byte-stream targets the same;
- ``_record``: turns a driver simulator's accesses into a seed program (``python -m fuzz
  seeds`` rewrites the committed corpora);
- ``_runner``: ``python -m fuzz run TARGET --time 60`` (atheris or built-in) and ``repro``;
- ``<name>_fuzzer.py``: one OSS-Fuzz target per device (``TestOneInput``).

The names below are loaded on first use (PEP 562) so that a fuzzer script can import
``fuzz._instrument`` before any device module: atheris instruments only modules imported
after it starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._execute import Guard, execute, fill_ram_pattern, run_input
    from ._ops import Op, OpKind, Program, decode, encode
    from ._rig import Finding, PciRig, Rig
    from ._runner import TARGETS, load_executor, load_target, repro, run

_EXPORTS = {
    "execute": "_execute",
    "fill_ram_pattern": "_execute",
    "run_input": "_execute",
    "Guard": "_execute",
    "Op": "_ops",
    "OpKind": "_ops",
    "Program": "_ops",
    "decode": "_ops",
    "encode": "_ops",
    "Finding": "_rig",
    "PciRig": "_rig",
    "Rig": "_rig",
    "TARGETS": "_runner",
    "load_executor": "_runner",
    "load_target": "_runner",
    "repro": "_runner",
    "run": "_runner",
}

__all__ = [
    "execute",
    "fill_ram_pattern",
    "run_input",
    "Guard",
    "Op",
    "OpKind",
    "Program",
    "decode",
    "encode",
    "Finding",
    "PciRig",
    "Rig",
    "TARGETS",
    "load_executor",
    "load_target",
    "repro",
    "run",
]
assert set(__all__) == set(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fuzz' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
