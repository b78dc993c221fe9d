"""Selects the vfio-user framing implementation: the Cython twin when built, else the
pure-Python reference (``_framing_py``, whose docstring has the framing rules).

Rules (as ``virtio.queue.ring``):

1. ``_framing_c`` is the compiled form of ``_framing_py.py`` (same source, typed by
   ``_framing_c.pxd``). It is used unless ``DEVMODELS_NO_EXTENSIONS`` is set, it was not
   built, or what imported is the uncompiled symlink (``COMPILED`` false).
2. ``IMPLEMENTATION`` says which one ``Message``/``MessageSocket`` are: ``"cython"`` or
   ``"python"``.
3. Both stay importable side by side (``IMPLEMENTATIONS``: name -> module) so tests run
   them in one process and compare them.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from devmodels import NO_EXTENSIONS

from . import _framing_py

__all__ = ["HEADER_SIZE", "Message", "MessageSocket", "VfioUserFramingError", "close_fds", "IMPLEMENTATION",
           "IMPLEMENTATIONS"]

_chosen: ModuleType = _framing_py
IMPLEMENTATIONS: dict[str, ModuleType] = {"python": _framing_py}
"""Every framing implementation available in this process, by name."""

if not (TYPE_CHECKING or NO_EXTENSIONS):
    try:
        from . import _framing_c
    except ImportError:  # not built: the reference is the implementation
        pass
    else:
        if _framing_c.COMPILED:
            _chosen = IMPLEMENTATIONS["cython"] = _framing_c

if TYPE_CHECKING:
    from ._framing_py import HEADER_SIZE, Message, MessageSocket, VfioUserFramingError, close_fds
else:
    HEADER_SIZE = _chosen.HEADER_SIZE
    Message = _chosen.Message
    MessageSocket = _chosen.MessageSocket
    VfioUserFramingError = _chosen.VfioUserFramingError
    close_fds = _chosen.close_fds

IMPLEMENTATION = "cython" if _chosen is not _framing_py else "python"
