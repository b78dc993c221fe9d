"""``devmodels vfio-user``: serve any registered device to a vfio-user VMM (QEMU 11.1's
``vfio-user-pci``, cloud-hypervisor, SPDK, libvfio-user's client).

Usage (vfio-user.rst "Backend Program Conventions")::

    devmodels vfio-user --socket-path /run/nic.sock --device e1000 --backend tap:tap0
    devmodels vfio-user --socket-path /run/disk.sock --device virtio-blk --backend file:disk.img
    devmodels vfio-user --fd 3 --device testdev

Rules:

1. With ``--socket-path`` the program listens and serves one client after the other: a
   client that goes away and comes back finds the device as it left it, its DMA windows and
   interrupt eventfds gone (``VfioUserServer`` rule 6). With ``--fd`` it serves the one
   connected socket it inherited and exits when that client goes.
2. The device is built once, from the registry (``common`` rule 1), with every interrupt
   capability of the real part: vfio-user delivers INTx, MSI and MSI-X. Virtio devices
   are served as PCI functions through our virtio-pci transport with MSI-X.
3. One ``EventLoop`` serves the client's socket and, through ``DeviceRunner``, the device's
   backends and timers.
4. ``--faults PLAN`` and ``--fault-socket PATH`` put the fault layers on the device
   (``faults``), the ``pci.*`` ones between the function and this server.
5. It does not daemonize; SIGTERM and SIGINT end it cleanly (exit 0), SIGUSR1 prints a
   stats line: ``vfio-user stats: messages=N bar_reads=N bar_writes=N ...`` with the
   server's counters (``passthrough.user.server.ServerStats``, over every client so far),
   ``rejected`` and the backends' counters, as ``devmodels mpqemu`` prints its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Sequence

from devmodels import HostError, UsageError
from devmodels.listen import listen_unix
from devmodels.runtime import DeviceRunner, EventLoop
from passthrough.user import DmaMemory, VfioUserServer

from .common import add_device_arguments, setup_logging, signals, write_stats
from .faults import from_args
from .registry import build

__all__ = ["main"]

_log = logging.getLogger("devmodels.vfio_user")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devmodels vfio-user", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket-path", help="listen on this UNIX socket path (rule 1)")
    where.add_argument("--fd", type=int, help="serve this inherited, connected UNIX socket (rule 1)")
    add_device_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; 0 after SIGTERM or the client of ``--fd`` left, 2 for bad usage,
    1 when a backend cannot be opened."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args.log_level, "vfio-user")
    memory = DmaMemory()
    try:
        built = build(args.device, memory, args.backend, args.opt, msi=True)
    except (UsageError, HostError) as exc:
        print(f"vfio-user: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    assert built.function is not None
    server = VfioUserServer(built.function, memory)
    try:
        faults = from_args(args, built)
        served = faults.start(built.function) if faults is not None else built.served
    except (UsageError, HostError) as exc:
        built.close()
        print(f"vfio-user: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    loop = EventLoop()
    runner = DeviceRunner(server.migration.gate(served), loop)  # nothing of its own while stopped
    runner.attach()
    stopping = False
    listener: socket.socket | None = None

    def stop() -> None:
        nonlocal stopping
        stopping = True
        server.shutdown()
        if listener is not None:
            listener.close()  # unblocks accept()

    def stats() -> None:
        write_stats("vfio-user", {**dataclasses.asdict(server.stats), "rejected": server.rejected,
                                  **built.counters(), **(faults.counters() if faults is not None else {})})

    try:
        with signals(stop, stats):
            if args.fd is not None:
                server.serve(socket.socket(fileno=args.fd), loop=loop, runner=runner)
                return 0
            try:
                listener = listen_unix(args.socket_path)  # the path appears once it accepts
            except HostError as exc:
                print(f"vfio-user: {exc}", file=sys.stderr)
                return 1
            print(f"vfio-user: serving {args.device} on {args.socket_path}", file=sys.stderr, flush=True)
            while not stopping:
                try:
                    sock, _ = listener.accept()
                except OSError:
                    break
                _log.info("client connected")
                server.serve(sock, loop=loop, runner=runner)
    finally:
        if listener is not None:
            listener.close()
            if args.socket_path and os.path.exists(args.socket_path):
                os.unlink(args.socket_path)
        runner.close()
        if faults is not None:
            faults.close()
        built.close()
        loop.close()
    return 0
