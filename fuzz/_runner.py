"""Local fuzzing: atheris (libFuzzer) when installed, else a built-in mutator.

Rules:

1. Targets are named in ``TARGETS`` (name -> module); each module is also a standalone
   OSS-Fuzz fuzzer (``fuzz/<name>_fuzzer.py`` with ``TestOneInput``). An op-stream target
   defines ``build() -> Rig``; a byte-stream target (a wire protocol: ``mpqemu``,
   ``vfio_user``) defines ``execute_input(data, *, op_seconds, check_memory, memory_limit,
   trace)`` instead. ``load_executor`` gives both the same shape.
2. With atheris, ``run`` starts the fuzzer script as a child process with libFuzzer flags;
   its status lines (execs/s, ``cov:``, ``ft:``) are echoed and parsed into ``Stats``. Without it, the built-in loop mutates
   the corpus with a seeded RNG, keeps inputs that reach new lines of the device packages
   (line coverage via ``sys.settrace`` limited to those files) and prints a progress line
   every second.
3. Every finding is written to the crash directory as ``<target>-<kind>-<sha1>``; ``repro``
   replays one with a readable op trace.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import importlib
import importlib.util
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from ._execute import execute
from ._ops import MAX_OPS, decode
from ._rig import Finding, Rig

__all__ = ["TARGETS", "Executor", "load_target", "load_executor", "run", "repro", "corpus_dir", "quiet_logs", "Stats"]

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent

TARGETS: dict[str, str] = {
    "testdev": "fuzz.testdev_fuzzer",
    "e1000": "fuzz.e1000_fuzzer",
    "virtio_split": "fuzz.virtio_split_fuzzer",
    "virtio_packed": "fuzz.virtio_packed_fuzzer",
    "virtio_pci": "fuzz.virtio_pci_fuzzer",
    "virtio_mmio": "fuzz.virtio_mmio_fuzzer",
    "virtio_blk": "fuzz.virtio_blk_fuzzer",
    "virtio_net": "fuzz.virtio_net_fuzzer",
    "ahci": "fuzz.ahci_fuzzer",
    "mpqemu": "fuzz.mpqemu_fuzzer",
    "vfio_user": "fuzz.vfio_user_fuzzer",
    "vhost_user": "fuzz.vhost_user_fuzzer",
    "elf": "fuzz.elf_fuzzer",
}

Executor = Callable[..., None]
"""``executor(data, *, op_seconds=2.0, check_memory=False, memory_limit=..., trace=None)``:
run one input with every oracle; raise ``Finding`` when one fires."""

_COVERED_PACKAGES = tuple(str(ROOT / p) + os.sep for p in ("devmodels", "virtio", "passthrough", "kvm"))


def _module(name: str) -> Any:
    if name not in TARGETS:
        raise ValueError(f"unknown fuzz target {name!r}; known: {', '.join(sorted(TARGETS))}")
    return importlib.import_module(TARGETS[name])


def load_target(name: str) -> Callable[[], Rig]:
    """The rig factory of op-stream target ``name``.

    Raises:
        ValueError: unknown target, or a byte-stream target (it has no rig).
    """
    module = _module(name)
    build: Callable[[], Rig] | None = getattr(module, "build", None)
    if build is None:
        raise ValueError(f"fuzz target {name!r} is a byte-stream target; use load_executor")
    return build


def load_executor(name: str) -> Executor:
    """How to run one input of target ``name`` (rule 1).

    Raises:
        ValueError: unknown target.
    """
    module = _module(name)
    execute_input: Executor | None = getattr(module, "execute_input", None)
    if execute_input is not None:
        return execute_input
    return functools.partial(_execute_rig, module.build)


def _execute_rig(
    build: Callable[[], Rig], data: bytes, *, trace: Callable[[str], None] | None = None, **options: Any
) -> None:
    program = decode(data)
    if trace is not None:
        trace(f"RAM seed {program.ram_seed:#010x}, {len(program.ops)} ops")
    execute(build, program, trace=trace, **options)


def corpus_dir(name: str) -> Path:
    """The committed seed corpus of a target."""
    return FUZZ_DIR / "corpus" / name


class Stats:
    """Counters of one run."""

    def __init__(self) -> None:
        self.execs = 0
        self.start = time.monotonic()
        self.corpus = 0
        self.coverage = 0
        self.features = 0
        self.findings: dict[str, str] = {}

    def line(self) -> str:
        """The progress line."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        cov = f"cov {self.coverage} ft {self.features}" if self.features else f"cov {self.coverage} lines"
        return (
            f"#{self.execs} execs {self.execs / elapsed:.0f}/s corpus {self.corpus} "
            f"{cov} findings {len(self.findings)} elapsed {elapsed:.0f}s"
        )


