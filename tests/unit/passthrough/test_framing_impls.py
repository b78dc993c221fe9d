"""The compiled framing (``_framing_c``) against the pure-Python reference (``_framing_py``):
every ``test_framing`` case runs on each implementation available, and the same random
streams of messages (sizes, descriptors, messages split across sends, framing errors)
decode to the same results on both (the differential test)."""

from __future__ import annotations

import array
import os
import random
import socket
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from passthrough.errors import VfioUserDisconnectedError
from passthrough.layouts import vfio_user_header
from passthrough.user import framing

from . import test_framing as cases

IMPLS = sorted(framing.IMPLEMENTATIONS)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = framing.IMPLEMENTATIONS[request.param]
    monkeypatch.setattr(cases, "MessageSocket", module.MessageSocket)
    monkeypatch.setattr(cases, "VfioUserFramingError", module.VfioUserFramingError)
    return module


@pytest.fixture
def pair(impl: ModuleType) -> Iterator[tuple[Any, Any]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    b.settimeout(5)
    left = impl.MessageSocket(a, max_payload=1 << 16, max_fds=4)
    right = impl.MessageSocket(b, max_payload=1 << 16, max_fds=4)
    yield left, right
    left.close()
    right.close()


def test_the_selector_names_what_it_chose() -> None:
    assert framing.MessageSocket is framing.IMPLEMENTATIONS[framing.IMPLEMENTATION].MessageSocket
    if os.environ.get("DEVMODELS_NO_EXTENSIONS"):
        assert framing.IMPLEMENTATION == "python"


@pytest.mark.parametrize("name", [n for n in dir(cases) if n.startswith("test_")])
def test_every_framing_case_on_each_implementation(name: str, pair: tuple[Any, Any], request: pytest.FixtureRequest
                                                    ) -> None:
    case = getattr(cases, name)
    marks = getattr(case, "pytestmark", [])
    params = next((m for m in marks if m.name == "parametrize"), None)
    if params is None:
        case(pair)
        return
    for values in params.args[1]:  # the same parameters the base test runs with
        left, right = pair
        fresh = _fresh_pair(type(left))
        try:
            case(fresh, *values)
        finally:
            for end in fresh:
                end.close()


def _fresh_pair(kind: type) -> tuple[Any, Any]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    b.settimeout(5)
    return kind(a, max_payload=1 << 16, max_fds=4), kind(b, max_payload=1 << 16, max_fds=4)


def _stream(seed: int) -> list[tuple[bytes, int]]:
    """Random wire chunks: (bytes, descriptors to attach). Headers may be split across
    chunks, sizes may break the framing, descriptor counts may exceed max_fds."""
    rng = random.Random(seed)
    wire = b""
    for _ in range(rng.randrange(1, 12)):
        size = rng.choice([0, 1, 16, 100, 4096, rng.randrange(0, 1 << 12)])
        msg_size = 16 + size if rng.random() > 0.05 else rng.choice([0, 15, (1 << 16) + 17])
        wire += vfio_user_header.pack(rng.randrange(1 << 16), rng.randrange(1, 20), msg_size,
                                      rng.randrange(1 << 8), rng.randrange(1 << 8)) + os.urandom(size)
    chunks = []
    pos = 0
    while pos < len(wire):
        step = rng.choice([1, 7, 16, 33, 4096, len(wire)])
        chunks.append((wire[pos:pos + step], rng.choice([0, 0, 0, 1, 3, 6])))
        pos += step
    return chunks


def _decode(module: ModuleType, chunks: list[tuple[bytes, int]]) -> list[object]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.settimeout(5)
    reader = module.MessageSocket(b, max_payload=1 << 16, max_fds=4)
    out: list[object] = []
    try:
        for data, nfds in chunks:
            fds = [os.eventfd(0) for _ in range(nfds)]
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
            a.sendmsg([data], ancillary)
            for fd in fds:
                os.close(fd)
        a.shutdown(socket.SHUT_WR)
        while True:
            try:
                message = reader.recv()
            except module.VfioUserFramingError as exc:
                out.append(("framing", str(exc), exc.header))
                break
            except VfioUserDisconnectedError as exc:
                out.append(("disconnected", str(exc)))
                break
            if message is None:
                out.append(("eof",))
                break
            out.append((message.msg_id, message.command, message.flags, message.error_no, message.payload,
                        len(message.fds), message.fds_truncated, message.is_reply, message.no_reply,
                        message.is_error))
            message.close_fds()
    finally:
        a.close()
        reader.close()
    return out


@pytest.mark.skipif(len(IMPLS) < 2, reason="the compiled framing is not built (python setup.py build_ext --inplace)")
@pytest.mark.parametrize("seed", range(40))
def test_both_implementations_decode_the_same_stream(seed: int) -> None:
    chunks = _stream(seed)
    assert _decode(framing.IMPLEMENTATIONS["cython"], chunks) == _decode(framing.IMPLEMENTATIONS["python"], chunks)
