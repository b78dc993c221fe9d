"""``python -m bench vfio-user``: what one vfio-user message costs our server, without a guest.

A raw client in this process (the wire format of ``passthrough.user.framing``, no client
library on the path) connects to a real ``devmodels vfio-user --device testdev`` process
(``bench.vfio_user.serve``), negotiates VERSION and then sends, ``--count`` times each:

- ``read``: ``VFIO_USER_REGION_READ`` of testdev's ID register (BAR0 +0, 4 bytes), one at a
  time, each waiting for its reply (what a vCPU waits on a guest MMIO read);
- ``posted``: ``VFIO_USER_REGION_WRITE`` of its SCRATCH register with ``NO_REPLY`` (how QEMU
  11.1 posts a guest MMIO write), ``--window`` in flight, then one read to drain them.

Per kind: the server's CPU per message from /proc across the whole batch, split into user
time (the Python that handles the message: framing, dispatch, the device's register) and
system time (the kernel in its syscalls: receive, reply, epoll), the messages its stats
line says it handled, and for reads the median round trip the client saw. The figures are
for comparing the server's own code paths (pure Python against the compiled ones with
``--pure``, before and after a change) on the same machine in the same minutes. ``--profile FILE``
runs the server under cProfile.

Output: a table, or with ``--json`` one object with ``read`` and ``posted`` (``count``,
``server_cpu_us_per_message`` = ``user_us_per_message`` + ``system_us_per_message``,
``messages``; ``round_trip_us`` median for reads), ``implementations`` (which compiled
paths the server process loaded) and ``framing_us``: per framing implementation
(``python``, ``cython`` when built) the best per-message ``recv_us`` and ``send_us`` in this
process, a REGION_READ and its reply over a socketpair (syscalls included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import python_env, run_main, workdir
from .vfio_user import serve

__all__ = ["main", "measure"]

_HEADER = struct.Struct("<HHIII")  # msg_id, command, msg_size, flags, error_no (vfio-user.rst "Header")
_ACCESS = struct.Struct("<QII")  # offset, region, count
_VERSION, _REGION_READ, _REGION_WRITE = 1, 9, 10
_NO_REPLY = 0x10
_ID, _SCRATCH = 0x00, 0x04


class _Raw:
    """A minimal blocking vfio-user client on one socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.next_id = 0

    def send(self, command: int, payload: bytes, flags: int = 0) -> None:
        self.next_id = (self.next_id + 1) & 0xFFFF
        self.sock.sendall(_HEADER.pack(self.next_id, command, 16 + len(payload), flags, 0) + payload)

    def recv(self) -> tuple[int, bytes]:
        head = self._exact(16)
        _, _, size, flags, error = _HEADER.unpack(head)
        payload = self._exact(size - 16)
        if flags & 0x20:
            raise SystemExit(f"bench vfio-user: the server refused a message (errno {error})")
        return flags, payload

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise SystemExit("bench vfio-user: the server closed the connection")
            out += chunk
        return out


def cpu_split(pid: int) -> tuple[int, int]:
    """User and system CPU time of process ``pid`` in ns (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


def _stats(pid: int, log: Path, seen: int) -> tuple[dict[str, int], int]:
    """Signal the server and wait for its next stats line (the ``seen``-th one)."""
    from .common import parse_mpqemu_stats

    os.kill(pid, 10)  # SIGUSR1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = parse_mpqemu_stats(log.read_text(errors="replace"), "vfio-user")
        if len(lines) > seen:
            return lines[seen], seen + 1
        time.sleep(0.01)
    raise SystemExit("bench vfio-user: no stats line from the server")


def measure(count: int, window: int, work: Path, profile: Path | None = None,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run both batches against a fresh server; the figures of the module docstring."""
    with contextlib.ExitStack() as stack:
        served = serve(stack, work, "cost", "testdev", profile=profile, env=env)
        client = _Raw(served.socket)
        stack.callback(client.sock.close)
        version = json.dumps({"capabilities": {"max_msg_fds": 8}}).encode() + b"\0"
        client.send(_VERSION, struct.pack("<HH", 0, 2) + version)
        client.recv()
        seen = 0
        out: dict[str, Any] = {}
        for kind in ("read", "posted"):
            before, seen = _stats(served.process.pid, served.log, seen)
            user0, sys0 = cpu_split(served.process.pid)
            rtt = []
            if kind == "read":
                request = _ACCESS.pack(_ID, 0, 4)
                for _ in range(count):
                    t0 = time.perf_counter_ns()
                    client.send(_REGION_READ, request)
                    client.recv()
                    rtt.append(time.perf_counter_ns() - t0)
            else:
                request = _ACCESS.pack(_SCRATCH, 0, 4) + struct.pack("<I", 0x5A5A5A5A)
                for i in range(count):
                    client.send(_REGION_WRITE, request, _NO_REPLY)
                    if i % window == window - 1 or i == count - 1:  # the last read drains the rest
                        client.send(_REGION_READ, _ACCESS.pack(_ID, 0, 4))
                        client.recv()
            user1, sys1 = cpu_split(served.process.pid)
            after, seen = _stats(served.process.pid, served.log, seen)
            messages = after["messages"] - before["messages"]
            user, system = (user1 - user0) / 1e3 / messages, (sys1 - sys0) / 1e3 / messages
            out[kind] = {"count": count, "messages": messages, "server_cpu_us_per_message": user + system,
                         "user_us_per_message": user, "system_us_per_message": system}
            if rtt:
                out[kind]["round_trip_us"] = statistics.median(rtt) / 1e3
        probe = subprocess.run([sys.executable, "-c", "import json, devmodels._accel as a; "
                                "print(json.dumps(a.implementations()))"], capture_output=True, text=True,
                               env={**python_env(), **(env or {})}, check=False)
        out["implementations"] = json.loads(probe.stdout) if probe.returncode == 0 else {}
        return out


