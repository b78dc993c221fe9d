"""vhost-user back-ends as processes of their own, which a case can kill and start again.

A back-end is a command line that serves one UNIX socket: ours (``devmodels vhost-user
--socket PATH --device NAME --backend SPEC``, the registry form, ``harness.serve``) or
QEMU's ``qemu-storage-daemon`` with a ``vhost-user-blk`` export. ``BackEnd`` runs it, and
runs it again on the same socket once it was killed, as a supervisor restarting a crashed
device process would.

Rules:

1. Each incarnation is its own process with its own log file (``logs``); ``start`` removes
   what a killed predecessor left at the socket path and returns once the new process
   listens (ours says so; for the daemon, the path bound suffices), or raises
   ``HostError`` with the end of its log if it exits or does not listen in time.
2. ``kill`` is ``kill -9`` of the current incarnation by its PID: nothing of its teardown
   runs. ``stop`` (the case's ``ExitStack``) ends a running one with SIGTERM, then SIGKILL.
   Only processes started here are ever signalled.
3. Our server runs with ``DEVMODELS_TRACE=vhost_user.ring`` so a case can read from its log
   what each ring start found (``resubmitted``: requests a previous incarnation left in
   flight, which this one resubmitted; ``ring_starts``: the layout each ring started with)
   and what each ring stop had logged (``logged``: pages marked in QEMU's dirty log,
   vhost-user.rst "Migration").
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from devmodels import HostError

from ...processes import end_process

__all__ = ["BackEnd", "READY", "devmodels_argv", "qsd_argv", "resubmitted", "ring_starts", "logged", "ring_layout", "REPO"]

REPO = Path(__file__).resolve().parents[3]
_LISTEN_TIMEOUT = 30.0
READY = b"listening on"
"""What ``devmodels vhost-user`` prints once it listens (``BackEnd``'s ``ready``)."""
_RESUBMITTED = re.compile(r"event='start'.*resubmitted=(0x[0-9a-f]+|\d+)")
_STARTED = re.compile(r"index=(0x[0-9a-f]+|\d+) event='start'.*packed=(True|False)")
_LOGGED = re.compile(r"event='stop'.*logged=(0x[0-9a-f]+|\d+)")


def devmodels_argv(socket_path: Path, device: str, backends: Sequence[str], opts: Sequence[str] = (),
                   faults: Path | None = None) -> list[str]:
    """``devmodels vhost-user`` for ``device`` on ``socket_path`` (the registry form)."""
    argv = [sys.executable, "-m", "devmodels", "vhost-user", "--socket", str(socket_path), "--device", device,
            "--log-level", "INFO"]
    for spec in backends:
        argv += ["--backend", spec]
    for opt in opts:
        argv += ["--opt", opt]
    if faults is not None:
        argv += ["--faults", str(faults)]
    return argv


def qsd_argv(socket_path: Path, image: Path, iops: int | None = None) -> list[str]:
    """``qemu-storage-daemon`` exporting ``image`` as vhost-user-blk on ``socket_path``;
    ``iops`` throttles it (a throttle group), so that requests wait in it."""
    argv = ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=file0,filename={image},cache.direct=off"]
    node = "file0"
    if iops is not None:
        argv += ["--object", f"throttle-group,id=tg0,x-iops-total={iops}",
                 "--blockdev", "driver=throttle,node-name=thr0,throttle-group=tg0,file=file0"]
        node = "thr0"
    argv += ["--export", f"type=vhost-user-blk,id=exp0,node-name={node},writable=on,"
             f"addr.type=unix,addr.path={socket_path}"]
    return argv


def _read(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def resubmitted(log: Path) -> list[int]:
    """What each ring start in one incarnation's log resubmitted (rule 3)."""
    return [int(m.group(1), 0) for m in _RESUBMITTED.finditer(_read(log))]


def ring_starts(log: Path) -> list[tuple[int, bool]]:
    """``(ring index, packed)`` of each ring start in one incarnation's log (rule 3)."""
    return [(int(m.group(1), 0), m.group(2) == "True") for m in _STARTED.finditer(_read(log))]


def logged(log: Path) -> int:
    """The most pages one incarnation said it had marked in QEMU's dirty log when a ring
    stopped (rule 3); 0 when it never logged."""
    return max((int(m.group(1), 0) for m in _LOGGED.finditer(_read(log))), default=0)


def ring_layout(logs: dict[str, Path], packed: bool) -> tuple[bool, str]:
    """``host.ring_layout`` for back-end processes: each of ``logs`` (name -> log) started
    rings, and the last start of each ring had the layout the row is about (virtio 1.2 §2.7
    split, §2.8 packed), in every incarnation. Earlier starts may differ: the firmware's
    virtio-blk and virtio-net drivers (SeaBIOS, iPXE) negotiate split rings before Linux."""
    want = "packed" if packed else "split"
    ok = bool(logs)
    summary = []
    for name, log in logs.items():
        starts = ring_starts(log)
        last = dict(starts)  # the last start of each ring index
        ok = ok and bool(last) and all(p == packed for p in last.values())
        history = " ".join(f"{index}:{'packed' if p else 'split'}" for index, p in starts)
        summary.append(f"{name}: {history or 'none'}")
    return ok, f"want {want}; ring starts (index:layout): {'; '.join(summary) or 'none'}"


class BackEnd:
    """One back-end socket and the processes that serve it in turn (rules 1–3).

    Args:
        name: for log file names.
        argv: the command line (``devmodels_argv``, ``qsd_argv``).
        socket_path: where it listens.
        workdir: where the logs go.
        ready: what the process prints once it listens with its signal handlers in place
            (``READY`` for ours); ``None`` (qemu-storage-daemon): the socket path suffices.
    """

    def __init__(self, name: str, argv: list[str], socket_path: Path, workdir: Path,
                 ready: bytes | None = None) -> None:
        self.name = name
        self.ready = ready
        self.argv = argv
        self.socket_path = socket_path
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.started_at: list[float] = []
        self.killed_at: list[float] = []

    def start(self) -> float:
        """Start the next incarnation (rule 1); return the seconds it took to listen.

        Raises:
            HostError: it exited or did not listen within 30 s.
        """
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        log_path = self.workdir / f"{self.name}.{len(self.logs)}.log"
        self.logs.append(log_path)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env["DEVMODELS_TRACE"] = "vhost_user.ring,vhost_user.connection"
        start = time.monotonic()
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=str(REPO))
        self.started_at.append(start)
        deadline = start + _LISTEN_TIMEOUT
        # Ours makes the path appear once it listens (``devmodels.listen``) and says so once
        # its signal handlers are in place; the daemon is ready when its path appears. A probe
        # connection would be the server's one front-end for a moment and could turn QEMU away.
        while not (self.socket_path.exists() and (self.ready is None or self.ready in log_path.read_bytes())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-600:]
                raise HostError(f"{self.name} did not start listening on {self.socket_path}: {tail}")
            time.sleep(0.01)
        return time.monotonic() - start

    def kill(self) -> None:
        """``kill -9`` the current incarnation (rule 2)."""
        process = self.process
        if process is None or process.poll() is not None:
            raise HostError(f"{self.name} is not running (exit status {None if process is None else process.returncode})")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.killed_at.append(time.monotonic())

    @property
    def alive(self) -> bool:
        """The current incarnation runs."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """End the current incarnation if it runs (SIGTERM, then SIGKILL) (rule 2)."""
        if self.process is not None:
            end_process(self.process)
