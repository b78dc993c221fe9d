"""The host side of the ``e1000-tap`` row: the namespace sink, the namespace helper and the
host checks. (The row itself boots in ``test_matrix.py``.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devmodels import HostError, UsageError
from devmodels.backends.net import TapBackend
from harness.conformance.cases import e1000_tap as t
from harness.qemu.launcher import BootResult
from tests.prerequisites import prerequisite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sink() -> Iterator[t.TcpSink]:
    with t.TcpSink(None, "127.0.0.1", sink_port=_free_port(), source_port=_free_port(), source_size=300_000,
                   seed=7, lifetime=120) as s:
        yield s


def _port(s: t.TcpSink, flag: str) -> int:
    return int(s.argv[s.argv.index(flag) + 1])


def test_source_bytes_is_deterministic() -> None:
    assert t.source_bytes(1000, 1) == t.source_bytes(1000, 1)
    assert t.source_bytes(1000, 1) != t.source_bytes(1000, 2)
    assert len(t.source_bytes(12345)) == 12345


def test_sink_counts_and_hashes_each_connection(sink: t.TcpSink) -> None:
    blobs = [os.urandom(200_000), b"", b"x" * 70_000]
    for blob in blobs:
        with socket.create_connection(("127.0.0.1", _port(sink, "--sink-port")), timeout=10) as c:
            c.sendall(blob)
    got = sink.wait_received(3, 20.0)
    assert [(g["bytes"], g["sha256"]) for g in got] == [(len(b), hashlib.sha256(b).hexdigest()) for b in blobs]
    assert got[0]["first_ns"] >= got[0]["accept_ns"] and got[0]["eof_ns"] >= got[0]["first_ns"]


def test_source_sends_the_seeded_stream(sink: t.TcpSink) -> None:
    data = bytearray()
    with socket.create_connection(("127.0.0.1", _port(sink, "--source-port")), timeout=10) as c:
        while chunk := c.recv(65536):
            data += chunk
    assert bytes(data) == t.source_bytes(300_000, 7)
    deadline = time.monotonic() + 10
    while not sink.sent() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.sent()[0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_sink_ends_by_pid_on_close() -> None:
    s = t.TcpSink(None, "127.0.0.1", sink_port=_free_port(), lifetime=120).start()
    pid = s.pid
    assert pid is not None
    s.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_sink_that_cannot_listen_reports_it() -> None:
    with pytest.raises(HostError):
        t.TcpSink(None, "192.0.2.1", sink_port=_free_port(), lifetime=5).start(timeout=20)


def test_guest_script_carries_the_expected_hash() -> None:
    script = t.guest_script("ab" * 32)
    assert "ab" * 32 in script and f"nc {t.HOST_IP} {t.SINK_PORT}" in script
    assert "tso off tx off" in script


class _FakeSink:
    def __init__(self, received: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
        self._received, self._sent = received, sent

    def wait_received(self, count: int, timeout: float) -> list[dict[str, Any]]:
        return self._received

    def sent(self) -> list[dict[str, Any]]:
        return self._sent


def _result(sha: str) -> BootResult:
    detail = f"rc=0 bytes={t.TX_BYTES} sha256={sha} tso_contexts=3 on"
    checks = {"e1000tap.tx_offload_on": (True, detail), "e1000tap.tx_offload_off": (True, detail)}
    return BootResult(log="", exit_code=0, elapsed=1.0, checks=checks, done=True)


def test_host_checks_compare_every_connection_with_the_guest() -> None:
    case = t.E1000TapCase()
    rx = hashlib.sha256(t.source_bytes(t.RX_BYTES)).hexdigest()
    good = {"bytes": t.TX_BYTES, "sha256": "c" * 64}
    case.sink = _FakeSink([good, good], [{"bytes": t.RX_BYTES, "sha256": rx}])  # type: ignore[assignment]
    checks = case.host_checks(_result("c" * 64))
    assert checks.pop("host.server") == (False, "never started")  # no server in this unit test
    assert all(ok for ok, _ in checks.values())
    short = {"bytes": t.TX_BYTES - 1, "sha256": "c" * 64}
    case.sink = _FakeSink([good, short], [])  # type: ignore[assignment]
    checks = case.host_checks(_result("c" * 64))
    assert checks["host.tx_offload_on"][0] and not checks["host.tx_offload_off"][0]
    assert not checks["host.rx_source"][0]
    case.sink = _FakeSink([good], [])  # type: ignore[assignment]
    assert not case.host_checks(_result("d" * 64))["host.tx_offload_on"][0]


def test_namespace_name_is_checked() -> None:
    with pytest.raises(UsageError):
        t.NetNamespace("bad name")


@prerequisite("needs root and iproute2" if os.geteuid() != 0 or shutil.which("ip") is None else None)
def test_namespace_adopts_an_interface_and_is_deleted() -> None:
    ns = t.NetNamespace.unique("test")
    dummy = f"dmt{os.getpid() % 100000}"
    tap = TapBackend(dummy)  # gone when closed, wherever it is
    try:
        ns.adopt(dummy, "10.0.99.1/24")
        assert not os.path.exists(f"/sys/class/net/{dummy}")
        shown = subprocess.run(["ip", "-n", ns.name, "addr", "show", dummy], capture_output=True, text=True,
                               check=True).stdout
        assert "10.0.99.1/24" in shown
        with pytest.raises(HostError):
            ns.adopt("dmt-absent", "10.0.98.1/24", timeout=0.2)
    finally:
        tap.close()
        ns.close()
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
