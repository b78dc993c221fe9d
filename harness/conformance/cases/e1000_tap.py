"""Conformance: Linux e1000 moving TCP data through devmodels' 82540EM onto a real TAP.

The device is served behind ``x-pci-proxy-dev`` with ``--backend tap:NAME``; the TAP's host
side is moved into a network namespace this process creates (address ``HOST_IP``), where
``sink_main`` runs as a subprocess: it hashes whatever arrives on ``SINK_PORT`` and serves a
fixed pseudo-random stream on ``SOURCE_PORT``. The guest (busybox ``nc``) then:

1. sends 4 MiB of ``/dev/urandom`` data with TSO and transmit checksum offload on (the
   driver's default); the device's TSCTC counter (``ethtool -S``: ``tx_tcp_seg_good``) must
   grow, i.e. the driver handed the device TCP segmentation contexts;
2. turns both off with ``ethtool -K eth0 tso off tx off`` and sends the same data again;
   TSCTC must not grow (the stack segments and checksums in software);
3. receives ``RX_BYTES`` from the source and checks their SHA-256 (and that the driver
   counted receive checksums offloaded, ``rx_csum_offload_good``).

The host compares each connection the sink saw with what the guest reported: exactly the
bytes sent, same SHA-256. busybox has no ethtool, so the host's ``ethtool`` and its
libraries are copied into the image (``apt-get install ethtool``); without it the row
fails and says so. The row runs on both PCI attachments (``_served``).

Rules:

1. Every host resource has an owner that ends it: the namespace is deleted by name, the
   sink ends by PID, the TAP disappears with the server that created it. Traffic stays
   inside the namespace (the guest's peer is the namespace's own stack).
2. The sink stops by itself after ``--lifetime`` seconds at most; each connection's data is
   hashed as it arrives, never stored.

``NetNamespace``, ``TcpSink`` and ``sink_main`` are reused by ``python -m bench e1000``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from devmodels import HostError, UsageError
from .._case import Attachment
from ._served import ATTACHMENTS, PROXY, ServedCase

if TYPE_CHECKING:
    from ...guest import ImageBuilder
    from ...qemu.launcher import BootResult

__all__ = [
    "cases",
    "guest_script",
    "source_bytes",
    "sink_main",
    "NetNamespace",
    "TcpSink",
    "HOST_IP",
    "GUEST_IP",
    "SINK_PORT",
    "SOURCE_PORT",
    "TX_BYTES",
    "RX_BYTES",
    "REQUIRED_CHECKS",
]

HOST_IP = "10.0.3.1"
GUEST_IP = "10.0.3.2"
PREFIX_LEN = 24
SINK_PORT = 5001
SOURCE_PORT = 5002
TX_BLOCKS = 64  # dd bs=64k
TX_BYTES = TX_BLOCKS * 65536
RX_BYTES = 2 << 20
RX_SEED = 0xE1000
ETHTOOL = "/usr/sbin/ethtool"

_counter = itertools.count()


def source_bytes(size: int, seed: int = RX_SEED) -> bytes:
    """The deterministic stream the source port serves (the same bytes on every host)."""
    return random.Random(seed).randbytes(size)


# -- the namespace-side endpoint ------------------------------------------------------------


def sink_main(argv: Sequence[str]) -> int:
    """TCP endpoints for a guest, run inside a namespace (rule 2).

    ``--listen HOST --sink-port P`` hashes each connection's data; ``--source-port Q
    --source-bytes N --seed S`` sends ``source_bytes(N, S)`` to each connection and closes.
    Prints one JSON object per line, flushed: ``{"event": "ready"}``, then per connection
    ``{"event": "received", "seq", "bytes", "sha256", "accept_ns", "first_ns", "eof_ns"}`` (``seq``
    counts accepted connections from 0; they may finish out of order) or
    ``{"event": "sent", "bytes", "sha256"}`` (times are ``time.monotonic_ns``).
    """
    parser = argparse.ArgumentParser(prog="e1000_tap sink")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--sink-port", type=int, default=0)
    parser.add_argument("--source-port", type=int, default=0)
    parser.add_argument("--source-bytes", type=int, default=0)
    parser.add_argument("--seed", type=int, default=RX_SEED)
    parser.add_argument("--lifetime", type=float, default=1800.0, help="exit after this many seconds")
    args = parser.parse_args(list(argv))
    selector = selectors.DefaultSelector()
    payload = source_bytes(args.source_bytes, args.seed) if args.source_port else b""
    payload_hash = hashlib.sha256(payload).hexdigest()

    def emit(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    def listen(port: int, kind: str) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((args.listen, port))
        server.listen(4)
        server.setblocking(False)
        selector.register(server, selectors.EVENT_READ, (kind, None))

    if args.sink_port:
        listen(args.sink_port, "sink-listen")
    if args.source_port:
        listen(args.source_port, "source-listen")
    emit(event="ready")
    deadline = time.monotonic() + args.lifetime
    accepted = itertools.count()
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            kind, state = key.data
            if kind.endswith("-listen"):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                if kind == "sink-listen":
                    state = {"hash": hashlib.sha256(), "bytes": 0, "accept_ns": time.monotonic_ns(), "first_ns": 0,
                             "seq": next(accepted)}
                    selector.register(conn, selectors.EVENT_READ, ("sink", state))
                else:
                    selector.register(conn, selectors.EVENT_WRITE, ("source", {"sent": 0}))
            elif kind == "sink":
                try:
                    data = sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    if not state["bytes"]:
                        state["first_ns"] = time.monotonic_ns()
                    state["bytes"] += len(data)
                    state["hash"].update(data)
                    continue
                selector.unregister(sock)
                sock.close()
                emit(event="received", seq=state["seq"], bytes=state["bytes"], sha256=state["hash"].hexdigest(),
                     accept_ns=state["accept_ns"], first_ns=state["first_ns"], eof_ns=time.monotonic_ns())
            else:
                try:
                    state["sent"] += sock.send(payload[state["sent"]:state["sent"] + (1 << 18)])
                except BlockingIOError:
                    continue
                except OSError:
                    state["sent"] = -1
                if 0 <= state["sent"] < len(payload):
                    continue
                selector.unregister(sock)
                sock.close()
                emit(event="sent", bytes=state["sent"], sha256=payload_hash)
    return 0


class NetNamespace:
    """A network namespace this process created (``ip netns add``), deleted by name on close.

    Args:
        name: the namespace's name; ``unique(tag)`` makes one nobody else uses.

    Raises:
        HostError: ``ip`` is missing or refused (needs root).
    """

    def __init__(self, name: str) -> None:
        if not name or "/" in name or any(c.isspace() for c in name):
            raise UsageError(f"bad namespace name {name!r}")
        _ip("netns", "add", name)
        self.name = name
        self._closed = False

    @classmethod
    def unique(cls, tag: str) -> NetNamespace:
        """A new namespace named ``devmodels-TAG-PID-N``."""
        return cls(f"devmodels-{tag}-{os.getpid()}-{next(_counter)}")

    def adopt(self, ifname: str, address: str, *, timeout: float = 15.0,
              alive: Callable[[], bool] | None = None) -> None:
        """Wait for interface ``ifname`` to appear here, move it into the namespace, give it
        ``address`` (``IP/LEN``) and bring it and ``lo`` up.

        Raises:
            HostError: it did not appear within ``timeout`` s (or ``alive()`` turned false,
                meaning its creator died), or ``ip`` failed.
        """
        deadline = time.monotonic() + timeout
        while not Path("/sys/class/net", ifname).exists():
            if alive is not None and not alive():
                raise HostError(f"the process that should create {ifname} exited")
            if time.monotonic() > deadline:
                raise HostError(f"interface {ifname} did not appear within {timeout:.0f} s")
            time.sleep(0.01)
        _ip("link", "set", ifname, "netns", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "addr", "add", address, "dev", ifname)
        _ip("-n", self.name, "link", "set", ifname, "up")

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Run ``argv`` inside the namespace (``ip netns exec`` execs it: the PID is argv's)."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def close(self) -> None:
        """Delete the namespace (idempotent)."""
        if not self._closed:
            self._closed = True
            subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True,
                           stdin=subprocess.DEVNULL)

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ip(*args: str) -> None:
    if shutil.which("ip") is None:
        raise HostError("ip (iproute2) not found: apt-get install iproute2")
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise HostError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


class TcpSink:
    """``sink_main`` in a subprocess inside ``namespace``; its JSON lines are collected.

    Args:
        namespace: where to run; ``None`` runs in this process's namespace (tests).
        listen: the address to bind.
        sink_port, source_port, source_size, seed: as for ``sink_main`` (0 disables a port).
        lifetime: the sink's own time limit in seconds.
    """

    def __init__(self, namespace: NetNamespace | None, listen: str = HOST_IP, *, sink_port: int = SINK_PORT,
                 source_port: int = 0, source_size: int = 0, seed: int = RX_SEED, lifetime: float = 1800.0) -> None:
        code = ("import sys; from harness.conformance.cases.e1000_tap import sink_main; "
                "sys.exit(sink_main(sys.argv[1:]))")
        self.argv = [sys.executable, "-c", code, "--listen", listen, "--sink-port", str(sink_port),
                     "--source-port", str(source_port), "--source-bytes", str(source_size), "--seed", str(seed),
                     "--lifetime", str(lifetime)]
        self.namespace = namespace
        self._proc: subprocess.Popen[bytes] | None = None
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._listening = False
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> TcpSink:
        """Start it and wait until it listens.

        Raises:
            HostError: it exited or did not become ready within ``timeout`` s.
        """
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        kwargs: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "env": env}
        if self.namespace is not None:
            self._proc = self.namespace.popen(self.argv, **kwargs)
        else:
            self._proc = subprocess.Popen(self.argv, **kwargs)
        assert self._proc.stdout is not None  # PIPE was asked for
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), name="tcp-sink", daemon=True)
        self._reader.start()
        self._ready.wait(timeout)
        if not self._listening:
            self.close()
            raise HostError(f"the TCP sink exited or did not listen within {timeout:.0f} s (exit status "
                            f"{self._proc.returncode})")
        return self

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("event") == "ready":
                self._listening = True
                self._ready.set()
                continue
            with self._lock:
                self._events.append(event)
        self._ready.set()  # it exited: wake a waiting start()

    @property
    def pid(self) -> int | None:
        """The sink's PID once started."""
        return self._proc.pid if self._proc is not None else None

    def received(self) -> list[dict[str, Any]]:
        """The sink port's finished connections, in the order they were accepted."""
        with self._lock:
            done = [e for e in self._events if e.get("event") == "received"]
        return sorted(done, key=lambda e: e["seq"])

    def sent(self) -> list[dict[str, Any]]:
        """The source port's finished connections, in order."""
        with self._lock:
            return [e for e in self._events if e.get("event") == "sent"]

    def wait_received(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """``received()`` once it holds ``count`` connections, or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received()

    def close(self) -> None:
        """End the sink by its PID (SIGTERM, then SIGKILL) and join the reader; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> TcpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the case -------------------------------------------------------------------------------


def guest_script(rx_sha256: str) -> str:
    """The guest side (see the module docstring); ``rx_sha256`` is what the source sends."""
    return rf"""
check_pci_driver e1000tap.bound 8086:100e e1000 || exit 0
if ! wait_for /sys/class/net/eth0 5; then report e1000tap.eth0 FAIL "no eth0"; exit 0; fi
ip link set eth0 up
ip addr add {GUEST_IP}/{PREFIX_LEN} dev eth0
n=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
check e1000tap.carrier test "$(cat /sys/class/net/eth0/carrier)" = 1
check e1000tap.ping ping -c 3 -W 5 {HOST_IP} || exit 0
if [ ! -x {ETHTOOL} ]; then
    report e1000tap.ethtool FAIL "ethtool is not in the image: install it on the host (apt-get install ethtool)"
    exit 0
fi
nic_stat() {{ {ETHTOOL} -S eth0 | sed -n "s/^ *$1: *//p"; }}
feature() {{ {ETHTOOL} -k eth0 | sed -n "s/^$1: *\([a-z]*\).*/\1/p"; }}
features="tso=$(feature tcp-segmentation-offload) tx-checksumming=$(feature tx-checksumming)"
if [ "$features" = "tso=on tx-checksumming=on" ]; then
    report e1000tap.offloads_default PASS "$features"
else
    report e1000tap.offloads_default FAIL "$features"
fi
dd if=/dev/urandom of=/tmp/data bs=64k count={TX_BLOCKS} 2>/dev/null
sum=$(sha256sum /tmp/data | cut -d ' ' -f 1)
send() {{  # CHECK WANT_TSO(yes|no)
    before=$(nic_stat tx_tcp_seg_good)
    nc {HOST_IP} {SINK_PORT} < /tmp/data
    rc=$?
    tso=$(( $(nic_stat tx_tcp_seg_good) - before ))
    detail="rc=$rc bytes=$(wc -c < /tmp/data) sha256=$sum tso_contexts=$tso $(feature tcp-segmentation-offload)"
    verdict=FAIL
    if [ $rc -eq 0 ]; then
        if [ "$2" = yes ] && [ $tso -gt 0 ]; then verdict=PASS; fi
        if [ "$2" = no ] && [ $tso -eq 0 ]; then verdict=PASS; fi
    fi
    report "$1" $verdict "$detail"
}}
send e1000tap.tx_offload_on yes
{ETHTOOL} -K eth0 tso off tx off >/dev/null 2>&1
features="tso=$(feature tcp-segmentation-offload) tx-checksumming=$(feature tx-checksumming)"
if [ "$features" = "tso=off tx-checksumming=off" ]; then
    report e1000tap.offloads_off PASS "$features"
else
    report e1000tap.offloads_off FAIL "$features"
fi
send e1000tap.tx_offload_off no
before=$(nic_stat rx_csum_offload_good)
got=$(nc {HOST_IP} {SOURCE_PORT} < /dev/null | sha256sum | cut -d ' ' -f 1)
csum=$(( $(nic_stat rx_csum_offload_good) - before ))
if [ "$got" = {rx_sha256} ] && [ $csum -gt 0 ]; then
    report e1000tap.rx PASS "sha256=$got rx_csum_offload_good=$csum"
else
    report e1000tap.rx FAIL "sha256=$got want {rx_sha256} rx_csum_offload_good=$csum"
fi
"""


REQUIRED_CHECKS = frozenset({
    "e1000tap.bound", "e1000tap.carrier", "e1000tap.ping", "e1000tap.offloads_default", "e1000tap.tx_offload_on",
    "e1000tap.offloads_off", "e1000tap.tx_offload_off", "e1000tap.rx", "host.tx_offload_on", "host.tx_offload_off",
    "host.rx_source",
})


class E1000TapCase(ServedCase):
    """The e1000 row over a TAP in a namespace, with TCP both ways (module docstring)."""

    def __init__(self, attachment: str = PROXY) -> None:
        self._rx_sha256 = hashlib.sha256(source_bytes(RX_BYTES)).hexdigest()
        super().__init__("e1000", "e1000 82540EM 8086:100e (TAP)", "e1000", guest_script(self._rx_sha256),
                         attachment=attachment, name="e1000-tap", required_checks=REQUIRED_CHECKS,
                         irq=("eth0", "IO-APIC"))
        self.sink: TcpSink | None = None
        self.namespace: NetNamespace | None = None
        self.tap = ""

    def image_extras(self, builder: ImageBuilder) -> None:
        """The host's ethtool and its libraries, when the host has it."""
        if Path(ETHTOOL).is_file():
            builder.add_binary_with_libs(Path(ETHTOOL), ETHTOOL)

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """The server creates the TAP by name."""
        return ["--backend", f"tap:{self.tap}"], []

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """Namespace first (deleted last), then the server and its TAP, then the sink (rule 1)."""
        self.namespace = NetNamespace.unique("e1000tap")
        stack.callback(self.namespace.close)
        self.tap = f"dme1k{os.getpid() % 100000}x{next(_counter)}"[:15]
        attachment = super().start(stack, workdir)
        log = self.server_log

        def server_alive() -> bool:
            return self._server is not None and self._server.poll() is None

        try:
            self.namespace.adopt(self.tap, f"{HOST_IP}/{PREFIX_LEN}", alive=server_alive)
        except HostError as exc:
            text = log.read_text(errors="replace")[-500:] if log is not None and log.exists() else ""
            raise HostError(f"{exc}; server log: {text}") from exc
        self.sink = TcpSink(self.namespace, HOST_IP, sink_port=SINK_PORT, source_port=SOURCE_PORT,
                            source_size=RX_BYTES)
        stack.enter_context(self.sink)
        return attachment

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """Each connection the sink saw carried exactly what the guest sent."""
        server = super().host_checks(result)
        if self.sink is None:
            return server | {"host.sink": (False, "the sink never started")}
        received = self.sink.wait_received(2, 5.0)
        out = dict(server)
        for index, check in enumerate(("e1000tap.tx_offload_on", "e1000tap.tx_offload_off")):
            guest = _detail_fields(result.checks.get(check, (False, ""))[1])
            name = "host." + check.split(".", 1)[1]
            if index >= len(received):
                out[name] = (False, f"the sink saw {len(received)} connection(s)")
                continue
            got = received[index]
            ok = got["bytes"] == TX_BYTES and got["sha256"] == guest.get("sha256")
            out[name] = (ok, f"sink: {got['bytes']} bytes sha256={got['sha256']}; guest sent {TX_BYTES} "
                             f"sha256={guest.get('sha256')}")
        sent = self.sink.sent()
        out["host.rx_source"] = (
            len(sent) == 1 and sent[0]["bytes"] == RX_BYTES and sent[0]["sha256"] == self._rx_sha256,
            f"source connections: {[(s['bytes'], s['sha256'][:12]) for s in sent]}",
        )
        return out


def _detail_fields(detail: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", detail))


def cases() -> list[ServedCase]:
    """The e1000-over-TAP rows, one per attachment."""
    return [E1000TapCase(attachment) for attachment in ATTACHMENTS]
