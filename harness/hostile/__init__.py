"""The hostile-guest mode of the conformance suite (``devmodels conformance --hostile``).

A guest program (static C, ``guest/``) programs each device by hand from a busybox guest
with no driver loaded: registers through sysfs ``resourceN`` mmap, config space through
sysfs ``config``, DMA memory it owns (the last 16 MiB of RAM, hidden from the kernel with
``memmap=`` and mapped through ``/dev/mem``). It runs abuse scenarios per device class
(rings and descriptors, addresses at and beyond the end of RAM and inside BARs, zero and
huge lengths, resets in the middle of I/O) and after each one checks liveness: reset the
device as its driver would, then one valid operation. The host checks after every
scenario that our device server still runs.

Each device runs on every attachment path that exists (``_targets.PATHS``: our devices
behind ``x-pci-proxy-dev``, vhost-user and vfio-user; QEMU's own devices as the
reference) and every cell gets an outcome: PASS, MISBEHAVED, DEVICE-DEAD, HANG,
SERVER-DIED, VMM-DIED (or NOT-RUN / SKIPPED). Our cells must all PASS; QEMU's column is
information.

Rules:

1. ``run_hostile`` builds the program and the image once, then runs one column (device x
   path) after the other (``_runner``): one boot per column while everything passes.
2. The guest program owns the scenario table (``_program`` rule 2).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from pathlib import Path

from ._matrix import KNOWN, as_json, format_matrix, our_failures
from ._program import Scenario, build_program, guest_image, list_scenarios
from ._protocol import Outcome
from ._runner import Cell, Column, run_column
from ._targets import DEVICE_CLASSES, PATHS, AttachmentPath

__all__ = ["run_hostile", "select_targets", "format_matrix", "as_json", "our_failures", "Outcome", "Cell", "Column",
           "Scenario", "AttachmentPath", "PATHS", "DEVICE_CLASSES", "KNOWN"]


def select_targets(patterns: Sequence[str] = (), *, reference: bool = True) -> list[tuple[str, AttachmentPath]]:
    """(device, path) pairs, ours first, whose ``DEVICE/PATH`` matches a pattern (all when
    none); without ``reference`` QEMU's own devices are left out."""
    pairs = [(device, path) for path in sorted(PATHS, key=lambda p: not p.ours) for device in DEVICE_CLASSES
             if device in path.starters and (reference or path.ours)]
    if patterns:
        pairs = [(d, p) for d, p in pairs if any(fnmatch.fnmatchcase(f"{d}/{p.name}", pat) for pat in patterns)]
    return pairs


def run_hostile(
    targets: Sequence[tuple[str, AttachmentPath]],
    *,
    scenarios: Sequence[str] = (),
    progress: Callable[[str], None] = lambda line: None,
    serial_dir: Path | None = None,
) -> list[Column]:
    """Run every target; ``scenarios`` (fnmatch patterns) narrows the scenario tables.

    Raises:
        HostError: the guest program or image cannot be built.
    """
    program = build_program()
    image = guest_image(program)
    if serial_dir is not None:
        serial_dir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[Scenario]] = {}
    columns = []
    for device, path in targets:
        if device not in tables:
            table = list_scenarios(program, device)
            if scenarios:
                table = [s for s in table if s.index == 0 or any(fnmatch.fnmatchcase(s.name, p) for p in scenarios)]
            tables[device] = table
        progress(f"hostile: {device} / {path.label}: {len(tables[device])} scenarios ...")
        column = run_column(device, path, image, tables[device], progress=progress, serial_dir=serial_dir)
        progress(f"hostile: {device} / {path.name}: {'all PASS' if column.passed else 'NOT all PASS'} "
                 f"({column.boots} boots, {column.seconds:.0f} s)")
        columns.append(column)
    return columns
