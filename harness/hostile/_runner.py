"""Running the hostile guest against one device on one path: boots, restarts, outcomes.

Rules:

1. One boot runs every scenario of the device class in sequence (baseline first). The
   guest's RAM layout is fixed: 512 MiB with only 256 MiB below 4 GiB, so RAM ends at
   ``RAM_END`` (4.25 GiB) far from firmware tables; its last 16 MiB are hidden from the
   kernel with ``memmap=`` and are the guest program's DMA range.
2. After each END line the host checks our server process before it answers: a server
   that exited makes the scenario SERVER-DIED whatever the guest saw. QEMU closing the
   handshake port is VMM-DIED; no END within ``scenario_bound`` seconds of the BEGIN (or
   of the previous END) is HANG. The scenario is the one the guest began last, or the one
   after the last that ended.
3. A scenario that leaves the device unusable (anything but PASS or MISBEHAVED) ends the
   boot (``STOP``): the next boot starts a fresh server and QEMU and goes on with the next
   scenario, so every cell is decided by its own scenario alone. A baseline that fails
   marks the scenarios it would have guarded NOT-RUN.
4. Everything a boot opened is on its ``ExitStack``: the server and QEMU are ended by PID
   when it closes, whatever happened.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from devmodels import HostError

from ._handshake import APPEND, CLOSED, HandshakePort
from ._program import TEST_NAME, Scenario
from ._protocol import GO, STOP, Begin, End, Finished, GuestError, Outcome
from ._targets import AttachmentPath, Started

if TYPE_CHECKING:
    from ..guest import GuestImage

__all__ = ["Cell", "Column", "run_column", "kernel_append", "RAM_END", "DMA_BASE", "DMA_SIZE", "MACHINE_ARGS",
           "MEMORY_MB"]

MEMORY_MB = 512
LOW_MEMORY_MB = 256
RAM_END = (1 << 32) + ((MEMORY_MB - LOW_MEMORY_MB) << 20)
DMA_SIZE = 16 << 20
DMA_BASE = RAM_END - DMA_SIZE
MACHINE_ARGS = ["-machine", f"pc,max-ram-below-4g={LOW_MEMORY_MB}M"]
BOOT_BOUND = 180.0
SCENARIO_BOUND = 75.0  # above the guest's own 40 s alarm
CONNECT_BOUND = 60.0


@dataclass
class Cell:
    """One scenario's outcome on one device and path."""

    outcome: Outcome
    detail: str = ""


@dataclass
class Column:
    """Every scenario of one device class on one path."""

    device: str
    path: AttachmentPath
    scenarios: list[Scenario]
    cells: dict[str, Cell] = field(default_factory=dict)
    boots: int = 0
    seconds: float = 0.0
    note: str = ""

    def cell(self, name: str) -> Cell:
        """The cell of scenario ``name`` (NOT-RUN when it never ran)."""
        return self.cells.get(name, Cell(Outcome.NOT_RUN, self.note))

    @property
    def passed(self) -> bool:
        """Every scenario passed."""
        return all(self.cell(s.name).outcome is Outcome.PASS for s in self.scenarios)


def kernel_append(device_class: str, start: int, only: Sequence[int] | None = None) -> list[str]:
    """The guest's command line: the hidden DMA range and the program's settings (rule 1);
    ``only`` limits the scenarios to those indices."""
    words = [f"memmap={DMA_SIZE >> 20}M${DMA_BASE:#x}", f"hostile.ram_end={RAM_END:#x}",
             f"hostile.dma={DMA_BASE:#x}", f"hostile.dma_size={DMA_SIZE:#x}", f"hostile.class={device_class}",
             f"hostile.from={start}", APPEND]
    if only is not None:
        words.append("hostile.run=" + ",".join(str(i) for i in only))
    return words


def _keep_logs(workdir: Path, serial_log: Path) -> None:
    server_log = workdir / "server.log"
    if server_log.exists():
        shutil.copyfile(server_log, serial_log.with_suffix(".server.log"))


