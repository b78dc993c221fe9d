"""devmodels.listen: the path of a listening socket appears only once it accepts."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from devmodels import HostError
from devmodels.listen import listen_unix


def test_whoever_sees_the_path_can_connect(tmp_path: Path) -> None:
    """A watcher connects the moment the path exists; with bind-then-listen on the path it
    could meet ECONNREFUSED in between (CI saw it)."""
    refused: list[OSError] = []
    for attempt in range(200):
        path = tmp_path / f"s{attempt}.sock"
        seen = threading.Event()

        def watch(path: Path = path, seen: threading.Event = seen) -> None:
            while not path.exists():
                pass
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                try:
                    peer.connect(str(path))
                except OSError as exc:
                    refused.append(exc)
            seen.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        listener = listen_unix(path)
        seen.wait(10)
        watcher.join(10)
        listener.close()
    assert refused == []


def test_a_stale_socket_is_replaced_and_no_temporary_name_is_left(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    with listen_unix(path, backlog=2) as listener, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.connect(str(path))
        accepted, _ = listener.accept()
        accepted.close()
    assert sorted(os.listdir(tmp_path)) == ["s.sock"]


def test_a_file_in_the_way_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "precious"
    path.write_text("data")
    with pytest.raises(HostError, match="not a socket"):
        listen_unix(path)
    assert path.read_text() == "data"


def test_a_path_too_long_for_the_temporary_name_binds_in_place(tmp_path: Path) -> None:
    room = 107 - len(os.fsencode(str(tmp_path))) - 1
    if room < 8:
        pytest.skip("the temporary folder's path is too long to make a near-limit name in it")
    path = tmp_path / ("x" * room)  # exactly at the sun_path limit
    with listen_unix(path) as listener, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.connect(str(path))
        assert listener.accept()[0].close() is None


def test_an_unusable_folder_is_a_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="cannot listen"):
        listen_unix(tmp_path / "missing" / "s.sock")
