"""Devices the mpqemu server process can serve, and what keeps each one running.

Rules:

1. A served device is a ``PciFunction`` plus its runtime glue (``ServedDevice``): the
   backend descriptors it watches and the timers it needs, registered on the server's
   ``EventLoop``. The device model itself stays sans-IO; only this glue touches fds and
   the clock.
2. ``before_message`` runs before each proxy message is handled (devices learn the current
   time before a register write arms a timer); ``after_message`` runs after it (re-arm
   timers, resume receive when the guest returned buffers).
3. A receive path never spins: while the device has no room for a frame, the backend fd
   is not watched; it is watched again once the device can take frames.
4. Devices are built by name from ``DEVICES`` with the options of the command line:
   ``--backend SPEC`` (``socket:PATH`` / ``tap:NAME`` for NICs, ``file:PATH`` /
   ``file-ro:PATH`` for disks, ``iso:PATH`` for a CD-ROM) and ``--opt KEY=VALUE``
   (AHCI: ``ports=N``; ``direct=on`` opens the images ``O_DIRECT``; ``workers=N`` I/O
   threads per image; ``posted=off`` runs commands inside the PxCI write instead of after
   the reply; ``inline-reads=off`` sends page-cache hits to the workers too; e1000:
   ``mac=52:54:..``, ``mitigation=off``, ``posted=off`` walks the rings inside the TDT/RDT
   write instead of after the reply).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .loop import EventLoop, Timer
from devmodels._errors import UsageError
from devmodels._memory import GuestMemory
from devmodels.pci import PciFunction

__all__ = ["DeviceOptions", "ServedDevice", "TimedNic", "PolledBlockDevice", "DEVICES", "build_device", "open_net_backend"]


@dataclass
class DeviceOptions:
    """What the command line says about the device (rule 4)."""

    backends: list[str] = field(default_factory=list)
    opts: dict[str, str] = field(default_factory=dict)

    def flag(self, key: str, default: bool = False) -> bool:
        """A boolean ``--opt KEY=on|off``."""
        value = self.opts.get(key)
        if value is None:
            return default
        if value.lower() in ("1", "on", "yes", "true"):
            return True
        if value.lower() in ("0", "off", "no", "false"):
            return False
        raise UsageError(f"--opt {key}={value}: expected on or off")


class ServedDevice:
    """A device and its runtime glue (rules 1–2); the default needs none."""

    def __init__(self, function: PciFunction) -> None:
        self.function = function
        self._closers: list[Callable[[], None]] = []

    def attach(self, loop: EventLoop) -> None:
        """Register descriptors and timers on ``loop``."""

    def before_message(self, loop: EventLoop) -> None:
        """Runs before each proxy message (rule 2)."""

    def after_message(self, loop: EventLoop) -> None:
        """Runs after each proxy message (rule 2)."""

    def counters(self) -> dict[str, int]:
        """Counters of the glue and its backends, for the server's stats line (none here)."""
        return {}

    def close(self) -> None:
        """Release backends."""
        while self._closers:
            self._closers.pop()()


def open_net_backend(spec: str) -> Any:
    """A network backend from ``socket:PATH``, ``socket-fd:N`` (inherited) or ``tap:NAME``.

    Raises:
        UsageError: an unknown spec.
        HostError: the backend cannot be opened.
    """
    from devmodels.backends.net import SocketBackend, TapBackend

    kind, _, arg = spec.partition(":")
    if kind == "socket" and arg:
        return SocketBackend.connect(arg, "seqpacket")
    if kind == "socket-fd" and arg.isdigit():
        import socket

        return SocketBackend(socket.socket(fileno=int(arg)))
    if kind == "tap":
        return TapBackend(arg)
    raise UsageError(f"network backend {spec!r}: use socket:PATH, socket-fd:N or tap:NAME")


