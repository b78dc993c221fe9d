from __future__ import annotations

import select
import socket
import threading

import pytest

from devmodels import HostError, UsageError
from devmodels.backends.net import SocketBackend


def wait_readable(backend: SocketBackend) -> None:
    fd = backend.fileno()
    assert fd is not None
    assert select.select([fd], [], [], 30)[0], "hang guard"


@pytest.mark.parametrize("kind", ["seqpacket", "dgram"])
def test_pair_round_trip(kind):
    a, b = SocketBackend.pair(kind)
    try:
        frames = [bytes([i]) * (60 + i) for i in range(10)]
        for frame in frames:
            assert a.send(frame)
        wait_readable(b)
        assert b.receive() == frames
        assert b.send(memoryview(b"back" * 20))
        wait_readable(a)
        assert a.receive(1) == [b"back" * 20]
        assert b.receive() == []
        assert not a.offloads.any
    finally:
        a.close()
        b.close()


def test_receive_limit_and_order():
    a, b = SocketBackend.pair()
    for i in range(5):
        a.send(bytes([i]) * 64)
    wait_readable(b)
    assert b.receive(2) == [bytes([0]) * 64, bytes([1]) * 64]
    assert b.receive(10) == [bytes([i]) * 64 for i in (2, 3, 4)]


def test_backpressure_returns_false_and_loses_nothing():
    a, b = SocketBackend.pair()
    a._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    frame = b"\xab" * 1500
    sent = 0
    while a.send(frame):
        sent += 1
        assert sent < 100_000
    assert sent > 0 and a.dropped == 0
    received = []
    while True:
        got = b.receive(1000)
        if not got:
            break
        received += got
    assert received == [frame] * sent
    assert a.send(frame)  # room again


def test_oversized_datagrams_are_dropped_not_cut():
    a, b = SocketBackend.pair(max_frame=128)
    a.send(b"x" * 200)
    a.send(b"y" * 100)
    wait_readable(b)
    assert b.receive() == [b"y" * 100]
    assert b.dropped == 1


def test_peer_hangup():
    a, b = SocketBackend.pair()
    a.send(b"last words")
    a.close()
    wait_readable(b)
    assert b.receive() == [b"last words"]
    assert b.receive() == []
    assert b.peer_closed
    assert b.send(b"into the void")  # lost, not an exception
    assert b.dropped == 1


def test_connect_and_listen_seqpacket(tmp_path):
    path = str(tmp_path / "net.sock")
    server: list[SocketBackend] = []
    ready = threading.Event()

    def accept() -> None:
        server.append(SocketBackend.listen(path, timeout=30))
        ready.set()

    # bind happens inside listen(); connect must wait for it.
    thread = threading.Thread(target=accept)
    thread.start()
    client = None
    for _ in range(3000):
        try:
            client = SocketBackend.connect(path)
            break
        except HostError:
            threading.Event().wait(0.01)
    thread.join()
    assert client is not None and ready.is_set()
    (srv,) = server
    client.send(b"hello server")
    wait_readable(srv)
    assert srv.receive() == [b"hello server"]
    srv.send(b"hello client")
    wait_readable(client)
    assert client.receive() == [b"hello client"]
    client.close()
    srv.close()


def test_listen_timeout(tmp_path):
    with pytest.raises(HostError, match="no peer"):
        SocketBackend.listen(str(tmp_path / "lonely.sock"), timeout=0)


def test_connect_failure(tmp_path):
    with pytest.raises(HostError, match="cannot connect"):
        SocketBackend.connect(str(tmp_path / "nobody.sock"))


def test_dgram_bind_learns_its_peer(tmp_path):
    path = str(tmp_path / "dgram.sock")
    server = SocketBackend.listen(path, "dgram")
    assert server.send(b"nobody to send to yet") and server.dropped == 1
    client = SocketBackend.connect(path, "dgram")
    client.send(b"hi")
    wait_readable(server)
    assert server.receive() == [b"hi"]
    assert server.send(b"hi back")
    wait_readable(client)
    assert client.receive() == [b"hi back"]
    client.close()
    server.close()
    assert not (tmp_path / "dgram.sock").exists()  # the bound path is removed


def test_misuse():
    with pytest.raises(UsageError):
        SocketBackend(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with pytest.raises(UsageError):
        SocketBackend.pair("stream")  # type: ignore[arg-type]
    a, b = SocketBackend.pair()
    with pytest.raises(UsageError):
        a.set_vnet_hdr(True)
    a.set_vnet_hdr(False)
    a.set_notify(lambda: None)
    a.close()
    a.close()
    assert a.fileno() is None
    with pytest.raises(UsageError):
        a.send(b"x")
    with pytest.raises(UsageError):
        a.receive()
    b.close()
