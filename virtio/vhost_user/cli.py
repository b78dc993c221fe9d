"""``devmodels vhost-user blk|net``: serve a devmodels virtio device to a vhost-user front-end.

Examples::

    devmodels vhost-user blk --socket /tmp/vu.sock --image disk.img [--readonly]
    devmodels vhost-user net --socket /tmp/vu.sock --backend tap:tap0
    devmodels vhost-user net --socket /tmp/vu.sock --backend socket:/tmp/wire.sock

The back-end follows the vhost-user program conventions: it does not daemonize, ends
cleanly on SIGTERM (or SIGINT), and exits non-zero if it cannot start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from devmodels import GuestMemory, HostError, UsageError

__all__ = ["main", "build_parser", "open_net_backend"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="devmodels vhost-user", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="device", required=True)
    blk = sub.add_parser("blk", help="virtio-blk over a raw image file or block device")
    blk.add_argument("--socket", required=True, help="UNIX socket path to listen on")
    blk.add_argument("--image", required=True, help="raw disk image (its size is the capacity)")
    blk.add_argument("--readonly", action="store_true", help="offer VIRTIO_BLK_F_RO; refuse writes")
    blk.add_argument("--direct", action="store_true", help="open the image with O_DIRECT")
    blk.add_argument("--queues", type=int, default=1, help="request queues (default 1)")
    blk.add_argument("--queue-size", type=int, default=256, help="maximum queue size (default 256)")
    blk.add_argument("--workers", type=int, default=4, help="I/O threads (default 4)")
    blk.add_argument("--no-inline-reads", action="store_true",
                     help="send page-cache hits to the I/O threads too (RawFileBackend rule 5)")
    blk.add_argument("--serial", default="devmodels", help="GET_ID string (at most 20 bytes)")
    blk.add_argument("--no-packed", action="store_true", help="do not offer VIRTIO_F_RING_PACKED")
    net = sub.add_parser("net", help="virtio-net over a TAP device or a UNIX socket")
    net.add_argument("--socket", required=True, help="UNIX socket path to listen on")
    net.add_argument("--backend", required=True, help="tap:NAME, or socket:PATH (seqpacket peer to connect to)")
    net.add_argument("--mac", default="52:54:00:12:34:56", help="MAC address (QEMU's virtio-net shows its own)")
    net.add_argument("--queues", type=int, default=1, help="queue pairs (default 1)")
    net.add_argument("--queue-size", type=int, default=256, help="maximum queue size (default 256)")
    net.add_argument("--no-packed", action="store_true", help="do not offer VIRTIO_F_RING_PACKED")
    for p in (blk, net):
        p.add_argument("--verbose", "-v", action="store_true", help="log the protocol at INFO level")
    return parser


def open_net_backend(spec: str) -> Any:
    """A ``NetBackend`` from ``tap:NAME`` or ``socket:PATH``.

    Raises:
        UsageError: an unknown kind.
        HostError: the TAP or socket cannot be opened.
    """
    kind, _, arg = spec.partition(":")
    if kind == "tap" and arg:
        from devmodels.backends import TapBackend

        return TapBackend(arg, vnet_hdr=True)
    if kind == "socket" and arg:
        from devmodels.backends import SocketBackend

        return SocketBackend.connect(arg)
    raise UsageError(f"backend must be tap:NAME or socket:PATH, got {spec!r}")


def _serve(server: Any) -> int:
    def stop(signum: int, frame: Any) -> None:
        server.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"devmodels vhost-user: listening on {server.path}", file=sys.stderr, flush=True)
        server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] = ()) -> int:
    """Run the back-end until SIGTERM; 1 when it cannot start, 2 for bad arguments."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    from .backend import VhostUserServer

    with contextlib.ExitStack() as stack:
        try:
            if args.device == "blk":
                from devmodels.backends import RawFileBackend

                from ..blk import VirtioBlkDevice

                backend = RawFileBackend(args.image, readonly=args.readonly, direct=args.direct, workers=args.workers,
                                         inline_reads=not args.no_inline_reads)
                stack.callback(backend.close)
                device: Any = VirtioBlkDevice(
                    GuestMemory(), backend, num_queues=args.queues, queue_size=args.queue_size,
                    serial=args.serial, packed=not args.no_packed,
                )
            else:
                from devmodels.backends.net import parse_mac

                from ..net import VirtioNetDevice

                backend = open_net_backend(args.backend)
                stack.callback(backend.close)
                device = VirtioNetDevice(
                    GuestMemory(), backend, mac=parse_mac(args.mac), queue_pairs=args.queues,
                    queue_size=args.queue_size, ctrl_vq=False, packed=not args.no_packed,
                )
            server = VhostUserServer(device, args.socket)
        except (UsageError, HostError, OSError) as exc:
            print(f"devmodels vhost-user: {exc}", file=sys.stderr)
            return 1
        stack.callback(server.close)
        return _serve(server)
    return 0
