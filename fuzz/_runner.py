"""Local fuzzing: atheris (libFuzzer) when installed, else a built-in mutator.

Rules:

1. Targets are named in ``TARGETS`` (name -> module with ``build`` and ``TestOneInput``);
   each module is also a standalone OSS-Fuzz fuzzer (``fuzz/<name>_fuzzer.py``).
2. With atheris, ``run`` starts the fuzzer script as a child process with libFuzzer flags
   (its own status lines carry execs/s and coverage). Without it, the built-in loop mutates
   the corpus with a seeded RNG, keeps inputs that reach new lines of the device packages
   (line coverage via ``sys.settrace`` limited to those files) and prints a progress line
   every second.
3. Every finding is written to the crash directory as ``<target>-<kind>-<sha1>``; ``repro``
   replays one with a readable op trace.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ._execute import execute
from ._ops import MAX_OPS, decode
from ._rig import Finding, Rig

__all__ = ["TARGETS", "load_target", "run", "repro", "corpus_dir", "Stats"]

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent

TARGETS: dict[str, str] = {
    "testdev": "fuzz.testdev_fuzzer",
}

_COVERED_PACKAGES = tuple(str(ROOT / p) + os.sep for p in ("devmodels", "virtio", "passthrough"))


def load_target(name: str) -> Callable[[], Rig]:
    """The rig factory of target ``name``.

    Raises:
        ValueError: unknown target.
    """
    if name not in TARGETS:
        raise ValueError(f"unknown fuzz target {name!r}; known: {', '.join(sorted(TARGETS))}")
    module = importlib.import_module(TARGETS[name])
    build: Callable[[], Rig] = module.build
    return build


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
        self.findings: dict[str, str] = {}

    def line(self) -> str:
        """The progress line."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return (
            f"#{self.execs} execs {self.execs / elapsed:.0f}/s corpus {self.corpus} "
            f"cov {self.coverage} lines findings {len(self.findings)} elapsed {elapsed:.0f}s"
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


def _run_atheris(name: str, seconds: int, work_corpus: Path, crashes: Path, jobs_args: list[str]) -> int:
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
        *jobs_args,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.call(cmd, env=env)


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
    factory = load_target(name)
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "builtin"
    if engine == "atheris":
        status = _run_atheris(name, int(seconds), work_corpus or crashes / f"{name}-corpus", crashes, [])
        stats = Stats()
        if status not in (0,):
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
        program = decode(data)
        try:
            new = coverage.run(functools.partial(execute, factory, program))
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
    factory = load_target(name)
    program = decode(path.read_bytes())
    out(f"target {name}, RAM seed {program.ram_seed:#010x}, {len(program.ops)} ops")
    try:
        execute(factory, program, check_memory=True, trace=out)
    except Finding as finding:
        out(f"FINDING {finding.kind}: {finding.detail}")
        return finding
    out("no finding: every oracle held")
    return None
