"""``DeviceRunner``: one ``ServedDevice`` on one ``EventLoop`` (``devmodels.runtime._runner``)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping

import pytest

from devmodels import Machine
from devmodels.backends.net import LoopbackBackend, SocketBackend
from devmodels.e1000 import E1000
from devmodels.e1000.testing import E1000Driver
from devmodels.runtime import DeviceRunner, EventLoop, ServedDevice, ServedDeviceDefaults


class ScriptedDevice(ServedDeviceDefaults):
    """A ``ServedDevice`` whose answers the test sets and whose calls it records."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fds: dict[int, Callable[[], None]] = {}
        self.deadline: int | None = None
        self.has_posted = False
        self.waker: Callable[[], None] | None = None
        self.rewake = 0  # run_posted wakes itself this many more times (a busy backend)

    def bind_waker(self, wake: Callable[[], None] | None) -> None:
        self.waker = wake

    def watched_fds(self) -> Mapping[int, Callable[[], None]]:
        return self.fds

    def next_deadline(self) -> int | None:
        return self.deadline

    def tick(self, now_ns: int) -> None:
        self.calls.append("tick")
        if self.deadline is not None and now_ns >= self.deadline:
            self.deadline = None
            self.calls.append("timer")

    @property
    def posted(self) -> bool:
        return self.has_posted

    def run_posted(self) -> bool:
        self.calls.append("run_posted")
        self.has_posted = False
        if self.rewake and self.waker is not None:
            self.rewake -= 1
            self.waker()
        return True


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


def test_every_pci_function_and_the_scripted_double_are_served_devices() -> None:
    machine = Machine(ram_size=1 << 20, ram_backing="bytearray")
    assert isinstance(E1000(machine.memory), ServedDevice)
    assert isinstance(ScriptedDevice(), ServedDevice)


def test_attach_binds_the_waker_and_close_unbinds_it(loop: EventLoop) -> None:
    device = ScriptedDevice()
    runner = DeviceRunner(device, loop)
    runner.attach()
    assert device.waker is not None
    runner.close()
    assert device.waker is None


def test_a_wake_on_the_loop_thread_only_marks_work_run_after_the_access(loop: EventLoop) -> None:
    device = ScriptedDevice()
    runner = DeviceRunner(device, loop)
    runner.attach()
    try:
        assert device.waker is not None
        device.waker()  # same thread: a mark, no eventfd write
        loop.run_once(0)
        assert "run_posted" not in device.calls
        runner.after_access()
        assert device.calls.count("run_posted") == 1
    finally:
        runner.close()


def test_a_wake_from_another_thread_wakes_the_loop(loop: EventLoop) -> None:
    device = ScriptedDevice()
    runner = DeviceRunner(device, loop)
    runner.attach()
    try:
        assert device.waker is not None
        worker = threading.Thread(target=device.waker)
        worker.start()
        worker.join()
        loop.run_once(5.0)
        assert device.calls.count("run_posted") == 1
    finally:
        runner.close()


def test_a_device_that_keeps_waking_itself_yields_to_the_loop_after_four_rounds(loop: EventLoop) -> None:
    device = ScriptedDevice()
    device.rewake = 10
    runner = DeviceRunner(device, loop)
    runner.attach()
    try:
        device.has_posted = True
        runner.after_access()
        assert device.calls.count("run_posted") == 4  # then the eventfd carries the rest
        loop.run_once(0)
        assert device.calls.count("run_posted") == 8
        for _ in range(3):
            loop.run_once(0)
        assert device.calls.count("run_posted") == 11 and device.rewake == 0
    finally:
        runner.close()


def test_posted_work_runs_after_the_access_and_the_clock_catches_up_before(loop: EventLoop) -> None:
    device = ScriptedDevice()
    runner = DeviceRunner(device, loop)
    runner.attach()
    try:
        runner.before_access()
        assert device.calls == ["tick"]
        runner.after_access()
        assert "run_posted" not in device.calls  # nothing posted
        device.has_posted = True
        runner.after_access()
        assert device.calls[-1] == "run_posted"
    finally:
        runner.close()


def test_descriptors_follow_what_the_device_wants_after_each_callback(loop: EventLoop) -> None:
    device = ScriptedDevice()
    rd, wr = os.pipe()
    got: list[bytes] = []

    def ready() -> None:
        got.append(os.read(rd, 64))
        device.fds = {}  # e.g. a NIC whose receive ring just filled up

    runner = DeviceRunner(device, loop)
    try:
        device.fds = {rd: ready}
        runner.attach()
        os.write(wr, b"a")
        loop.run_once(5.0)
        assert got == [b"a"]
        os.write(wr, b"b")
        loop.run_once(0.05)  # no longer watched: nothing read, no spinning
        assert got == [b"a"]
        device.fds = {rd: ready}
        runner.update()
        loop.run_once(5.0)
        assert got == [b"a", b"b"]
    finally:
        runner.close()
        os.close(rd)
        os.close(wr)


def test_the_deadline_arms_a_timer_that_ticks_the_device(loop: EventLoop) -> None:
    device = ScriptedDevice()
    device.deadline = loop.now_ns() + 1_000_000
    runner = DeviceRunner(device, loop)
    runner.attach()
    try:
        loop.run_once(5.0)
        assert "timer" in device.calls
    finally:
        runner.close()


def _rig(backend: object) -> tuple[Machine, E1000, E1000Driver]:
    machine = Machine(ram_size=16 << 20, ram_backing="bytearray")
    device = E1000(machine.memory, backend, posted_writes=True)  # type: ignore[arg-type]
    machine.add_pci(device)
    driver = E1000Driver(machine, device)
    driver.probe()
    driver.open()
    driver.poll()
    return machine, device, driver


FRAME = bytes.fromhex("525400123456" "020000000001" "0800") + bytes(range(50))


def test_e1000_receives_from_a_socket_backend_only_through_its_descriptor(loop: EventLoop) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    machine, device, driver = _rig(SocketBackend(ours))
    runner = DeviceRunner(device, loop)
    runner.attach()
    try:
        assert device.watched_fds()  # receive buffers are posted: the socket is watched
        theirs.send(FRAME)
        loop.run_once(5.0)
        assert [frame.data for frame in driver.clean_rx()] == [FRAME]
    finally:
        runner.close()
        theirs.close()
        ours.close()


class NoDescriptor:
    """A network backend that wakes its user only through ``set_notify`` (no ``fileno``)."""

    def __init__(self, inner: LoopbackBackend) -> None:
        self.inner = inner

    def fileno(self) -> None:
        return None

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_e1000_on_a_backend_without_descriptor_receives_through_the_waker(loop: EventLoop) -> None:
    host, wire = LoopbackBackend.pair(capacity=64)
    machine, device, driver = _rig(NoDescriptor(wire))
    runner = DeviceRunner(device, loop)
    runner.attach()
    try:
        assert not device.watched_fds()
        host.send(FRAME)  # the loopback's notify is the runner's waker (same thread: a mark)
        runner.after_access()
        assert [frame.data for frame in driver.clean_rx()] == [FRAME]
    finally:
        runner.close()
