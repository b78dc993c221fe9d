"""No package imports another package's private names (issue 16: the layer contract's twin).

A name is private when a dotted component of its module, or the imported name itself, starts
with an underscore. A package may use its own private modules; it reaches another package
only through that package's public API (``devmodels.snapshot``, ``devmodels.trace``,
``devmodels.fds``, ``devmodels.pci.defs``, ...). Tests are exempt: they test private modules
on purpose. Prints each offence as ``path:line: module.name`` and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("devmodels", "virtio", "passthrough", "mpqemu", "kvm", "harness", "fuzz", "bench", "examples")


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def offences(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
            if path.is_symlink():
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [(node.module, alias.name) for alias in node.names]
                elif isinstance(node, ast.Import):
                    modules = [(alias.name, "") for alias in node.names]
                else:
                    continue
                for module, name in modules:
                    top = module.split(".")[0]
                    if top == package or top not in PACKAGES:
                        continue
                    if _private(module) or (name.startswith("_") and not name.startswith("__")):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {module}{'.' + name if name else ''}")
    return found


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    found = offences(root)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} import(s) of another package's private names; use its public API", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
