"""``python -m fuzz``: list targets, run one, replay a reproducer, smoke-test them all, or
rewrite the committed seed corpora (``seeds``: each target's ``seeds()``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

from ._runner import TARGETS, corpus_dir, load_executor, quiet_logs, repro, run
from ._rig import Finding


def smoke_seed(given: int | None) -> int:
    """The built-in engine's RNG seed for a smoke run: ``given``, else a fresh one from
    ``os.urandom``, so that each CI run explores new inputs instead of replaying the last."""
    return given if given is not None else int.from_bytes(os.urandom(4), "little")


def _smoke(names: list[str], seconds: float, rng_seed: int) -> int:
    """Replay every seed, then fuzz briefly with the built-in engine (CI's smoke pass).

    ``rng_seed`` (the engine's) is printed first, with the command that runs the same smoke again.
    """
    print(f"fuzz smoke: seed {rng_seed} (again: python -m fuzz smoke --seed {rng_seed} --time {seconds:g}"
          f"{''.join(' ' + n for n in names) if names != sorted(TARGETS) else ''})", flush=True)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, quiet_logs():
        for name in names:
            executor = load_executor(name)
            seeds = sorted(corpus_dir(name).glob("*"))
            for seed in seeds:
                try:
                    executor(seed.read_bytes(), check_memory=True)
                except Finding as finding:
                    print(f"{name}: seed {seed.name}: {finding}", file=sys.stderr)
                    failed += 1
            stats = run(name, seconds, crashes=Path(tmp), engine="builtin", seed=rng_seed, progress=lambda line: None)
            print(f"{name}: {len(seeds)} seeds, {stats.line()}")
            for kind, path in stats.findings.items():
                print(f"{name}: FINDING {kind} (seed {rng_seed}): {Path(path).read_bytes().hex()}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


def _seeds(names: list[str]) -> int:
    """Write each target's ``seeds()`` into its corpus directory (other files are kept)."""
    for name in names:
        module = importlib.import_module(TARGETS[name])
        make = getattr(module, "seeds", None)
        if make is None:
            print(f"{name}: no seeds() (hand-written corpus kept)")
            continue
        directory = corpus_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        made = make()
        for seed_name, data in made.items():
            (directory / seed_name).write_bytes(data)
        print(f"{name}: {len(made)} seeds written to {directory}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the targets")
    p_run = sub.add_parser("run", help="fuzz one target")
    p_run.add_argument("target", choices=sorted(TARGETS))
    p_run.add_argument("--time", type=float, default=60, help="seconds (default 60)")
    p_run.add_argument("--engine", choices=("auto", "atheris", "builtin"), default="auto")
    p_run.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"), help="where reproducers go")
    p_run.add_argument("--corpus", type=Path, default=None, help="working corpus directory")
    p_run.add_argument("--seed", type=int, default=0, help="RNG seed of the built-in engine")
    p_repro = sub.add_parser("repro", help="replay one input with an op trace")
    p_repro.add_argument("file", type=Path)
    p_repro.add_argument("--target", choices=sorted(TARGETS))
    p_smoke = sub.add_parser("smoke", help="replay seeds and fuzz each target briefly")
    p_smoke.add_argument("--time", type=float, default=3)
    p_smoke.add_argument("--seed", type=int, default=None,
                         help="RNG seed of the built-in engine (default: a fresh one, printed)")
    p_smoke.add_argument("targets", nargs="*")
    p_seeds = sub.add_parser("seeds", help="rewrite the committed seed corpora from the targets' seed scripts")
    p_seeds.add_argument("targets", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(sorted(TARGETS)))
        return 0
    if args.command == "run":
        stats = run(args.target, args.time, crashes=args.crashes, work_corpus=args.corpus, engine=args.engine, seed=args.seed)
        return 1 if stats.findings else 0
    if args.command == "repro":
        return 1 if repro(args.file, args.target) else 0
    if args.command == "seeds":
        return _seeds(args.targets or sorted(TARGETS))
    return _smoke(args.targets or sorted(TARGETS), args.time, smoke_seed(args.seed))


if __name__ == "__main__":
    sys.exit(main())
