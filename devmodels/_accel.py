"""Which optional Cython fast paths are in use.

Rules: every accelerated module has a selector module that imports its compiled twin
unless ``DEVMODELS_NO_EXTENSIONS`` is set (or the twin is missing) and sets
``IMPLEMENTATION`` to ``"cython"`` or ``"python"``. The selectors are listed in
``ACCELERATED`` so tools can report what was chosen (yarl ``_quoting.py``).
"""

from __future__ import annotations

import importlib
import os

__all__ = ["NO_EXTENSIONS", "ACCELERATED", "extensions_loaded", "implementations"]

NO_EXTENSIONS = bool(os.environ.get("DEVMODELS_NO_EXTENSIONS"))

ACCELERATED: list[str] = [
    # "virtio.queue.ring",  (added by the module that provides it)
    "virtio.queue.ring",
    "passthrough.user.framing",
]


def implementations() -> dict[str, str]:
    """Selector module name -> "cython", "python", or "missing" (not importable)."""
    chosen = {}
    for name in ACCELERATED:
        try:
            module = importlib.import_module(name)
        except ImportError:
            chosen[name] = "missing"
            continue
        chosen[name] = str(getattr(module, "IMPLEMENTATION", "python"))
    return chosen


def extensions_loaded() -> bool:
    """Whether any Cython fast path is in use."""
    return any(impl == "cython" for impl in implementations().values())