class _LineCoverage:
    """Lines of the device packages executed (rule 2)."""

    def __init__(self) -> None:
        self.lines: set[tuple[str, int]] = set()
        self._new = 0

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            key = (frame.f_code.co_filename, frame.f_lineno)
            if key not in self.lines:
                self.lines.add(key)
                self._new += 1
        return self._local

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename.startswith(_COVERED_PACKAGES):
            return self._local
        return None

    def run(self, action: Callable[[], None]) -> int:
        """Run ``action`` under tracing; return how many new lines it reached."""
        self._new = 0
        sys.settrace(self._global)
        try:
            action()
        finally:
            sys.settrace(None)
        return self._new


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0xFFFF, 0x10000, 0x7FFF_FFFF, 0xFFFF_FFFF]


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    out = bytearray(data or b"\0\0\0\0")
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        pos = rng.randrange(len(out)) if out else 0
        if choice == 0 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[pos] = rng.randrange(256)
        elif choice == 2:
            value = rng.choice(_INTERESTING)
            out[pos:pos] = value.to_bytes(4, "little")
        elif choice == 3:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice == 4 and len(out) > 8:
            end = min(len(out), pos + rng.randint(1, 16))
            del out[pos:end]
        elif choice == 5 and len(out) > 4:
            start = rng.randrange(4, len(out))
            out[pos:pos] = out[start : start + rng.randint(1, 32)]
        elif choice == 6 and corpus:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            out = out[:pos] + bytearray(other[cut:])
    return bytes(out[: 4 + MAX_OPS * 16])


def _save(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def _run_atheris(
    name: str, seconds: int, work_corpus: Path, crashes: Path, stats: Stats, progress: Callable[[str], None]
) -> int:
    script = FUZZ_DIR / f"{name}_fuzzer.py"
    crashes.mkdir(parents=True, exist_ok=True)
    work_corpus.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(script),
        str(work_corpus),
        str(corpus_dir(name)),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={crashes}{os.sep}{name}-",
        "-print_final_stats=1",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    assert child.stderr is not None
    for raw in child.stderr:
        line = raw.rstrip("\n")
        progress(line)
        match = _STATUS.match(line)
        if match:
            stats.execs, stats.coverage, stats.features, stats.corpus = (int(g) for g in match.groups())
        elif line.startswith("stat::number_of_executed_units:"):
            stats.execs = int(line.split(":")[-1])
        elif "Test unit written to" in line:
            stats.findings[f"atheris-{len(stats.findings)}"] = line.rsplit(" ", 1)[-1]
    return child.wait()


def run(
    name: str,
    seconds: float,
    *,
    crashes: Path,
    work_corpus: Path | None = None,
    engine: str = "auto",
    seed: int = 0,
    max_execs: int | None = None,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Stats:
    """Fuzz target ``name`` for ``seconds`` (rule 2). Returns the run's counters."""
    with quiet_logs():
        return _run(name, seconds, crashes, work_corpus, engine, seed, max_execs, progress)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Silence logging (devices log refused guest input; at fuzzing rates that is noise)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _run(
    name: str,
    seconds: float,
    crashes: Path,
    work_corpus: Path | None,
    engine: str,
    seed: int,
    max_execs: int | None,
    progress: Callable[[str], None],
) -> Stats:
    executor = load_executor(name)
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "builtin"
    if engine == "atheris":
        stats = Stats()
        status = _run_atheris(name, int(seconds), work_corpus or crashes / f"{name}-corpus", crashes, stats, progress)
        if status != 0 and not stats.findings:
            stats.findings["atheris"] = f"exit status {status}; see {crashes}"
        return stats
    stats = Stats()
    rng = random.Random(seed)
    coverage = _LineCoverage()
    corpus = [p.read_bytes() for p in sorted(corpus_dir(name).glob("*"))] or [b"\0\0\0\0"]
    kept: list[bytes] = []
    deadline = time.monotonic() + seconds
    last_print = 0.0
    queue = list(corpus)
    while time.monotonic() < deadline and (max_execs is None or stats.execs < max_execs):
        data = queue.pop(0) if queue else _mutate(rng, rng.choice(corpus + kept), corpus + kept)
        try:
            new = coverage.run(functools.partial(executor, data))
        except Finding as finding:
            digest = hashlib.sha1(data).hexdigest()[:12]
            if finding.kind not in stats.findings:
                path = _save(crashes, f"{name}-{finding.kind}-{digest}", data)
                stats.findings[finding.kind] = str(path)
                progress(f"FINDING {finding.kind}: {finding.detail.splitlines()[0]} -> {path}")
            new = 0
        stats.execs += 1
        if new:
            kept.append(data)
            if work_corpus is not None:
                _save(work_corpus, hashlib.sha1(data).hexdigest(), data)
        stats.corpus = len(corpus) + len(kept)
        stats.coverage = len(coverage.lines)
        now = time.monotonic()
        if now - last_print >= 1.0:
            last_print = now
            progress(stats.line())
    progress(stats.line())
    return stats


def repro(path: Path, name: str | None = None, out: Callable[[str], None] = print) -> Finding | None:
    """Replay one input with a readable op trace; return the finding, if any (rule 3)."""
    if name is None:
        name = next((t for t in TARGETS if path.name.startswith(f"{t}-")), None)
        if name is None:
            raise ValueError(f"cannot tell the target of {path.name}; pass --target")
    executor = load_executor(name)
    out(f"target {name}, input {path.name}")
    try:
        executor(path.read_bytes(), check_memory=True, trace=out)
    except Finding as finding:
        out(f"FINDING {finding.kind}: {finding.detail}")
        return finding
    out("no finding: every oracle held")
    return None
