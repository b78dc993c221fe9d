"""``python -m bench rings``: nanoseconds per chain to pop and push full virtqueue rings.

For each layout (split, packed) and each ring implementation (Cython, pure Python), a
driver simulator (``virtio.testing``) fills a ring of ``--size`` descriptors with chains
of ``--descriptors`` descriptors (one device-readable, the rest device-writable), then
the timed part runs: ``pop_batch`` of everything, then ``push_batch`` of everything.
Refilling by the driver is not timed. The figure is the median over ``--rounds`` full
rings of (pop + push time) / chains.

Output: one table line per layout, or with ``--json`` one JSON object per layout per line
with ``layout``, ``cython_ns``, ``python_ns``, ``ratio`` (python_ns / cython_ns) and the
parameters. ``cython_ns`` and ``ratio`` are ``null`` when the extension is not built
(build it with ``python3 setup.py build_ext --inplace``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from devmodels import GuestMemory, MemoryRegion
from virtio.queue import RingC, RingPy, Virtqueue
from virtio.testing import make_driver

__all__ = ["main", "measure"]


def measure(
    ring: Any, *, packed: bool, size: int, descriptors: int, rounds: int, indirect: bool = False
) -> dict[str, float]:
    """Median ns per chain for pop, push and both, over ``rounds`` full rings.

    The simulated driver fills the ring twice; the driver-owned ring bytes after each of
    those two fills are the images the later rounds restore (the driver reuses the same
    descriptors and buffers, so its writes repeat with period two), which keeps the
    untimed part cheap.
    """
    memory = GuestMemory([MemoryRegion.anonymous(0, 16 << 20)])
    driver = make_driver(memory, size, packed=packed, data_size=8 << 20)
    queue = Virtqueue(size, packed=packed, ring=ring)
    driver.configure(queue)
    chains_per_ring = size if indirect else size // descriptors
    # Fixed buffers: one 64-byte readable, then 512-byte writables.
    buffers = []
    for _ in range(chains_per_ring):
        readable = [(driver.alloc(64), 64)]
        writable = [(driver.alloc(512), 512) for _ in range(descriptors - 1)]
        buffers.append((readable, writable))
    layout = driver.layout
    start = layout.desc_addr
    end = layout.driver_addr + (4 if packed else 6 + 2 * size)
    images = []
    pops, pushes = [], []
    for number in range(rounds + 2):
        if number < 2:
            for readable, writable in buffers:
                driver.add(readable, writable, indirect=indirect)
            driver.kick()
            images.append(memory.read(start, end - start))
        else:
            memory.write(start, images[number % 2])
            if not packed:  # the available idx keeps counting up
                memory.store_u16(layout.driver_addr + 2, (chains_per_ring * (number + 1)) & 0xFFFF)
        t0 = time.perf_counter_ns()
        chains = queue.pop_batch(memory, size)
        t1 = time.perf_counter_ns()
        used = [(chain, 0) for chain in chains]
        t2 = time.perf_counter_ns()
        queue.push_batch(memory, used)
        t3 = time.perf_counter_ns()
        if len(chains) != chains_per_ring or queue.broken:
            raise RuntimeError(f"benchmark ring did not round-trip: {queue.broken_reason}")
        if number < 2:
            if len(driver.reap()) != chains_per_ring:
                raise RuntimeError("the driver did not get its buffers back")
            continue
        pops.append((t1 - t0) / chains_per_ring)
        pushes.append((t3 - t2) / chains_per_ring)
    return {
        "pop_ns": statistics.median(pops),
        "push_ns": statistics.median(pushes),
        "ns": statistics.median(a + b for a, b in zip(pops, pushes, strict=True)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print a table or JSON lines."""
    parser = argparse.ArgumentParser(prog="python -m bench rings", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per layout per line")
    parser.add_argument("--size", type=int, default=256, help="queue size (default 256)")
    parser.add_argument("--descriptors", type=int, default=2, help="descriptors per chain (default 2)")
    parser.add_argument("--indirect", action="store_true", help="one indirect descriptor per chain")
    parser.add_argument("--rounds", type=int, default=2000, help="full rings timed for the Cython path")
    parser.add_argument("--python-rounds", type=int, default=100, help="full rings timed for the Python path")
    args = parser.parse_args(argv)
    if args.size < 1 or args.size & (args.size - 1) or not 2 <= args.descriptors <= args.size:
        parser.error("--size must be a power of two and 2 <= --descriptors <= --size")
    if RingC is None:
        print(
            "bench rings: the Cython ring extension is not built (or DEVMODELS_NO_EXTENSIONS is set); "
            "run `python3 setup.py build_ext --inplace`. Reporting the pure-Python path only.",
            file=sys.stderr,
        )
    for layout in ("split", "packed"):
        packed = layout == "packed"
        common = {"packed": packed, "size": args.size, "descriptors": args.descriptors, "indirect": args.indirect}
        py = measure(RingPy, rounds=args.python_rounds, **common)
        cy = measure(RingC, rounds=args.rounds, **common) if RingC is not None else None
        ratio = py["ns"] / cy["ns"] if cy else None
        record = {
            "layout": layout,
            "cython_ns": round(cy["ns"], 1) if cy else None,
            "python_ns": round(py["ns"], 1),
            "ratio": round(ratio, 1) if ratio else None,
            "cython_pop_ns": round(cy["pop_ns"], 1) if cy else None,
            "cython_push_ns": round(cy["push_ns"], 1) if cy else None,
            "python_pop_ns": round(py["pop_ns"], 1),
            "python_push_ns": round(py["push_ns"], 1),
            "queue_size": args.size,
            "descriptors_per_chain": args.descriptors,
            "indirect": args.indirect,
            "chains_per_ring": args.size if args.indirect else args.size // args.descriptors,
        }
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            cython = f"{record['cython_ns']:8.1f}" if cy else "   (not built)"
            ratio_text = f"{record['ratio']:6.1f}x" if ratio else "   n/a"
            print(
                f"{layout:6}  size {args.size}  {record['chains_per_ring']} chains x {args.descriptors} desc"
                f"{' (indirect)' if args.indirect else ''}:  cython {cython} ns/chain  "
                f"python {record['python_ns']:8.1f} ns/chain  ratio {ratio_text}",
                flush=True,
            )
    return 0
