"""Starting a QEMU guest, streaming its serial console, and always tearing it down.

Rules:

1. The launcher owns exactly one process, the QEMU it started, and ends only that one (by
   its PID, SIGKILL after SIGTERM is ignored); ``stop()`` is idempotent and runs on every
   exit path of the context manager.
2. The serial console is QEMU's stdout (``-serial stdio``, stdin at /dev/null). One reader
   thread turns it into lines, keeps them all for the result, tees them to ``serial_log``
   and hands them to ``on_line`` and to the ``lines()`` / ``wait_for()`` stream. QEMU's own
   messages (stderr) are kept apart.
3. TCG is the default accelerator. KVM is an opt-in fast path: ``accel="auto"`` takes it only
   where ``kvm_usable()`` says the host can run stock kernels under it (on hosts whose
   /dev/kvm is a software nested hypervisor without vmx/svm, stock kernels do not boot).
4. A wait is bounded: ``wait(timeout)`` kills QEMU when the timeout runs out, and kills it
   ``done_grace`` seconds after ``DEVMODELS-DONE`` if the guest failed to power off.
5. ``qmp=PATH`` adds a QMP monitor on that UNIX socket (``-qmp unix:PATH,server=on,wait=off``);
   ``qmp_client()`` connects to it (``harness.qemu.qmp``), e.g. to start a migration.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from devmodels import HostError, UsageError
from ..guest._protocol import DONE_MARKER, TEST_PARAM, parse_checks
from .binaries import QEMU_7_2, QemuBinary
from .qmp import QmpClient

if TYPE_CHECKING:
    from ..guest._image import GuestImage

__all__ = [
    "QEMU_BINARY",
    "BASE_APPEND",
    "BootResult",
    "QemuLauncher",
    "qemu_available",
    "kvm_usable",
    "boot",
]

QEMU_BINARY = "qemu-system-x86_64"
# no_timer_check: a loaded host can make a TCG guest's IO-APIC timer test fail ("IO-APIC + timer
# doesn't work", a panic at boot); the check only guards against broken chipsets.
BASE_APPEND = ("console=ttyS0", "panic=-1", "loglevel=4", "no_timer_check")
"""Kernel command line every boot starts with."""

_TERM_GRACE = 3.0
_READER_JOIN = 5.0


def qemu_available(qemu: str | QemuBinary = QEMU_BINARY) -> str | None:
    """None when ``qemu`` (a binary name or path, or a ``QemuBinary``) can be run, else the
    reason it cannot (for ``pytest.skip``)."""
    if isinstance(qemu, QemuBinary):
        return qemu.unavailable()
    path = shutil.which(qemu)
    if path is None:
        return f"{qemu} not found: install it with `apt-get install qemu-system-x86`"
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{qemu} does not run: {exc}"
    if proc.returncode != 0:
        return f"{qemu} --version exited with {proc.returncode}: {proc.stderr.strip()}"
    return None


def kvm_usable() -> bool:
    """True when KVM can be expected to boot a stock kernel: ``/dev/kvm`` opens read-write
    and the CPU advertises hardware virtualization (vmx or svm)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "vmx" in flags or "svm" in flags
    except OSError:
        pass
    return False


@dataclass(frozen=True)
class BootResult:
    """What one QEMU run produced.

    Attributes:
        log: the serial console, lines joined with ``\\n``.
        exit_code: QEMU's exit status (negative: killed by that signal).
        elapsed: seconds from QEMU start to its exit.
        checks: ``name -> (passed, detail)`` from ``DEVMODELS-CHECK`` lines (a FAIL sticks).
        done: whether ``DEVMODELS-DONE`` was seen.
        done_after: seconds from QEMU start to the ``DEVMODELS-DONE`` line, if seen.
        timed_out: whether the launcher killed QEMU because the wait timed out.
        stderr: QEMU's own messages.
        argv: the command line QEMU ran with.
    """

    log: str
    exit_code: int | None
    elapsed: float
    checks: dict[str, tuple[bool, str]]
    done: bool
    done_after: float | None = None
    timed_out: bool = False
    stderr: str = ""
    argv: tuple[str, ...] = field(default=(), repr=False)

    @property
    def passed(self) -> bool:
        """True when DONE was seen, there was at least one check, and every check passed."""
        return self.done and not self.timed_out and bool(self.checks) and all(p for p, _ in self.checks.values())

    def failures(self) -> dict[str, str]:
        """``name -> detail`` of the checks that failed."""
        return {name: detail for name, (passed, detail) in self.checks.items() if not passed}

    def summary(self) -> str:
        """A few lines for an assertion message: verdict, failures, and the end of the log."""
        head = (f"done={self.done} timed_out={self.timed_out} exit={self.exit_code} "
                f"elapsed={self.elapsed:.1f}s checks={len(self.checks)} failed={self.failures()}")
        tail = "\n".join(self.log.splitlines()[-30:])
        err = f"\nqemu stderr: {self.stderr.strip()}" if self.stderr.strip() else ""
        return f"{head}{err}\n--- serial tail ---\n{tail}"


