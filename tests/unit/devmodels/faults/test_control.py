"""The control socket on a real loop (``devmodels.faults.control``, ``served``)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmodels import GuestMemory, HostError, MemoryRegion, RecordingLevelSink, UsageError
from devmodels.faults import (
    FaultClient,
    FaultControlServer,
    FaultEngine,
    FaultyServedDevice,
    LinkDown,
    NoResponse,
    PciFaults,
)
from devmodels.faults.control import MAX_CLIENTS, MAX_LINE
from devmodels.runtime import DeviceRunner, EventLoop
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r


class Served:
    """A test device served on a loop thread, with the fault layers and a control socket."""

    def __init__(self, path: Path) -> None:
        self.engine = FaultEngine(seed=4)
        self.device = PciTestDevice(GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)]))
        self.device.intx = RecordingLevelSink()
        self.pci = PciFaults(self.device, self.engine)
        self.pci.install()
        self.control = FaultControlServer(self.engine, path)
        self.served = FaultyServedDevice(self.device, self.engine, control=self.control,
                                         paused=lambda: self.pci.paused)
        self.loop = EventLoop()
        self.stop = False
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self) -> None:
        runner = DeviceRunner(self.served, self.loop)
        runner.attach()
        self.ready.set()
        self.loop.run(until=lambda: self.stop)
        runner.close()

    def on_loop(self, fn):  # type: ignore[no-untyped-def]
        result: list[object] = []
        done = threading.Event()

        def call() -> None:
            result.append(fn())
            done.set()

        self.loop.call_at(0, call)
        self.loop.wakeup()
        assert done.wait(5)
        return result[0]

    def close(self) -> None:
        self.stop = True
        self.loop.wakeup()
        self.thread.join(5)
        self.served.close()
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "faults.sock")
    yield s
    s.close()


def test_add_list_arm_remove_clear(served: Served, tmp_path: Path) -> None:
    with FaultClient(tmp_path / "faults.sock") as client:
        fid = client.add({"kind": "pci.no-response", "armed": False, "id": "dead"})
        assert fid == "dead"
        assert served.on_loop(lambda: served.device.bar_read(0, r.ID, 4)) == r.TESTDEV_MAGIC
        client.arm("dead")
        assert served.on_loop(lambda: served.device.bar_read(0, r.ID, 4)) == 0xFFFF_FFFF
        listing = client.list()
        assert listing[0]["id"] == "dead" and listing[0]["on"] is True
        assert client.remove("dead") == {"kind": "pci.no-response", "id": "dead", "armed": False}
        assert served.on_loop(lambda: served.device.bar_read(0, r.ID, 4)) == r.TESTDEV_MAGIC
        client.add({"kind": "pci.lost-irq", "rate": 0.5})
        client.clear()
        assert client.list() == []
        answer = client.request({"op": "list"})
        assert answer["seed"] == 4 and "pci.lost-irq" in answer["supported"]


def test_refusals_are_answered(served: Served, tmp_path: Path) -> None:
    with FaultClient(tmp_path / "faults.sock") as client:
        with pytest.raises(UsageError, match="cannot apply net.link-down"):
            client.add(LinkDown())
        with pytest.raises(UsageError, match="unknown fault kind"):
            client.add({"kind": "nope"})
        with pytest.raises(UsageError, match="no fault named"):
            client.remove("ghost")
        with pytest.raises(UsageError, match="unknown op"):
            client.request({"op": "explode"})
        with pytest.raises(UsageError, match="needs an id"):
            client.request({"op": "arm"})
        assert client.list() == []  # still serving


def test_garbage_and_floods_do_not_hurt_the_server(served: Served, tmp_path: Path) -> None:
    path = str(tmp_path / "faults.sock")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(path)
    raw.sendall(b"not json\n[1,2]\n" + b"[" * 60000 + b"\n" + b'{"op": "add", "fault": {"kind": "net.drop", "rate": NaN}}\n')
    reader = raw.makefile("rb")
    assert json.loads(reader.readline())["ok"] is False
    assert "JSON object" in json.loads(reader.readline())["error"]
    assert "not JSON" in json.loads(reader.readline())["error"]  # nested too deep
    assert "rate=nan" in json.loads(reader.readline())["error"]
    raw.sendall(b"x" * (MAX_LINE + 10))  # no newline: the connection is dropped
    deadline = time.monotonic() + 5
    while raw.recv(1) and time.monotonic() < deadline:
        pass
    raw.close()
    extra = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(MAX_CLIENTS + 2)]
    for s in extra:
        s.connect(path)
    time.sleep(0.2)
    for s in extra:
        s.close()
    with FaultClient(path) as client:
        assert client.list() == []


def test_a_missing_socket_is_a_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="nowhere.sock"):
        FaultClient(tmp_path / "nowhere.sock")


def test_a_paused_device_gets_no_work_and_is_woken_after(tmp_path: Path) -> None:
    engine = FaultEngine()
    device = PciTestDevice(GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)]))
    pci = PciFaults(device, engine)
    pci.install()

    class Inner:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def bind_waker(self, wake):  # type: ignore[no-untyped-def]
            self.calls.append("bind")

        def watched_fds(self):  # type: ignore[no-untyped-def]
            return {99: lambda: None}

        def next_deadline(self) -> int:
            return 7

        def tick(self, now_ns: int) -> None:
            self.calls.append("tick")

        posted = True

        def run_posted(self) -> bool:
            self.calls.append("run_posted")
            return True

        def quiesce(self) -> None:
            pass

    inner = Inner()
    served = FaultyServedDevice(inner, engine, paused=lambda: pci.paused)  # type: ignore[arg-type]
    woken: list[int] = []
    served.bind_waker(lambda: woken.append(1))
    fid = engine.add(NoResponse())
    assert served.watched_fds() == {} and served.next_deadline() is None and not served.posted
    served.tick(1)
    assert served.run_posted() is False
    assert inner.calls == ["bind"]
    engine.remove(fid)
    assert woken == [1]
    assert 99 in served.watched_fds() and served.next_deadline() == 7 and served.posted
    assert served.run_posted() is True


def test_the_timer_thread_wakes_the_loop_at_deadlines() -> None:
    engine = FaultEngine()
    engine.add_scope("net", "nic0")

    class Link:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def start(self, active):  # type: ignore[no-untyped-def]
            self.calls.append("down")

        def stop(self, active):  # type: ignore[no-untyped-def]
            self.calls.append("up")

    link = Link()
    engine.add_actuator("net.link-down", link)
    device = PciTestDevice(GuestMemory([MemoryRegion.from_bytearray(0, 1 << 20)]))
    served = FaultyServedDevice(device, engine, timer_thread=True)
    woken = threading.Event()
    served.bind_waker(woken.set)
    try:
        engine.add(LinkDown(for_ms=30))
        woken.clear()
        assert woken.wait(5)  # at the window's end
        served.run_posted()  # what the loop does when woken
        assert link.calls == ["down", "up"]
    finally:
        served.close()
