"""The ``devmodels`` command line: one subcommand per line of ``SUBCOMMANDS``.

Each entry names a module and a ``main(argv) -> int`` function in it, imported only when
that subcommand runs, so a missing optional piece never breaks the others.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "main"]

# name: (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("devmodels._demo", "main", "assemble an in-process machine and print its PCI enumeration"),
    "vfio-user": ("passthrough.user.cli", "main", "serve a device model to a vfio-user VMM (--socket-path/--fd)"),
    "guest-image": ("devmodels.guest.cli", "main", "build (or find in the cache) the guest kernel + initramfs; --boot boots it"),
    "mpqemu": ("devmodels.qemu.mpqemu.cli", "main", "serve a device to QEMU's x-pci-proxy-dev (multi-process QEMU)"),
    "conformance": ("devmodels.conformance.cli", "main", "boot guests whose devices devmodels serves; print the driver matrix"),
    "vhost-user": ("virtio.vhost_user.cli", "main", "serve virtio-blk or virtio-net to a vhost-user front-end (QEMU)"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: devmodels SUBCOMMAND [ARGS...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        print(f"devmodels: unknown subcommand {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function, _ = entry
    run = getattr(importlib.import_module(module), function)
    return int(run(args[1:]) or 0)