class QemuLauncher:
    """One QEMU guest booted from a kernel and initramfs; use it as a context manager.

    Args:
        kernel, initrd: what to boot.
        args: extra QEMU arguments (devices, netdevs, ...), appended as given.
        append: extra kernel command-line words, after ``BASE_APPEND``.
        test: run embedded test NAME (adds ``devmodels.test=NAME``).
        memory_mb: guest RAM.
        smp: vCPUs.
        shared_memory: back guest RAM with a shared memfd (``sysmem-file``), as devices in
            other processes (x-pci-proxy-dev, vhost-user) need.
        pass_fds: file descriptors QEMU inherits under the same numbers (for ``fd=N``).
        accel: ``"tcg"`` (default), ``"kvm"``, or ``"auto"`` (KVM only if ``kvm_usable()``).
        qemu: which QEMU: a ``QemuBinary`` (``QEMU_7_2``, the default, or ``QEMU_11_1``), or
            the name or path of a host binary.
        serial_log: also write the console to this file, line by line.
        on_line: called from the reader thread with every console line.
        done_grace: seconds QEMU may run on after ``DEVMODELS-DONE`` before it is killed.
        qmp: a UNIX socket path for a QMP monitor (rule 5).

    Raises:
        UsageError: bad arguments (unknown accel, missing kernel or initrd).
    """

    def __init__(
        self,
        kernel: Path,
        initrd: Path,
        *,
        args: Sequence[str] = (),
        append: Sequence[str] | str = (),
        test: str | None = None,
        memory_mb: int = 512,
        smp: int = 1,
        shared_memory: bool = False,
        pass_fds: Sequence[int] = (),
        accel: str = "tcg",
        qemu: str | QemuBinary = QEMU_7_2,
        serial_log: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        done_grace: float = 10.0,
        qmp: Path | None = None,
    ) -> None:
        if accel not in ("tcg", "kvm", "auto"):
            raise UsageError(f"accel must be 'tcg', 'kvm' or 'auto', not {accel!r}")
        for path in (kernel, initrd):
            if not Path(path).is_file():
                raise UsageError(f"{path} is not a file")
        if memory_mb <= 0 or smp <= 0:
            raise UsageError("memory_mb and smp must be positive")
        self.kernel, self.initrd = Path(kernel), Path(initrd)
        self.extra_args = tuple(args)
        self.append = tuple(append.split() if isinstance(append, str) else append)
        self.test = test
        self.memory_mb, self.smp = memory_mb, smp
        self.shared_memory = shared_memory
        self.pass_fds = tuple(pass_fds)
        self.accel = "kvm" if accel == "kvm" or (accel == "auto" and kvm_usable()) else "tcg"
        self.qemu = qemu
        self.serial_log = serial_log
        self.on_line = on_line
        self.done_grace = done_grace
        self.qmp = qmp
        self._proc: subprocess.Popen[bytes] | None = None
        self._t0 = 0.0
        self._t_exit: float | None = None
        self._lines: list[str] = []
        self._stderr: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._done_at: float | None = None
        self._done_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._timed_out = False
        self._callback_error: Exception | None = None

    @classmethod
    def for_image(cls, image: GuestImage, *, direct: bool = True, **kwargs: object) -> QemuLauncher:
        """A launcher for a ``harness.guest.GuestImage``; ``kwargs`` as for the constructor.

        With ``direct`` the kernel boots at its PVH entry from the vmlinux inside the bzImage
        (``harness.guest.direct_kernel``: no in-guest decompressor, about half the boot time
        under TCG); a kernel that cannot be booted so boots from the bzImage as before.
        """
        kernel = image.kernel
        if direct:
            from harness.guest import direct_kernel

            kernel = direct_kernel(image.kernel).path or image.kernel
        return cls(kernel, image.initrd, **kwargs)  # type: ignore[arg-type]

    # --- command line ---------------------------------------------------------------------

    def cmdline(self) -> str:
        """The kernel command line."""
        words = list(BASE_APPEND)
        if self.test is not None:
            words.append(f"{TEST_PARAM}={self.test}")
        words.extend(self.append)
        return " ".join(words)

    def argv(self) -> list[str]:
        """The full QEMU command line."""
        cpu = "host" if self.accel == "kvm" else "max"
        args = ["-accel", self.accel, "-cpu", cpu, "-m", str(self.memory_mb), "-smp", str(self.smp),
                "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.cmdline()]
        if self.shared_memory:
            args += ["-object", f"memory-backend-memfd,id=sysmem-file,size={self.memory_mb}M,share=on",
                     "-numa", "node,memdev=sysmem-file"]
        if self.qmp is not None:
            args += ["-qmp", f"unix:{self.qmp},server=on,wait=off"]
        args += self.extra_args
        if isinstance(self.qemu, QemuBinary):
            return self.qemu.argv(args, binds=tuple(dict.fromkeys((self.kernel.parent.resolve(), self.initrd.parent.resolve()))))
        return [self.qemu, *args]

    def qmp_client(self, timeout: float = 30.0) -> QmpClient:
        """A QMP connection to this QEMU's monitor (rule 5).

        Raises:
            UsageError: the launcher was built without ``qmp``.
            HostError: no QMP server answered within ``timeout``.
        """
        if self.qmp is None:
            raise UsageError("this launcher has no QMP monitor (build it with qmp=PATH)")
        return QmpClient.connect(self.qmp, timeout)

    @property
    def qemu_version(self) -> str:
        """The version of the QEMU this launcher runs (``"?"`` for a plain binary path)."""
        return self.qemu.version() if isinstance(self.qemu, QemuBinary) else "?"

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """QEMU's PID once started."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> QemuLauncher:
        """Start QEMU and the reader threads.

        Raises:
            UsageError: already started.
            HostError: QEMU cannot be executed.
        """
        if self._proc is not None:
            raise UsageError("this launcher was already started")
        argv = self.argv()
        self._t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, pass_fds=self.pass_fds)
        except OSError as exc:
            raise HostError(f"cannot start {argv[0]}: {exc} (install qemu-system-x86)") from exc
        assert self._proc.stdout is not None and self._proc.stderr is not None  # PIPE was asked for
        self._threads = [
            threading.Thread(target=self._read_serial, args=(self._proc.stdout,), name="qemu-serial", daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), name="qemu-stderr", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def __enter__(self) -> QemuLauncher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read_serial(self, stream: IO[bytes]) -> None:
        log = self.serial_log.open("w", encoding="utf-8") if self.serial_log is not None else None
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._lock:
                    self._lines.append(line)
                    if self._done_at is None and DONE_MARKER in line:
                        self._done_at = time.monotonic()
                        self._done_event.set()
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                if self.on_line is not None:
                    try:
                        self.on_line(line)
                    except Exception as exc:  # re-raised by wait(); keep draining the console
                        self._callback_error = exc
                        self.on_line = None
                self._queue.put(line)
        finally:
            self._queue.put(None)
            if log is not None:
                log.close()

    def _read_stderr(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._stderr.append(raw.decode("utf-8", errors="replace"))

    def lines(self, timeout: float | None = None) -> Iterator[str]:
        """Yield console lines as they arrive, until QEMU closes the console or ``timeout``
        seconds pass. Lines a consumer already took (here or in ``wait_for``) are not repeated;
        ``result().log`` always has them all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return
            if line is None:
                self._queue.put(None)  # keep the end marker for later consumers
                return
            yield line

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> str | None:
        """Return the first new console line containing ``pattern`` (a substring or regex),
        or None when the console ends or ``timeout`` passes first."""
        for line in self.lines(timeout):
            if (pattern.search(line) if isinstance(pattern, re.Pattern) else pattern in line):
                return line
        return None

    def wait(self, timeout: float) -> BootResult:
        """Wait for QEMU to exit, at most ``timeout`` seconds, killing it then; return the result.

        Raises:
            UsageError: not started.
            Exception: whatever ``on_line`` raised (after QEMU is torn down); the console
                kept being drained so the guest never stalled on a full pipe.
        """
        proc = self._require_proc()
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                self._timed_out = True
                break
            if self._done_at is not None and now - self._done_at >= self.done_grace:
                break  # the guest finished but did not power off
            limit = deadline if self._done_at is None else min(deadline, self._done_at + self.done_grace)
            try:
                proc.wait(timeout=min(0.5, max(limit - now, 0.01)))
            except subprocess.TimeoutExpired:
                pass
        self.stop()
        if self._callback_error is not None:
            raise self._callback_error
        return self.result()

    def stop(self) -> None:
        """End QEMU if it still runs (SIGTERM, then SIGKILL), reap it, and join the readers."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_TERM_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._t_exit is None:
            self._t_exit = time.monotonic()
        for t in self._threads:
            t.join(_READER_JOIN)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def result(self) -> BootResult:
        """The result so far (complete after ``wait`` or ``stop``)."""
        proc = self._require_proc()
        with self._lock:
            lines = list(self._lines)
            done_at = self._done_at
        end = self._t_exit if self._t_exit is not None else time.monotonic()
        return BootResult(
            log="\n".join(lines),
            exit_code=proc.returncode,
            elapsed=end - self._t0,
            checks=parse_checks(lines),
            done=done_at is not None,
            done_after=None if done_at is None else done_at - self._t0,
            timed_out=self._timed_out,
            stderr="".join(self._stderr),
            argv=tuple(proc.args) if isinstance(proc.args, list) else (),
        )

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise UsageError("the launcher has not been started")
        return self._proc


def boot(kernel: Path, initrd: Path, *, timeout: float = 120.0, **kwargs: object) -> BootResult:
    """Boot once and return the result: ``QemuLauncher(kernel, initrd, **kwargs)``, started,
    waited for at most ``timeout`` seconds, and torn down."""
    with QemuLauncher(kernel, initrd, **kwargs) as vm:  # type: ignore[arg-type]
        return vm.wait(timeout)
