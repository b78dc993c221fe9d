"""``python -m passthrough.user``: serve a devmodels device to a vfio-user client (a VMM).

Usage (vfio-user.rst "Backend Program Conventions")::

    python -m passthrough.user --socket-path=/run/dev0.sock --device=testdev
    python -m passthrough.user --fd=3 --device=testdev

With ``--socket-path`` the program listens and serves one client after the other; with
``--fd`` it serves the one connected socket it inherited and exits when the client goes.
It does not daemonize and ends on SIGTERM/SIGINT. Devices are built by name from
``DEVICES`` (name → factory taking the ``GuestMemory`` client DMA windows are mapped
into); device models register there as they land.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from devmodels import GuestMemory
from devmodels.pci import PciFunction

from .dma import DmaMemory
from .server import VfioUserServer

__all__ = ["DEVICES", "main"]


def _testdev(memory: GuestMemory) -> PciFunction:
    from devmodels.testdev import PciTestDevice

    return PciTestDevice(memory)


DEVICES: dict[str, Callable[[GuestMemory], PciFunction]] = {"testdev": _testdev}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m passthrough.user", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket-path", help="listen on this UNIX socket path")
    where.add_argument("--fd", type=int, help="serve this inherited, connected UNIX socket")
    parser.add_argument("--device", default="testdev", choices=sorted(DEVICES), help="the device model to serve")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; return the exit status."""
    args = _parser().parse_args(argv)
    memory = DmaMemory()
    server = VfioUserServer(DEVICES[args.device](memory), memory)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.fd is not None:
        server.serve(socket.socket(fileno=args.fd))
        return 0
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.exists(args.socket_path):
            os.unlink(args.socket_path)
        listener.bind(args.socket_path)
        listener.listen(1)
        print(f"vfio-user: serving {args.device} on {args.socket_path}", file=sys.stderr, flush=True)
        server.serve_forever(listener)
    finally:
        listener.close()
        if os.path.exists(args.socket_path):
            os.unlink(args.socket_path)
    return 0