def _qemu_said(stderr: str) -> str:
    """QEMU's messages on one line, without the warning every boot of this layout prints."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "max_ram_below_4g" not in line]
    return " | ".join(lines)[-400:]


def _server_gone(started: Started) -> str | None:
    server = started.server
    if server is None or server.poll() is None:
        return None
    tail = ""
    if started.server_log is not None:
        try:
            lines = started.server_log.read_text(errors="replace").strip().splitlines()
            tail = " | ".join(lines[-3:])
        except OSError:
            pass
    return f"server exited with status {server.returncode}: {tail}"[:400]


@dataclass
class _Boot:
    cells: dict[int, Cell] = field(default_factory=dict)
    next_start: int | None = None  # None: nothing left to run
    error: str = ""


class _Session:
    """One boot's conversation with the guest (rules 2-3)."""

    def __init__(self, port: HandshakePort, started: Started, indices: Sequence[int], scenario_bound: float,
                 progress: Callable[[int, Cell], None]) -> None:
        self.port = port
        self.started = started
        self.indices = list(indices)  # the scenarios this boot runs after the baseline, in order
        self.scenario_bound = scenario_bound
        self.progress = progress
        self.boot = _Boot()
        self.pending = 0  # the scenario running or about to run

    def _record(self, index: int, cell: Cell) -> None:
        self.boot.cells[index] = cell
        self.progress(index, cell)

    def _stop_after(self, index: int) -> None:
        later = [i for i in self.indices if i > index]
        self.boot.next_start = later[0] if index != 0 and later else None

    def _after(self, index: int) -> int:
        later = [i for i in self.indices if i > index]
        return later[0] if later else index + 1

    def run(self, qemu_exit_detail: Callable[[], str]) -> _Boot:
        deadline = time.monotonic() + BOOT_BOUND
        while True:
            event = self.port.read_event(max(0.05, min(1.0, deadline - time.monotonic())))
            if event is None:
                if time.monotonic() < deadline:
                    continue
                gone = _server_gone(self.started)
                outcome = Outcome.SERVER_DIED if gone else Outcome.HANG
                self._record(self.pending, Cell(outcome, gone or "no progress reported within the host's bound"))
                self._stop_after(self.pending)
                return self.boot
            if event == CLOSED:
                time.sleep(0.2)
                gone = _server_gone(self.started)
                detail = gone or qemu_exit_detail()
                self._record(self.pending, Cell(Outcome.SERVER_DIED if gone else Outcome.VMM_DIED, detail))
                self._stop_after(self.pending)
                return self.boot
            if isinstance(event, Begin):
                self.pending = event.index
                deadline = time.monotonic() + self.scenario_bound
            elif isinstance(event, End):
                gone = _server_gone(self.started)
                cell = Cell(Outcome.SERVER_DIED, gone) if gone else Cell(event.outcome, event.detail)
                self._record(event.index, cell)
                if cell.outcome not in (Outcome.PASS, Outcome.MISBEHAVED):
                    self.port.reply(STOP)
                    self._stop_after(event.index)
                    return self.boot
                self.port.reply(GO)
                self.pending = self._after(event.index)
                deadline = time.monotonic() + self.scenario_bound
            elif isinstance(event, Finished):
                return self.boot
            elif isinstance(event, GuestError):
                self.boot.error = f"guest program: {event.text}"
                return self.boot


def _boot_once(device: str, path: AttachmentPath, image: GuestImage, indices: Sequence[int], only: bool,
               scenario_bound: float, progress: Callable[[int, Cell], None], serial_log: Path | None) -> _Boot:
    from ..qemu.launcher import QemuLauncher

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"hostile-{device}-")))
        if serial_log is not None:
            stack.callback(_keep_logs, workdir, serial_log)  # runs after the server ended
        started = path.starters[device](stack, workdir)
        port = HandshakePort(workdir / "handshake.sock")
        stack.callback(port.close)
        launcher = QemuLauncher.for_image(
            image, memory_mb=MEMORY_MB, args=[*MACHINE_ARGS, *started.qemu_args, *port.qemu_args],
            append=kernel_append(device, indices[0], indices if only else None), test=TEST_NAME, shared_memory=True, pass_fds=started.pass_fds,
            qemu=started.qemu, serial_log=serial_log,
        )
        if serial_log is not None:
            stack.callback(lambda: serial_log.with_suffix(".qemu.log").write_text(launcher.result().stderr))
        with launcher:
            try:
                port.accept(CONNECT_BOUND)
            except HostError as exc:
                result = launcher.wait(5)
                return _Boot(error=f"{exc}; QEMU said: {_qemu_said(result.stderr)}")

            def qemu_exit_detail() -> str:
                result = launcher.wait(10)
                return f"QEMU exited with {result.exit_code}: {_qemu_said(result.stderr)}"

            return _Session(port, started, indices, scenario_bound, progress).run(qemu_exit_detail)


def run_column(
    device: str,
    path: AttachmentPath,
    image: GuestImage,
    scenarios: Sequence[Scenario],
    *,
    scenario_bound: float = SCENARIO_BOUND,
    progress: Callable[[str], None] = lambda line: None,
    serial_dir: Path | None = None,
) -> Column:
    """Every scenario of ``device`` on ``path`` (rules 1-4)."""
    column = Column(device, path, list(scenarios))
    begin = time.monotonic()
    reason = path.qemu.unavailable()
    if reason is not None:
        column.note = reason
        column.cells = {s.name: Cell(Outcome.SKIPPED, reason) for s in scenarios}
        return column
    by_index = {s.index: s for s in scenarios}
    every = [s.index for s in scenarios if s.index != 0]
    only = every != list(range(1, len(every) + 1))  # a filtered table: tell the guest which
    start: int | None = every[0] if every else None
    while start is not None and column.boots <= len(scenarios):
        column.boots += 1

        def report(index: int, cell: Cell) -> None:
            name = by_index[index].name if index in by_index else f"#{index}"
            progress(f"hostile: {device} / {path.name}: {name}: {cell.outcome.value} {cell.detail}".rstrip())

        log = serial_dir / f"{device}-{path.name}-{column.boots}.log" if serial_dir is not None else None
        try:
            boot = _boot_once(device, path, image, [i for i in every if i >= start], only, scenario_bound, report,
                              log)
        except (HostError, OSError) as exc:
            boot = _Boot(error=f"{type(exc).__name__}: {exc}")
        for index, cell in boot.cells.items():
            if index in by_index and (index != 0 or column.boots == 1):
                column.cells[by_index[index].name] = cell
        baseline = boot.cells.get(0)
        if boot.error or baseline is None or baseline.outcome not in (Outcome.PASS, Outcome.MISBEHAVED):
            why = boot.error or (f"baseline failed on boot {column.boots}: {baseline.outcome.value} {baseline.detail}"
                                 if baseline is not None else "the guest never reported its baseline")
            column.note = why
            progress(f"hostile: {device} / {path.name}: {why}")
            break
        start = boot.next_start
    for s in scenarios:
        column.cells.setdefault(s.name, Cell(Outcome.NOT_RUN, column.note))
    column.seconds = time.monotonic() - begin
    return column