def framing_cost(repeats: int = 30, batch: int = 100) -> dict[str, dict[str, float]]:
    """Microseconds per message in this process for each framing implementation
    (``passthrough.user.framing.IMPLEMENTATIONS``): ``recv`` of a REGION_READ-sized message
    already waiting on a socketpair, and ``send`` of its 16-byte reply; the best of
    ``repeats`` batches (the least disturbed by other load)."""
    from passthrough.user import framing

    wire = b"".join(_HEADER.pack(i, _REGION_READ, 32, 0, 0) + _ACCESS.pack(_ID, 0, 4) for i in range(batch))
    out: dict[str, dict[str, float]] = {}
    for name, module in sorted(framing.IMPLEMENTATIONS.items()):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader = module.MessageSocket(b, max_payload=1 << 20, max_fds=16)
        writer = module.MessageSocket(a, max_payload=1 << 20, max_fds=16)
        best_recv = best_send = float("inf")
        try:
            for _ in range(repeats):
                a.sendall(wire)
                t0 = time.perf_counter_ns()
                for _ in range(batch):
                    reader.recv()
                best_recv = min(best_recv, (time.perf_counter_ns() - t0) / batch / 1e3)
                t0 = time.perf_counter_ns()
                for i in range(batch):
                    writer.send(i, _REGION_READ, b"\0" * 16, flags=1)
                best_send = min(best_send, (time.perf_counter_ns() - t0) / batch / 1e3)
                b.recv(1 << 20)
        finally:
            reader.close()
            writer.close()
        out[name] = {"recv_us": best_recv, "send_us": best_send}
    return out


def main(argv: Sequence[str] = ()) -> int:
    """Run the measurement; print a table or JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench vfio-user", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--count", type=int, default=20000, help="messages per kind (default 20000)")
    parser.add_argument("--window", type=int, default=32, help="posted writes in flight before a read (default 32)")
    parser.add_argument("--pure", action="store_true", help="run the server with DEVMODELS_NO_EXTENSIONS=1")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of the server here")
    args = parser.parse_args(list(argv))
    if args.count <= 0 or args.window <= 0:
        parser.error("--count and --window must be positive")

    def body() -> tuple[dict[str, Any], list[str]]:
        env = {"DEVMODELS_NO_EXTENSIONS": "1"} if args.pure else None
        with workdir(None, "devmodels-bench-vfio-user-") as work:
            result = measure(args.count, args.window, work, args.profile, env)
        result["framing_us"] = framing_cost()
        lines = [f"server implementations: {result['implementations']}"]
        for name, row in result["framing_us"].items():
            lines.append(f"framing ({name}, in process, best of 30 x 100): recv {row['recv_us']:.2f} us/message, "
                         f"send {row['send_us']:.2f} us/message")
        for kind in ("read", "posted"):
            row = result[kind]
            rtt = f", round trip {row['round_trip_us']:.1f} us (median)" if "round_trip_us" in row else ""
            lines.append(f"{kind:<7} {row['messages']} messages: server CPU {row['server_cpu_us_per_message']:.1f} "
                         f"us/message (user {row['user_us_per_message']:.1f}, system "
                         f"{row['system_us_per_message']:.1f}){rtt}")
        return result, lines

    return run_main("vfio-user", args.json, body)
