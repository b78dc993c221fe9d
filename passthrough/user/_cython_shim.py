"""Stand-in for the ``cython`` module when Cython is not installed: the ring module then
runs interpreted and reads only ``compiled``."""

compiled = False
