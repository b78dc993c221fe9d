"""Live migration of a device served over vfio-user, driven from the VMM side.

What QEMU's vfio migration does (hw/vfio/migration.c, vfio-user.rst "VFIO_USER_DEVICE_FEATURE"
and "VFIO_USER_MIG_DATA_READ/WRITE"), done by a VMM of ours: an in-process ``Machine``
whose function is a ``VfioPciDevice`` over ``VfioUserClient``, one per ``devmodels
vfio-user`` server process.

Rules:

1. ``ServerProcess`` is one ``devmodels vfio-user --socket-path`` process, started exactly
   as a user starts it (registry device, ``--backend``/``--opt`` words), ended by its PID.
2. ``Vmm.connect`` builds the VMM side: guest RAM in a memfd (the server maps it for DMA),
   the ``VfioPciDevice`` on bus 0, BARs assigned by enumeration.
3. ``migrate(source, destination)`` moves the device while the guest runs:
   a. dirty logging of device DMA starts on the source (``DMA_LOGGING_START`` over all of
      RAM), then RAM is copied to the destination while the device keeps working
      (``during_precopy`` lets the guest go on meanwhile, writing device registers only:
      what the guest CPU writes to RAM after the copy is the VMM's own dirty log, which
      this VMM does not have);
   b. downtime starts: the source goes to ``STOP`` (the server quiesces the device);
   c. the pages the device dirtied since the copy (``DMA_LOGGING_REPORT``) are copied;
   d. the device state is read (``STOP_COPY``, ``MIG_DATA_READ``) and written to the
      destination (``RESUMING``, ``MIG_DATA_WRITE``, ``STOP``: the destination server
      restores it, refusing a device built differently), which goes to ``RUNNING``;
   e. the VMM's own part of the device, its virtual PCI config (BARs, MSI/MSI-X
      programming: what QEMU saves with ``vfio_save_config``), is loaded into the
      destination's ``VfioPciDevice``; downtime ends. Logging stops on the source.
   ``Downtime`` has each step's time and the bytes and pages moved.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devmodels import HostError, Machine
from devmodels.pci import defs as pcidefs
from passthrough import VfioPciDevice
from passthrough.defs import VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_STOP
from passthrough.user import VfioUserClient

__all__ = ["ServerProcess", "Vmm", "Downtime", "migrate", "PAGE"]

PAGE = 4096
_REPO = Path(__file__).resolve().parents[2]


class ServerProcess:
    """One ``devmodels vfio-user`` process (rule 1).

    Args:
        socket_path: where it listens.
        device: the registry device name.
        args: more words (``--backend SPEC``, ``--opt KEY=VALUE``).
        log: where its stderr goes.
        timeout: seconds to wait for it to listen.

    Raises:
        HostError: it exited or did not listen in time (its log's end in the message).
    """

    def __init__(self, socket_path: Path, device: str, args: Sequence[str] = (), *, log: Path,
                 timeout: float = 30.0, env: dict[str, str] | None = None) -> None:
        self.socket_path = socket_path
        self.log = log
        environment = {**os.environ, **(env or {})}
        environment["PYTHONPATH"] = str(_REPO) + os.pathsep + environment.get("PYTHONPATH", "")
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devmodels", "vfio-user", "--socket-path", str(socket_path), "--device", device,
                 *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + timeout
        while not socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise HostError(f"devmodels vfio-user --device {device} did not listen: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's output."""
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 5 s) by PID; the exit status."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode


@dataclass
class Vmm:
    """The VMM side of one server (rule 2)."""

    machine: Machine
    client: VfioUserClient
    function: VfioPciDevice
    ram_size: int
    bars: dict[int, int]

    @classmethod
    def connect(cls, socket_path: Path, ram_size: int = 16 << 20, timeout: float = 30.0) -> Vmm:
        """Guest RAM, the passed-through function on bus 0, BARs assigned."""
        machine = Machine(ram_size=ram_size, ram_backing="memfd")
        try:
            client = VfioUserClient.connect(str(socket_path), timeout=timeout)
            function = VfioPciDevice(client)
            function.map_memory(machine.memory)
            machine.add_pci(function)
            ids = (function.config.get(pcidefs.PCI_VENDOR_ID, 2), function.config.get(pcidefs.PCI_DEVICE_ID, 2))
            info = next(i for i in machine.enumerate() if (i.vendor_id, i.device_id) == ids)
        except BaseException:
            machine.close()
            raise
        bars = {bar.index: bar.address for bar in info.bars if bar.address is not None}
        return cls(machine, client, function, ram_size, bars)

    def bar(self, index: int) -> int:
        """The guest-physical address of BAR ``index``."""
        if index not in self.bars:
            raise HostError(f"BAR{index} is not assigned")
        return self.bars[index]

    def close(self) -> None:
        """Release the function (its client) and the machine."""
        self.function.close()
        self.machine.close()


