"""Descriptors received from a peer: closing them, and bounding how many one message holds.

Every protocol server here (mpqemu, vhost-user, vfio-user) owns the descriptors a peer
sends until a handler takes them, and must close what nobody took, on every path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

__all__ = ["close_fds", "add_fds_bounded"]


def close_fds(fds: Iterable[int]) -> None:
    """Close every descriptor in ``fds``, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def add_fds_bounded(held: list[int], new: Sequence[int], limit: int) -> bool:
    """Add ``new`` to a message's ``held`` descriptors, up to ``limit`` in all; close the rest.

    However many reads bring a message's descriptors, it holds at most ``limit`` (a peer
    trickling a message a byte at a time, descriptors with each byte, must not fill the
    process's descriptor table). Returns whether any had to be closed (the message is
    then truncated, and refused).
    """
    room = max(limit - len(held), 0)
    held.extend(new[:room])
    close_fds(new[room:])
    return len(new) > room
