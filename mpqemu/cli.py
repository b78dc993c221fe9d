"""``python -m mpqemu``: serve a device to QEMU 7.2's ``x-pci-proxy-dev``.

Usage::

    python -m mpqemu --fd N --device testdev

``N`` is an inherited descriptor: one end of a UNIX socketpair whose other end QEMU got as
``-device x-pci-proxy-dev,id=ID,fd=M``. Guest RAM must be shareable
(``-object memory-backend-memfd,id=sysmem-file,size=512M,share=on -numa
node,memdev=sysmem-file``) for the device to DMA. The process serves until QEMU closes its
end (or SIGTERM/SIGINT), then exits 0.

Rules: devices are built by name from ``served.DEVICES`` with their backends
(``--backend socket:PATH``, ``tap:NAME``, ``file:PATH``, ``file-ro:PATH``, ``iso:PATH``)
and options (``--opt KEY=VALUE``); their runtime glue (backend fds, timers) joins the
server's event loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .config import DEFAULT_HIDDEN
from .loop import EventLoop
from .served import DEVICES, ServedDevice, build_device
from .server import MpqemuServer
from devmodels._errors import HostError, UsageError
from devmodels._memory import GuestMemory

__all__ = ["DEVICES", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devmodels mpqemu",
        description="Serve a devmodels PCI device to QEMU's x-pci-proxy-dev (mpqemu protocol).",
    )
    parser.add_argument("--fd", type=int, required=True, help="inherited UNIX socket descriptor")
    parser.add_argument("--device", required=True, choices=sorted(DEVICES), help="device model to serve")
    parser.add_argument(
        "--show-msi",
        action="store_true",
        help="do not hide MSI/MSI-X capabilities (QEMU 7.2's proxy cannot deliver them)",
    )
    parser.add_argument("--backend", action="append", default=[], metavar="SPEC",
                        help="host backend: socket:PATH or tap:NAME (NIC), file:PATH, file-ro:PATH, iso:PATH (disks)")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="device option")
    parser.add_argument("--poll-us", type=int, default=0, metavar="US",
                        help="busy-poll the socket for up to US microseconds before sleeping (default 0: never)")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; return the exit status (0 after a clean disconnect, 2 on bad usage)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s mpqemu %(levelname)s %(message)s")
    try:
        mode = os.fstat(args.fd).st_mode
    except OSError as exc:
        print(f"mpqemu: --fd {args.fd}: {exc.strerror}", file=sys.stderr)
        return 2
    if not stat.S_ISSOCK(mode):
        print(f"mpqemu: --fd {args.fd} is not a socket", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=args.fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        print(f"mpqemu: --fd {args.fd} is not a UNIX stream socket", file=sys.stderr)
        return 2
    memory = GuestMemory()
    try:
        served = build_device(args.device, memory, args.backend, args.opt)
    except (UsageError, HostError) as exc:
        sock.close()
        print(f"mpqemu: {exc}", file=sys.stderr)
        return 2
    if args.poll_us < 0:
        sock.close()
        served.close()
        print("mpqemu: --poll-us must not be negative", file=sys.stderr)
        return 2
    loop = EventLoop(poll_ns=args.poll_us * 1000)
    server = MpqemuServer(served.function, sock, memory, loop=loop,
                          hide_capabilities=() if args.show_msi else DEFAULT_HIDDEN)
    served.attach(server.loop)
    # Hooks run around every message: install only the ones the device's glue has.
    if type(served).before_message is not ServedDevice.before_message:
        server.before_dispatch.append(lambda: served.before_message(server.loop))
    if type(served).after_message is not ServedDevice.after_message:
        server.after_dispatch.append(lambda: served.after_message(server.loop))

    def _stop(signum: int, frame: FrameType | None) -> None:
        server.stop()

    def _stats(signum: int, frame: FrameType | None) -> None:
        # One write(2) of one line: safe whatever the main thread was doing.
        counters = {**dataclasses.asdict(server.stats), **served.counters()}
        fields = " ".join(f"{k}={v}" for k, v in counters.items())
        try:
            os.write(2, f"mpqemu stats: {fields}\n".encode())
        except OSError:
            pass

    # Signal handlers can only be installed from the main thread (tests call main elsewhere).
    in_main = threading.current_thread() is threading.main_thread()
    handlers = {signal.SIGTERM: _stop, signal.SIGINT: _stop, signal.SIGUSR1: _stats}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()} if in_main else {}
    try:
        server.run()
    finally:
        server.close()
        served.close()
        loop.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stats = server.stats
    logging.getLogger("devmodels.mpqemu").info(
        "served %d messages (%d refused, %d BAR reads, %d BAR writes)",
        stats.messages,
        stats.refused,
        stats.bar_reads,
        stats.bar_writes,
    )
    return 0
