"""``python -m bench SUBCOMMAND [ARGS...]``: one benchmark per entry of ``SUBCOMMANDS``.

To add one, write ``bench/<name>.py`` with ``main(argv) -> int`` and add a line below.
Modules are imported only when their subcommand runs, so one missing piece never breaks
the others (as ``devmodels._cli``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "main"]

# name: (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "rings": ("bench.rings", "main", "virtqueue pop+push per chain, split and packed: Cython vs pure Python"),
    "vhost-user-blk": ("bench.vhost_user_blk", "main", "fio in a TCG guest: devmodels vhost-user-blk vs qemu-storage-daemon"),
    "e1000": ("bench.e1000", "main", "echo rate and TCP throughput over TAP: devmodels e1000 (proxy) vs QEMU's e1000"),
    "ahci": ("bench.ahci", "main", "fio in a TCG guest: devmodels AHCI (proxy) vs QEMU's built-in AHCI"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: python -m bench SUBCOMMAND [--json] [ARGS...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a benchmark subcommand; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        print(f"bench: unknown subcommand {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function, _ = entry
    run = getattr(importlib.import_module(module), function)
    return int(run(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
