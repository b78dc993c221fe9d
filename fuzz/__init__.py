"""Fuzzing for devmodels devices: an op-stream harness, oracles, targets, a local runner.

- ``_ops``: fuzzer bytes -> (RAM pattern seed, ops) and back;
- ``_rig``: a device mounted in the in-process machine (``PciRig`` for any PCI function);
- ``_execute``: replays a program with the oracles (no escaping exception, no hang, bounded
  memory, reset works, snapshots round-trip);
- ``_runner``: ``python -m fuzz run TARGET --time 60`` (atheris or built-in) and ``repro``;
- ``<name>_fuzzer.py``: one OSS-Fuzz target per device (``TestOneInput``).
"""

from ._execute import execute, fill_ram_pattern, run_input
from ._ops import Op, OpKind, Program, decode, encode
from ._rig import Finding, PciRig, Rig
from ._runner import TARGETS, load_target, repro, run

__all__ = [
    "execute",
    "fill_ram_pattern",
    "run_input",
    "Op",
    "OpKind",
    "Program",
    "decode",
    "encode",
    "Finding",
    "PciRig",
    "Rig",
    "TARGETS",
    "load_target",
    "repro",
    "run",
]