@dataclass(frozen=True)
class Downtime:
    """What one migration took (rule 3); seconds unless said otherwise."""

    precopy: float  # RAM copied while the device ran (not downtime)
    stop: float  # RUNNING -> STOP: the source device quiesced
    dirty: float  # the dirty log read and its pages copied
    save: float  # STOP_COPY: the device state read
    load: float  # RESUMING, the state written and restored, RUNNING
    config: float  # the VMM's virtual config loaded into the destination function
    total: float  # from STOP to the destination running: the downtime
    dirty_pages: int
    state_bytes: int

    def line(self) -> str:
        """One line for logs and reports (milliseconds)."""
        ms = {k: round(getattr(self, k) * 1000, 2) for k in ("total", "stop", "dirty", "save", "load", "config")}
        return (f"downtime {ms['total']} ms (stop {ms['stop']}, dirty {ms['dirty']} for {self.dirty_pages} pages, "
                f"save {ms['save']}, load {ms['load']}, config {ms['config']}; state {self.state_bytes} bytes); "
                f"precopy {round(self.precopy * 1000, 1)} ms")


def _copy_pages(source: Vmm, destination: Vmm, bitmap: bytes) -> int:
    copied = 0
    src, dst = source.machine.memory, destination.machine.memory
    for index, byte in enumerate(bitmap):
        if not byte:
            continue
        for bit in range(8):
            if byte >> bit & 1:
                address = (index * 8 + bit) * PAGE
                if address < source.ram_size:
                    dst.write(address, src.read(address, PAGE))
                    copied += 1
    return copied


def migrate(source: Vmm, destination: Vmm, *, during_precopy: Callable[[], None] | None = None,
            copy_dirty: bool = True) -> Downtime:
    """Migrate the device of ``source`` to ``destination`` (rule 3).

    ``copy_dirty=False`` leaves out step c (to show what the dirty log carries).

    Raises:
        VfioUserError: a server refused a step (a destination built differently refuses the
            state, naming the constructor argument).
    """
    size = source.ram_size
    source.client.dma_logging_start([(0, size)], PAGE)
    try:
        t0 = time.perf_counter()
        destination.machine.memory.write(0, source.machine.memory.read(0, size))
        if during_precopy is not None:
            during_precopy()
        t1 = time.perf_counter()
        source.client.set_migration_state(VFIO_DEVICE_STATE_STOP)
        t2 = time.perf_counter()
        bitmap = source.client.dma_logging_report(0, size, PAGE)
        pages = _copy_pages(source, destination, bitmap) if copy_dirty else 0
        t3 = time.perf_counter()
        state = source.client.save_device_state()
        t4 = time.perf_counter()
        destination.client.load_device_state(state)
        destination.client.set_migration_state(VFIO_DEVICE_STATE_RUNNING)
        t5 = time.perf_counter()
        function = destination.function
        function.check_pci_state(source.function.pci_state())
        function.load_pci_state(source.function.pci_state())
        # Rewire the host side of interrupts to what the loaded config enables (rule 3e).
        function.config_write(pcidefs.PCI_COMMAND, 2, function.config_read(pcidefs.PCI_COMMAND, 2))
        t6 = time.perf_counter()
    finally:
        source.client.dma_logging_stop()
    return Downtime(precopy=t1 - t0, stop=t2 - t1, dirty=t3 - t2, save=t4 - t3, load=t5 - t4, config=t6 - t5,
                    total=t6 - t1, dirty_pages=pages, state_bytes=len(state))