class TimedNic(ServedDevice):
    """Glue for a NIC model with ``receive_pending``/``rx_ready``/``tick``/``next_deadline``
    (the e1000): watches the backend fd while the device can take frames (rule 3) and
    keeps one timer armed at the device's next deadline. A device built with
    ``defer_work=True`` has its ``run_deferred()`` called after each message, i.e. after
    the proxy got its reply, so ring work overlaps with the guest running on."""

    def __init__(self, function: Any, backend: Any) -> None:
        super().__init__(function)
        self.device = function
        self.backend = backend
        self._loop: EventLoop | None = None
        self._watching = False
        self._timer: Timer | None = None
        self._deadline: int | None = None
        if backend is not None:
            self._closers.append(backend.close)

    def attach(self, loop: EventLoop) -> None:
        """Start watching the backend."""
        self._loop = loop
        self._update(loop)

    def _fd(self) -> int | None:
        return self.backend.fileno() if self.backend is not None else None

    def _on_readable(self) -> None:
        assert self._loop is not None
        self.device.tick(self._loop.now_ns())
        self.device.receive_pending(64)
        self._update(self._loop)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._deadline = None
        self.device.tick(self._loop.now_ns())
        self._update(self._loop)

    def _update(self, loop: EventLoop) -> None:
        fd = self._fd()
        if fd is not None:
            want = bool(self.device.rx_ready())
            if want and not self._watching:
                loop.add_reader(fd, self._on_readable)
            elif not want and self._watching:
                loop.remove_reader(fd)
            self._watching = want
        deadline = self.device.next_deadline()
        if deadline != self._deadline:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._deadline = deadline
            if deadline is not None:
                self._timer = loop.call_at(deadline, self._on_timer)

    def before_message(self, loop: EventLoop) -> None:
        """The device's clock follows the loop's."""
        self.device.tick(loop.now_ns())

    def after_message(self, loop: EventLoop) -> None:
        """Run deferred ring work, resume receive and re-arm the timer."""
        run_deferred = getattr(self.device, "run_deferred", None)
        if run_deferred is not None:
            run_deferred()
        self._update(loop)

    def close(self) -> None:
        """Stop watching and close the backend."""
        if self._loop is not None and self._watching:
            fd = self._fd()
            if fd is not None:
                self._loop.remove_reader(fd)
            self._watching = False
        if self._timer is not None:
            self._timer.cancel()
        super().close()


