"""``devmodels mpqemu``: serve a device to QEMU 7.2's ``x-pci-proxy-dev``.

Usage::

    devmodels mpqemu --fd N --device e1000 --backend socket:/tmp/wire.sock

``N`` is an inherited descriptor: one end of a UNIX socketpair whose other end QEMU got as
``-device x-pci-proxy-dev,id=ID,fd=M``. Guest RAM must be shareable
(``-object memory-backend-memfd,id=sysmem-file,size=512M,share=on -numa
node,memdev=sysmem-file``) for the device to DMA. The process serves until QEMU closes its
end (or SIGTERM/SIGINT), then exits 0.

The device comes from ``registry`` (``common`` rule 1) built without MSI/MSI-X: QEMU 7.2's
proxy cannot deliver them, so their capabilities are also hidden from its view
(``--show-msi`` keeps them visible).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import stat
import sys
from collections.abc import Sequence

from devmodels import GuestMemory, HostError, UsageError
from devmodels.runtime import DeviceRunner, EventLoop
from mpqemu import DEFAULT_HIDDEN, MpqemuServer

from .common import add_device_arguments, setup_logging, signals, write_stats
from .faults import from_args
from .registry import build

__all__ = ["main"]

_log = logging.getLogger("devmodels.mpqemu")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devmodels mpqemu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="inherited UNIX socket descriptor")
    add_device_arguments(parser)
    parser.add_argument("--show-msi", action="store_true",
                        help="do not hide MSI/MSI-X capabilities (QEMU 7.2's proxy cannot deliver them)")
    parser.add_argument("--poll-us", type=int, default=0, metavar="US",
                        help="busy-poll the socket for up to US microseconds before sleeping (default 0: never)")
    return parser


def _socket(fd: int) -> socket.socket:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise UsageError(f"--fd {fd}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"--fd {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise UsageError(f"--fd {fd} is not a UNIX stream socket")
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; return the exit status (0 after a clean disconnect, 2 on bad usage)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args.log_level, "mpqemu")
    if args.poll_us < 0:
        print("mpqemu: --poll-us must not be negative", file=sys.stderr)
        return 2
    try:
        sock = _socket(args.fd)
    except UsageError as exc:
        print(f"mpqemu: {exc}", file=sys.stderr)
        return 2
    memory = GuestMemory()
    try:
        built = build(args.device, memory, args.backend, args.opt, msi=args.show_msi)
    except (UsageError, HostError) as exc:
        sock.close()
        print(f"mpqemu: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    assert built.function is not None
    loop = EventLoop(poll_ns=args.poll_us * 1000)
    server = MpqemuServer(built.function, sock, memory, loop=loop,
                          hide_capabilities=() if args.show_msi else DEFAULT_HIDDEN)
    try:
        faults = from_args(args, built)  # the fault layers (``faults``); pci.* after the server's sinks
        served = faults.start(built.function) if faults is not None else built.served
    except (UsageError, HostError) as exc:
        server.close()
        built.close()
        loop.close()
        print(f"mpqemu: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    runner = DeviceRunner(served, loop)
    runner.attach()
    server.before_dispatch.append(runner.before_access)
    server.after_dispatch.append(runner.after_access)

    def stats() -> None:
        write_stats("mpqemu", {**dataclasses.asdict(server.stats), **built.counters(),
                               **(faults.counters() if faults is not None else {})})

    try:
        with signals(server.stop, stats):
            server.run()
    finally:
        server.close()
        runner.close()
        if faults is not None:
            faults.close()
        built.close()
        loop.close()
    s = server.stats
    _log.info("served %d messages (%d refused, %d BAR reads, %d BAR writes)",
              s.messages, s.refused, s.bar_reads, s.bar_writes)
    return 0
