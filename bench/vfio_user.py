"""Our devices over vfio-user in a bench: ``devmodels vfio-user`` started as a user runs it,
QEMU 11.1's ``vfio-user-pci`` pointed at it, and the counters the benches sample.

Rules:

1. ``serve`` starts ``python -m devmodels vfio-user --socket-path SOCK --device NAME
   [--backend ...] [--opt ...]`` in its own process (optionally under cProfile), waits
   until it listens and registers its end (SIGTERM by PID, after QEMU is gone) with the
   caller's ``ExitStack``. A server that exits before it listens stops the bench with its
   log's end.
2. ``Served.device_args(addr)`` is the ``-device`` JSON for QEMU 11.1 at a fixed PCI
   address, so a guest finds our device by its function (``0000:00:ADDR``).
3. ``Served.sampler(side)`` samples the server's ``vfio-user stats:`` line (SIGUSR1, its
   messages and BAR accesses, ``bench.common.MpqemuStats``) and its CPU time;
   ``qemu_cpu(pid, sides)`` samples the QEMU process's CPU time (all its threads: vCPU,
   I/O, the vfio-user client) as ``qemu_cpu_ns`` for every side it runs.
4. ``exits(log)`` breaks a traced server's log (``env=TRACE_EXITS``) down into what each
   message was: ``(kind, region, offset)`` for region accesses (kind ``read``, ``write``
   or ``posted``), ``("command", NAME)`` for the other commands; between two of its stats
   lines (``since``/``until``: their indexes) when asked, i.e. within one run.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import Attachment, BenchFailure, MpqemuStats, ProcessCpu, end_process, python_env

__all__ = ["VFIO_USER", "Served", "serve", "qemu_cpu", "exits", "QEMU_CPU", "SERVER_CPU", "TRACE_EXITS"]

VFIO_USER = Attachment("vfio-user", ("11.1",), "QEMU 11.1's vfio-user-pci to devmodels vfio-user, real interrupts")
QEMU_CPU = "qemu_cpu_ns"
"""The counter ``qemu_cpu`` samples: CPU time of the whole QEMU process."""
SERVER_CPU = "cpu_ns"
"""Our server's CPU time, as ``MpqemuStats`` samples it."""
_LISTEN_TIMEOUT = 60.0
TRACE_EXITS = {"DEVMODELS_TRACE": "vfio_user.access,vfio_user.command"}
"""``serve(..., env=TRACE_EXITS)``: the server logs every message and region access (rule 4)."""
_ACCESS = re.compile(r"trace vfio_user\.access region=(\w+) offset=(\w+) count=(\w+) kind='?(\w+)")
_COMMAND = re.compile(r"trace vfio_user\.command command='?([\w-]+)")


@dataclass
class Served:
    """One ``devmodels vfio-user`` process: its socket, log and process."""

    name: str
    socket: Path
    log: Path
    process: subprocess.Popen[bytes]

    def device_args(self, addr: str | None = None) -> list[str]:
        """``-device`` for QEMU 11.1's client (rule 2); ``addr`` like ``"04.0"``."""
        device: dict[str, object] = {"driver": "vfio-user-pci", "id": self.name,
                                     "socket": {"path": str(self.socket), "type": "unix"}}
        if addr is not None:
            device["addr"] = addr
        return ["-device", json.dumps(device, separators=(",", ":"))]

    def alive(self) -> bool:
        """Whether the server still runs."""
        return self.process.poll() is None

    def sampler(self, side: str) -> MpqemuStats:
        """Its counters and CPU time on ``side`` (rule 3)."""
        return MpqemuStats(self.process.pid, self.log, side=side, prefix="vfio-user")


def serve(stack: contextlib.ExitStack, work: Path, name: str, device: str, backends: Sequence[str] = (),
          opts: Sequence[str] = (), *, profile: Path | None = None, pass_fds: Sequence[int] = (),
          env: Mapping[str, str] | None = None) -> Served:
    """Start our server for ``device`` (rule 1), with ``env`` added to its environment; it is
    ended when ``stack`` closes.

    Raises:
        BenchFailure: the server exited or did not listen within a minute.
    """
    sock, log = work / f"{name}.sock", work / f"server-{name}.log"
    if sock.exists():
        sock.unlink()
    argv = ["-m", "devmodels", "vfio-user", "--socket-path", str(sock), "--device", device]
    for spec in backends:
        argv += ["--backend", spec]
    for opt in opts:
        argv += ["--opt", opt]
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *prefix, *argv], pass_fds=list(pass_fds), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env={**python_env(), **(env or {})})
    stack.callback(end_process, proc, 30.0)
    deadline = time.monotonic() + _LISTEN_TIMEOUT
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with status {proc.returncode}" if proc.returncode is not None else "did not listen"
            tail = log.read_text(errors="replace")[-500:]
            raise BenchFailure(f"devmodels vfio-user --device {device} {why}", side=name, detail=tail)
        time.sleep(0.05)
    return Served(name, sock, log, proc)


def exits(log: str, since: int | None = None, until: int | None = None) -> collections.Counter[tuple[object, ...]]:
    """What the messages of a traced server's log were (rule 4), optionally only between
    its ``since``-th and ``until``-th stats lines."""
    lines = log.splitlines()
    marks = [i for i, line in enumerate(lines) if "vfio-user stats:" in line]
    start = marks[since] if since is not None else 0
    stop = marks[until] if until is not None else len(lines)
    out: collections.Counter[tuple[object, ...]] = collections.Counter()
    for line in lines[start:stop]:
        access = _ACCESS.search(line)
        if access is not None:
            out[(access[4], int(access[1], 0), int(access[2], 0))] += 1  # the trace prints ints in hex
            continue
        command = _COMMAND.search(line)
        if command is not None and command[1] not in ("REGION_READ", "REGION_WRITE"):
            out[("command", command[1])] += 1
    return out


def qemu_cpu(pid: int | None, sides: Sequence[str]) -> ProcessCpu:
    """The QEMU process's CPU time as ``qemu_cpu_ns`` on each of ``sides`` (rule 3)."""
    return ProcessCpu({side: pid for side in sides} if pid is not None else {}, key=QEMU_CPU)
