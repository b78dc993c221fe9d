"""The ``devmodels`` command line: one subcommand per line of ``SUBCOMMANDS``.

Each entry names a module and a ``main(argv) -> int`` function in it, imported only when
that subcommand runs, so a missing optional piece never breaks the others.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "dispatch", "main"]

# name: (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("devmodels._demo", "main", "assemble an in-process machine and print its PCI enumeration"),
    "vfio-user": ("harness.serve.vfio_user_cmd", "main", "serve a device to a vfio-user VMM such as QEMU 11.1 (--socket-path/--fd)"),
    "guest-image": ("harness.guest.cli", "main", "build (or find in the cache) the guest kernel + initramfs; --boot boots it"),
    "mpqemu": ("harness.serve.mpqemu_cmd", "main", "serve a device to QEMU's x-pci-proxy-dev (multi-process QEMU)"),
    "conformance": ("harness.conformance.cli", "main", "boot guests whose devices devmodels serves; print the driver matrix"),
    "vhost-user": ("harness.serve.vhost_user_cmd", "main", "serve virtio-blk or virtio-net to a vhost-user front-end such as QEMU (--socket)"),
    "snapshot": ("harness.snapshot.cli", "main", "read device snapshot files: inspect FILE, check FILE --backend SPEC..."),
}


def _usage(prog: str, subcommands: dict[str, tuple[str, str, str]]) -> str:
    width = max(len(name) for name in subcommands)
    lines = [f"usage: {prog} SUBCOMMAND [ARGS...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in subcommands.items()]
    return "\n".join(lines)


def dispatch(prog: str, subcommands: dict[str, tuple[str, str, str]], argv: Sequence[str] | None = None) -> int:
    """Run the subcommand ``argv[0]`` of a registry like ``SUBCOMMANDS`` (module imported
    only when its subcommand runs); return its exit status (2 for bad usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(prog, subcommands))
        return 0 if args else 2
    entry = subcommands.get(args[0])
    if entry is None:
        print(f"{prog}: unknown subcommand {args[0]!r}\n\n{_usage(prog, subcommands)}", file=sys.stderr)
        return 2
    module, function, _ = entry
    run = getattr(importlib.import_module(module), function)
    return int(run(args[1:]) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; return its exit status."""
    return dispatch("devmodels", SUBCOMMANDS, argv)
