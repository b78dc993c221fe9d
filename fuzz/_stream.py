"""Byte-stream fuzz inputs: wire protocols with file descriptors (mpqemu, vfio-user).

A protocol server is not driven by register ops but by what arrives on its socket: bytes
cut at arbitrary points, each ``recvmsg`` possibly carrying descriptors. The input format:

- byte 0: a selector the target interprets (which device to serve);
- then chunks, each ``H`` (u8), ``L`` (u16 little-endian, taken modulo ``MAX_CHUNK + 1``),
  ``H & 0x0F`` (modulo ``MAX_FDS + 1``) descriptor-kind bytes, then ``L`` data bytes (fewer
  if the input ends). ``H & 0x80`` marks the chunk's descriptors as cut short
  (``MSG_CTRUNC``; a target without that notion reads it as "the peer signals now", e.g.
  a vhost-user kick). ``H & 0x40`` makes the chunk a *guest RAM store* instead of a
  ``recvmsg``: its data (a u32 offset, then bytes) is written into the first memfd the
  input created, which is the RAM both sides share. That is how an input puts rings and
  descriptors where the device will look.

Descriptor kinds (``FD_KINDS``, the kind byte modulo their number) are what a peer can
send: RAM-like sealed memfds of two sizes, a small unsealed memfd, an eventfd, a pipe and
``/dev/null``. Decoding is total and deterministic, like ``_ops``.

Oracles for these targets (besides ``Guard``'s exception, hang and memory): ``protocol``
(the server answered in a way a correct server never does), ``fd-leak`` (descriptors
the input handed over are still open after the server closed) and ``fd-held`` (while
serving, the server holds more than ``FD_HELD_LIMIT`` descriptors: a peer can make it
collect them without bound, and a process's descriptor table is small).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from devmodels.fds import close_fds

from ._rig import Finding

__all__ = [
    "Chunk", "Descriptors", "decode_stream", "encode_stream", "open_fds", "check_fd_leak", "check_fd_held", "store",
    "FD_KINDS", "MAX_FDS", "FD_HELD_LIMIT",
]

MAX_CHUNK = 4096
MAX_FDS = 9  # one past the protocols' limit of 8, so the limit is reachable
# What a server may hold at once for one connection: memory regions (vhost-user: 32 slots;
# mpqemu: 8), three per virtqueue, one incomplete message's worth, its own few; well
# below a default descriptor limit of 1024.
FD_HELD_LIMIT = 64
FD_KINDS = ("memfd-64k", "memfd-4k-unsealed", "eventfd", "pipe", "devnull", "memfd-1m")
_CHUNK = struct.Struct("<BH")


@dataclass(frozen=True)
class Chunk:
    """One ``recvmsg`` worth: bytes, the kinds of the descriptors with it, ``MSG_CTRUNC``."""

    data: bytes
    fds: tuple[int, ...] = ()
    truncated: bool = False
    store: bool = False


def decode_stream(data: bytes) -> tuple[int, list[Chunk]]:
    """``(selector, chunks)`` of an input (module docstring); never raises."""
    selector = data[0] if data else 0
    chunks: list[Chunk] = []
    pos = 1
    while pos < len(data):
        head, length = _CHUNK.unpack(data[pos : pos + _CHUNK.size].ljust(_CHUNK.size, b"\0"))
        pos += _CHUNK.size
        nfds = (head & 0x0F) % (MAX_FDS + 1)
        kinds = tuple(b % len(FD_KINDS) for b in data[pos : pos + nfds])
        pos += nfds
        length %= MAX_CHUNK + 1
        chunks.append(Chunk(data[pos : pos + length], kinds, bool(head & 0x80), bool(head & 0x40)))
        pos += length
    return selector, chunks


def encode_stream(selector: int, chunks: Sequence[Chunk]) -> bytes:
    """The input that decodes to ``(selector, chunks)`` (for seeds)."""
    out = bytearray([selector])
    for chunk in chunks:
        if len(chunk.data) > MAX_CHUNK or len(chunk.fds) > MAX_FDS:
            raise ValueError("chunk too large for the stream format")
        flags = (0x80 if chunk.truncated else 0) | (0x40 if chunk.store else 0)
        out += _CHUNK.pack(len(chunk.fds) | flags, len(chunk.data))
        out += bytes(chunk.fds)
        out += chunk.data
    return bytes(out)


def store(offset: int, data: bytes) -> Chunk:
    """A guest RAM store chunk (module docstring)."""
    return Chunk(offset.to_bytes(4, "little") + data, store=True)


class Descriptors:
    """Makes the descriptors an input sends, and keeps the shared RAM mapped for stores."""

    def __init__(self) -> None:
        self.ram: mmap.mmap | None = None

    def make(self, kind: int) -> int:
        """A new descriptor of ``FD_KINDS[kind]``; the caller owns it."""
        name = FD_KINDS[kind % len(FD_KINDS)]
        if name.startswith("memfd"):
            size = {"memfd-64k": 1 << 16, "memfd-4k-unsealed": 1 << 12, "memfd-1m": 1 << 20}[name]
            sealed = "unsealed" not in name
            fd = os.memfd_create("fuzz-ram", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealed else 0))
            os.ftruncate(fd, size)
            if sealed:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            if self.ram is None:
                self.ram = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            return fd
        if name == "eventfd":
            return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        if name == "pipe":
            read, write = os.pipe2(os.O_CLOEXEC)
            os.close(write)
            return read
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def store(self, data: bytes) -> None:
        """Apply a guest RAM store chunk's data (no RAM yet: nothing happens)."""
        if self.ram is None or len(data) < 4:
            return
        offset = int.from_bytes(data[:4], "little") % len(self.ram)
        body = data[4 : 4 + len(self.ram) - offset]
        self.ram[offset : offset + len(body)] = body

    def close(self) -> None:
        """Unmap the shared RAM."""
        if self.ram is not None:
            self.ram.close()
            self.ram = None


def open_fds() -> set[int]:
    """The descriptors open in this process now.

    ``listdir`` opens a descriptor of its own, which is in the listing but closed by the
    time it returns; ``fstat`` weeds it out (else a leaked descriptor that later reuses its
    number would look as if it had been open all along).
    """
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        out.add(int(name))
    return out


def check_fd_leak(before: set[int], what: str) -> None:
    """The ``fd-leak`` oracle: nothing opened since ``before`` may still be open (leaked
    ones are closed before the finding is raised, so a campaign does not run out of them)."""
    leaked = open_fds() - before
    # listdir's own descriptor is gone by now; anything else is the server's.
    if leaked:
        kinds = []
        for fd in sorted(leaked):
            try:
                kinds.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
            except OSError:
                continue
        if kinds:
            close_fds(leaked)
            raise Finding("fd-leak", f"{what}: descriptors left open: {', '.join(kinds)}")


def check_fd_held(before: set[int], what: str, limit: int = FD_HELD_LIMIT) -> None:
    """The ``fd-held`` oracle: at most ``limit`` descriptors opened since ``before`` are open."""
    held = len(open_fds() - before)
    if held > limit:
        raise Finding("fd-held", f"{what}: the server holds {held} descriptors (more than {limit})")