class PolledBlockDevice(ServedDevice):
    """Glue for a storage controller with ``poll()`` (AHCI): block backends complete on
    worker threads and wake the loop through an eventfd; the loop then lets the device
    collect the completions on its own thread of control.

    Completions made on the loop's own thread (a backend that finished a request inside
    ``submit``) only mark work: the device is polled before the loop callback returns.
    A device with posted writes (``device.posted``) is polled after each message, once
    the proxy has its reply (``served`` rule 2), so the guest runs while commands start.
    """

    _MARKED_ROUNDS = 4  # polls per callback for same-thread completions; then the eventfd

    def __init__(self, function: Any, backends: Sequence[Any]) -> None:
        super().__init__(function)
        self.device = function
        self.backends = list(backends)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._loop: EventLoop | None = None
        self._loop_thread: int | None = None
        self._marked = False
        for backend in self.backends:
            backend.set_notify(self._notify)
            self._closers.append(backend.close)

    def _notify(self) -> None:  # any thread: never calls into the device
        if threading.get_ident() == self._loop_thread:
            self._marked = True
        else:
            os.eventfd_write(self._wake, 1)

    def _poll(self) -> None:
        for _ in range(self._MARKED_ROUNDS):
            self._marked = False
            self.device.poll()
            # A mark set during the poll was for a completion the poll's own rounds
            # collected, unless requests are still in flight (the poll stopped at its bound).
            if not self._marked or not getattr(self.device, "busy", True):
                return
        os.eventfd_write(self._wake, 1)  # more keeps coming: continue on the next turn

    def _on_wake(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        self._poll()

    def attach(self, loop: EventLoop) -> None:
        """Watch the completion eventfd."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        loop.add_reader(self._wake, self._on_wake)

    def after_message(self, loop: EventLoop) -> None:
        """Run posted work and same-thread completions (the reply is already sent)."""
        if self._marked or getattr(self.device, "posted", False):
            self._poll()

    def counters(self) -> dict[str, int]:
        """Reads served inline and handed to workers (``RawFileBackend`` rule 5)."""
        return {
            "inline_reads": sum(getattr(b, "inline_reads", 0) for b in self.backends),
            "delegated_reads": sum(getattr(b, "delegated_reads", 0) for b in self.backends),
        }

    def close(self) -> None:
        """Drain and close the backends, then the eventfd."""
        if self._loop is not None:
            self._loop.remove_reader(self._wake)
        for backend in self.backends:
            backend.set_notify(None)
        super().close()
        os.close(self._wake)


def _testdev(memory: GuestMemory, options: DeviceOptions) -> ServedDevice:
    from devmodels.testdev import PciTestDevice

    return ServedDevice(PciTestDevice(memory))


def _e1000(memory: GuestMemory, options: DeviceOptions) -> ServedDevice:
    from devmodels.e1000 import E1000

    backend = open_net_backend(options.backends[0]) if options.backends else None
    # posted=on: TDT/RDT writes are answered before the ring work runs (E1000 defer_work).
    kwargs: dict[str, Any] = {"mitigation": options.flag("mitigation", True), "defer_work": options.flag("posted", True)}
    if "mac" in options.opts:
        kwargs["mac"] = bytes(int(part, 16) for part in options.opts["mac"].split(":"))
    return TimedNic(E1000(memory, backend, **kwargs), backend)


def _ahci(memory: GuestMemory, options: DeviceOptions) -> ServedDevice:
    from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom
    from devmodels.backends.block import RawFileBackend

    ports = int(options.opts.get("ports", max(1, len(options.backends))))
    direct = options.flag("direct", False)  # O_DIRECT images (QEMU's cache=none)
    workers = int(options.opts.get("workers", 4))
    # Page-cache hits read on the loop's thread (buffered images only; RawFileBackend rule 5).
    inline = options.flag("inline-reads", True)
    controller = AhciController(memory, ports=ports, posted_writes=options.flag("posted", True))
    backends: list[Any] = []
    for port, spec in enumerate(options.backends):
        kind, _, path = spec.partition(":")
        if kind not in ("file", "file-ro", "iso"):
            raise UsageError(f"AHCI backend {spec!r}: use file:PATH, file-ro:PATH or iso:PATH")
        backend = RawFileBackend(path, readonly=kind != "file", direct=direct, workers=workers, inline_reads=inline)
        backends.append(backend)
        controller.attach(port, AtapiCdrom(backend) if kind == "iso" else AtaDisk(backend))
    return PolledBlockDevice(controller, backends)


# name -> factory(memory, options): the devices the server can build (rule 4).
DEVICES: dict[str, Callable[[GuestMemory, DeviceOptions], ServedDevice]] = {
    "testdev": _testdev,
    "e1000": _e1000,
    "ahci": _ahci,
}


def build_device(name: str, memory: GuestMemory, backends: Sequence[str] = (), opts: Sequence[str] = ()) -> ServedDevice:
    """Build device ``name`` (rule 4).

    Raises:
        UsageError: unknown device or malformed option.
    """
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; known: {', '.join(sorted(DEVICES))}")
    parsed: dict[str, str] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            raise UsageError(f"--opt {opt!r}: expected KEY=VALUE")
        parsed[key] = value
    for spec in backends:
        if spec.startswith(("file:", "file-ro:", "iso:")):
            path = spec.partition(":")[2]
            if not os.path.exists(path):
                raise UsageError(f"backend {spec!r}: {path} does not exist")
    return DEVICES[name](memory, DeviceOptions(list(backends), parsed))
