"""``devmodels snapshot``: read the snapshot files of devmodels devices.

Usage::

    devmodels snapshot inspect FILE [--json]
    devmodels snapshot check FILE [--backend SPEC ...] [--opt KEY=VALUE ...]

Rules:

1. ``inspect`` prints the header (format version, device kind), the constructor arguments
   and the state as a tree (bytes as hex, long runs cut), then whether the state decodes
   as its kind's type; ``--json`` prints the document itself, indented. A file this code
   cannot read exits 1 with the reason (the field ``SnapshotError`` names).
2. ``check`` rebuilds the device the file describes around the backends named (the
   registry's ``--backend`` words, ``harness.snapshot`` rule 2) and prints what was built;
   exit 1 when the file or the backends are refused, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devmodels import GuestMemory, HostError, MemoryRegion, SnapshotError, UsageError, from_dict, snapshot_file

from . import all_kinds, rebuild

__all__ = ["main", "render"]

_BYTES_SHOWN = 32


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devmodels snapshot", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="print a snapshot file (rule 1)")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the document itself, indented")
    check = sub.add_parser("check", help="rebuild the device a snapshot file describes (rule 2)")
    check.add_argument("file", type=Path)
    check.add_argument("--backend", action="append", default=[], metavar="SPEC",
                       help="a backend, as the device registry takes it (none: an empty AHCI port or tray)")
    check.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                       help="how backends open (direct, workers, inline-reads)")
    return parser


def _leaf(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"__bytes__"}:
        text = str(value["__bytes__"])
        size = len(text) // 2
        shown = text[: 2 * _BYTES_SHOWN]
        return f"{size} bytes {shown}{'...' if size > _BYTES_SHOWN else ''}"
    return json.dumps(value)


def _tree(value: Any, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, dict) and set(value) != {"__bytes__"}:
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item and not (isinstance(item, dict) and set(item) == {"__bytes__"}):
                if isinstance(item, list) and all(not isinstance(x, (dict, list)) for x in item):
                    out.append(f"{pad}{key}: {_short_list(item)}")
                    continue
                out.append(f"{pad}{key}:")
                _tree(item, indent + 1, out)
            else:
                out.append(f"{pad}{key}: {_leaf(item)}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, (dict, list)) and not (isinstance(item, dict) and set(item) == {"__bytes__"}):
                if isinstance(item, list) and all(not isinstance(x, (dict, list)) for x in item):
                    out.append(f"{pad}[{i}] {_short_list(item)}")
                    continue
                out.append(f"{pad}[{i}]")
                _tree(item, indent + 1, out)
            else:
                out.append(f"{pad}[{i}] {_leaf(item)}")
    else:
        out.append(f"{pad}{_leaf(value)}")


def _short_list(items: list[Any]) -> str:
    text = json.dumps(items)
    return text if len(text) <= 100 else text[:97] + "..."


def render(data: bytes) -> str:
    """The text ``inspect`` prints (rule 1).

    Raises:
        SnapshotError: the header or document is refused.
    """
    header, raw = snapshot_file.read_document(data)
    lines = [f"format: {snapshot_file.FORMAT} version {header.version}", f"kind: {header.kind}"]
    kind = all_kinds().get(header.kind)
    if kind is None:
        lines.append("decodes: no (a kind this version does not know)")
    else:
        try:
            from_dict(kind.state_type, raw, "state")
            lines.append(f"decodes: yes, as {_type_name(kind.state_type)}; rebuilt with {kind.backends}")
        except SnapshotError as exc:
            lines.append(f"decodes: no: {exc}")
    if isinstance(raw, dict):
        args = raw.get("args")
        if args is not None:
            lines.append("args:")
            _tree(args, 1, lines)
        lines.append("state:")
        _tree({k: v for k, v in raw.items() if k != "args"}, 1, lines)
    return "\n".join(lines)


def _type_name(kind: Any) -> str:
    args = typing.get_args(kind)
    origin = typing.get_origin(kind) or kind
    name = getattr(origin, "__name__", repr(origin))
    return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``devmodels snapshot``; 0 when done, 1 when the file (or a backend) is refused,
    2 for bad usage."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"snapshot: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "inspect":
            if args.json:
                snapshot_file.read_document(data)
                print(json.dumps(json.loads(data), indent=2))
            else:
                print(render(data))
            return 0
        memory = GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)])
        device, backends = rebuild(data, memory, args.backend, args.opt)
        try:
            print(f"rebuilt {device!r} from {args.file} ({len(backends)} backends); its state is the file's")
        finally:
            for backend in backends:
                if backend is not None:
                    backend.close()
        return 0
    except SnapshotError as exc:
        print(f"snapshot: {args.file}: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"snapshot: {exc}", file=sys.stderr)
        return 2
    except HostError as exc:
        print(f"snapshot: {exc}", file=sys.stderr)
        return 1
