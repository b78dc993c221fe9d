"""Selects the ring implementation: the Cython twin when built, else the pure-Python reference.

Rules (yarl ``_quoting.py``, aiohttp ``_websocket/reader.py``):

1. ``_ring_c`` is the compiled form of ``_ring_py.py`` (same source, typed by
   ``_ring_c.pxd``). It is used unless ``DEVMODELS_NO_EXTENSIONS`` is set, it was not
   built, or what imported is the uncompiled symlink (``COMPILED`` false).
2. ``IMPLEMENTATION`` says which one ``Ring``/``ChainClass`` are: ``"cython"`` or ``"python"``.
3. Both stay importable side by side (``RingPy``/``RingC``) so tests run them in one
   process and compare them (CONVENTIONS: differential); ``RingC`` is ``None`` when not available.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devmodels import NO_EXTENSIONS

from . import _ring_py

__all__ = ["Ring", "ChainClass", "RingPy", "ChainPy", "RingC", "ChainC", "IMPLEMENTATION", "IMPLEMENTATIONS"]

RingPy = _ring_py.Ring
ChainPy = _ring_py.Chain
RingC: Any = None
ChainC: Any = None

if not (TYPE_CHECKING or NO_EXTENSIONS):
    try:
        from . import _ring_c
    except ImportError:  # not built: the reference is the implementation
        pass
    else:
        if _ring_c.COMPILED:
            RingC = _ring_c.Ring
            ChainC = _ring_c.Chain

Ring: Any = RingC if RingC is not None else RingPy
"""The ring class new queues use."""
ChainClass: Any = ChainC if ChainC is not None else ChainPy
"""The chain class ``Ring.pop`` returns; code that reads chains types them with the
``virtio.queue.Chain`` protocol, which both classes satisfy."""
if TYPE_CHECKING:
    from .chain import Chain

    def _satisfies_chain(chain: _ring_py.Chain) -> Chain:
        """Never called: mypy checks here that the chain class satisfies ``Chain`` (the
        Cython class is the same source, compiled)."""
        return chain


IMPLEMENTATION = "cython" if RingC is not None else "python"
IMPLEMENTATIONS: dict[str, Any] = {"python": RingPy} if RingC is None else {"python": RingPy, "cython": RingC}
"""Every ring implementation available in this process, by name."""
