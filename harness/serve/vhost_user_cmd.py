"""``devmodels vhost-user``: serve a virtio device of the registry to a vhost-user front-end.

Usage::

    devmodels vhost-user --socket /tmp/vu.sock --device virtio-blk --backend file:disk.img
    devmodels vhost-user --socket /tmp/vu.sock --device virtio-net --backend tap:tap0
    devmodels vhost-user --socket /tmp/vu.sock --device virtio-net --backend socket:/tmp/wire.sock

Rules:

1. The device comes from the registry (``common`` rule 1) without a transport of ours: the
   front-end (QEMU's ``vhost-user-blk-pci``, ``virtio-net-pci`` on ``-netdev vhost-user``)
   is the transport, and for virtio-net it keeps the control queue (``ctrl-vq`` is off).
   Only virtio devices can be served this way.
2. ``--faults``/``--fault-socket`` (``faults``): the disk and frame faults; the front-end
   owns the PCI function and the virtio-net configuration, so ``pci.*`` faults are refused
   and a link-down loses frames without telling the driver.
3. The back-end follows the vhost-user program conventions: it does not daemonize, ends
   cleanly on SIGTERM (or SIGINT), and exits non-zero if it cannot start. Front-ends come
   and go; the device stays (``VhostUserServer`` rule 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from devmodels import GuestMemory, HostError, UsageError

from .common import add_device_arguments, setup_logging, signals, write_stats
from .faults import from_args
from .registry import DEVICES, build

__all__ = ["main", "VIRTIO_DEVICES"]

VIRTIO_DEVICES = [name for name in DEVICES if name.startswith("virtio-")]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devmodels vhost-user", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="UNIX socket path to listen on")
    add_device_arguments(parser, choices=VIRTIO_DEVICES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the back-end until SIGTERM; 1 when it cannot start, 2 for bad arguments."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args.log_level, "vhost-user")
    from virtio.vhost_user import ServedGlue, VhostUserServer

    try:
        built = build(args.device, GuestMemory(), args.backend, args.opt, pci=False)
    except (UsageError, HostError) as exc:
        print(f"devmodels vhost-user: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    try:
        faults = from_args(args, built)  # no PCI function here: the disk and net faults only
        glue = ServedGlue(faults.start(timer_thread=True)) if faults is not None else None
    except (UsageError, HostError) as exc:
        built.close()
        print(f"devmodels vhost-user: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    try:
        server = VhostUserServer(built.virtio, args.socket, glue=glue)
    except (UsageError, HostError, OSError) as exc:
        if faults is not None:
            faults.close()
        built.close()
        print(f"devmodels vhost-user: {exc}", file=sys.stderr)
        return 1

    def stats() -> None:
        write_stats("vhost-user", {"sessions": server.sessions, **built.counters(),
                                   **(faults.counters() if faults is not None else {})})

    try:
        with signals(server.stop, stats):
            print(f"devmodels vhost-user: listening on {server.path}", file=sys.stderr, flush=True)
            server.serve()
    finally:
        server.close()
        if faults is not None:
            faults.close()
        built.close()
    logging.getLogger("devmodels.vhost_user").info("served %d front-end session(s)", server.sessions)
    return 0
