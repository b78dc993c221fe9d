"""A UNIX listening socket whose path appears only once it accepts connections, public for
server authors.

Rules:

1. ``listen_unix`` binds a temporary name beside ``path``, calls ``listen`` and only then
   renames it to ``path`` (``rename(2)`` is atomic). A peer that waits for the path to exist
   and then connects (QEMU's ``reconnect=``, a test, a launcher) never meets a socket that is
   bound but not yet listening, which refuses it with ECONNREFUSED. Where the temporary name
   would not fit in ``sun_path`` (108 bytes) it binds ``path`` itself. The socket's
   ``getsockname()`` still reports the temporary name: keep ``path`` for what it is.
2. A stale socket at ``path`` (an earlier run's) is replaced; anything else there is left
   alone and refused with a ``HostError`` naming the path.
"""

from __future__ import annotations

import os
import socket
import stat

from ._errors import HostError

__all__ = ["listen_unix"]

_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 for the terminating NUL (unix(7))


def listen_unix(path: str | os.PathLike[str], *, backlog: int = 1,
                kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """A listening AF_UNIX socket at ``path`` (rules 1–2); the caller unlinks the path when done.

    Raises:
        HostError: ``path`` is taken by something that is not a socket, or binding failed.
    """
    target = os.fspath(path)
    try:
        if not stat.S_ISSOCK(os.lstat(target).st_mode):
            raise HostError(f"cannot listen on {target!r}: a file that is not a socket is in the way")
    except FileNotFoundError:
        pass
    temporary = f"{target}.{os.getpid()}~"
    bind_at = temporary if len(os.fsencode(temporary)) <= _SUN_PATH_MAX else target
    if bind_at == target and os.path.lexists(target):
        os.unlink(target)
    listener = socket.socket(socket.AF_UNIX, kind)
    try:
        if os.path.lexists(bind_at):
            os.unlink(bind_at)
        listener.bind(bind_at)
        listener.listen(backlog)
        if bind_at != target:
            os.rename(bind_at, target)  # replaces a stale socket atomically (rule 2)
    except OSError as exc:
        listener.close()
        if bind_at != target:
            try:
                os.unlink(bind_at)
            except OSError:
                pass
        raise HostError(f"cannot listen on {target!r}: {exc.strerror or exc}") from None
    return listener
