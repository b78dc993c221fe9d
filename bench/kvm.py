"""``python -m bench kvm``: our devices inside KVM in this process (``kvm.KvmMachine``).

Four parts, each a median over ``--runs`` runs:

- ``exits``: guest accesses per second through our bus — MMIO reads, MMIO writes, port
  writes — from the payloads' ring 3 (which kvm_pvm runs natively) and ring 0 (which it
  emulates), beside a bare ``KVM_RUN`` loop that answers each MMIO read without any bus,
  runner or Python object in between (the KVM round trip alone), and beside writes that an
  ioeventfd takes without an exit.
- ``threads``: what the vCPU-on-the-loop-thread design (``kvm/_vmm.py`` rule 2) costs
  and saves: the kick latency (another thread makes a loop descriptor readable while the
  guest spins; time until the vCPU thread runs its callback) against the hand-off round
  trip that the other design (vCPU on its own thread, devices on the loop's) pays on every
  exit.
- ``msi``: one MSI into KVM by ``KVM_SIGNAL_MSI`` against one eventfd write on an irqfd route.
- ``ops``: the same testdev operations (register read, register write, a 4 KiB DMA copy of
  five register accesses), issued by the same guest payload, with the device in this
  process and with the device served over vfio-user by ``devmodels vfio-user`` (the
  ``passthrough.user`` client as the machine's PCI function); ratio vfio-user / in-process.
  The same operations issued by host code straight on the bus (no guest) show what the
  exits add.

Needs /dev/kvm and gcc. Output: a table, or with ``--json`` one JSON object, with the host's
load average before and after (``bench.common.run_main``). Exit status 0 with figures; 1
(naming what failed) when a run fails or KVM is not usable.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import BenchFailure, run_main
from devmodels import Machine
from kvm import abi, KvmMachine, RunResult, unavailable
from kvm.payloads import build, compiler_missing

__all__ = ["main"]

REGISTER = 0xD000_0000
PORT = 0x500
PORT_MARK = 0xF8  # testdev_ops.c
KINDS = {"mmio-read": 0, "mmio-write": 1, "pio-write": 2}
ROOT = Path(__file__).resolve().parent.parent


class _Register:
    """A minimal bus device: what an exit reaches at the end of our dispatch."""

    def __init__(self) -> None:
        self.accesses = 0

    def read(self, offset: int, size: int) -> int:
        self.accesses += 1
        return 7

    def write(self, offset: int, size: int, value: int) -> None:
        self.accesses += 1


class _Marks:
    """PORT_MARK: the host's clock at each phase boundary of testdev_ops."""

    def __init__(self) -> None:
        self.at: dict[int, int] = {}

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.at[value] = time.perf_counter_ns()


def _passed(result: RunResult, what: str) -> RunResult:
    if not result.passed:
        raise BenchFailure(f"{what}: {result.describe()}")
    return result


# -- exits -------------------------------------------------------------------------------------------


def _exit_rate(payload: Path, kind: int, count: int, *, ioeventfd: bool = False) -> float:
    with KvmMachine(ram_size=32 << 20) as vmm:
        register = _Register()
        vmm.machine.mmio.register(REGISTER, 0x1000, register, "register")
        vmm.machine.pio.register(PORT, 4, register, "port")
        if ioeventfd and not vmm.add_ioeventfd(REGISTER, 4, 0):
            raise BenchFailure("KVM refused the ioeventfd")
        vmm.load(payload)
        vmm.write_symbol("exits_config", struct.pack("<4Q", REGISTER, count, PORT, kind))
        start = time.perf_counter()
        _passed(vmm.run(timeout=600), f"exits kind {kind}")
        seconds = time.perf_counter() - start
        if not ioeventfd and register.accesses != count:
            raise BenchFailure(f"exits kind {kind}: {register.accesses} accesses reached the bus, not {count}")
        return count / seconds


def _bare_rate(payload: Path, count: int) -> float:
    """MMIO reads answered straight in ``kvm_run``: the KVM round trip with nothing of ours."""
    with KvmMachine(ram_size=32 << 20) as vmm:
        vmm.load(payload)
        vmm.write_symbol("exits_config", struct.pack("<4Q", REGISTER, count, PORT, 0))
        fd, page = vmm.vcpu.fd, vmm.vcpu.run_page
        request = abi.IOCTLS["KVM_RUN"]
        reason_at, data_at = abi.KVM_RUN_EXIT_REASON, abi.KVM_RUN_UNION + 8
        seen = 0
        start = time.perf_counter()
        while seen < count:
            fcntl.ioctl(fd, request, 0)
            if struct.unpack_from("<I", page, reason_at)[0] == 6:  # KVM_EXIT_MMIO
                page[data_at : data_at + 4] = b"\x07\x00\x00\x00"
                seen += 1
        return count / (time.perf_counter() - start)


def bench_exits(work: Path, runs: int, count: int) -> dict[str, Any]:
    ring3, ring0 = build("exits", work), build("exits", work, defines=("RING0",))
    out: dict[str, Any] = {"count": count}
    for ring, payload in (("ring3", ring3), ("ring0", ring0)):
        for name, kind in KINDS.items():
            out[f"{ring}_{name}_per_s"] = statistics.median(_exit_rate(payload, kind, count) for _ in range(runs))
        out[f"{ring}_bare_mmio_read_per_s"] = statistics.median(_bare_rate(payload, count) for _ in range(runs))
        out[f"{ring}_ioeventfd_write_per_s"] = statistics.median(
            _exit_rate(payload, 4, count * 10, ioeventfd=True) for _ in range(runs))
        full, bare = out[f"{ring}_mmio-read_per_s"], out[f"{ring}_bare_mmio_read_per_s"]
        out[f"{ring}_dispatch_us"] = (1 / full - 1 / bare) * 1e6
    return out


# -- threads -----------------------------------------------------------------------------------------


def _kick_latency(payload: Path, samples: int) -> list[float]:
    """µs from an eventfd write on another thread to its loop callback on the vCPU thread,
    while the guest spins in ring 3 (so only the kick gets the vCPU out of KVM_RUN)."""
    with KvmMachine(ram_size=32 << 20) as vmm:
        vmm.load(payload)
        vmm.write_symbol("exits_config", struct.pack("<4Q", 0, 1 << 62, 0, 3))
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        sent: list[int] = []
        latencies: list[float] = []
        done = threading.Event()

        def on_ready() -> None:
            os.eventfd_read(efd)
            latencies.append((time.perf_counter_ns() - sent[-1]) / 1e3)
            if len(latencies) >= samples:
                done.set()
                vmm.request_stop()

        def poke() -> None:
            while not done.is_set():
                time.sleep(0.002)
                sent.append(time.perf_counter_ns())
                os.eventfd_write(efd, 1)

        vmm.loop.add_reader(efd, on_ready)
        poker = threading.Thread(target=poke, daemon=True)
        poker.start()
        result = vmm.run(timeout=60)
        done.set()
        poker.join()
        vmm.loop.remove_reader(efd)
        os.close(efd)
        if result.reason != "stopped":
            raise BenchFailure(f"kick: {len(latencies)} of {samples} callbacks; {result.describe()}")
        return latencies


def _handoff(samples: int) -> list[float]:
    """µs for one exit handed to another thread and answered (eventfd ping-pong)."""
    ping, pong = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)

    def loop_thread() -> None:
        for _ in range(samples):
            os.eventfd_read(ping)
            os.eventfd_write(pong, 1)

    thread = threading.Thread(target=loop_thread, daemon=True)
    thread.start()
    times = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        os.eventfd_write(ping, 1)
        os.eventfd_read(pong)
        times.append((time.perf_counter_ns() - start) / 1e3)
    thread.join()
    os.close(ping)
    os.close(pong)
    return times


def bench_threads(work: Path, runs: int, samples: int) -> dict[str, Any]:
    payload = build("exits", work)
    kicks = [statistics.median(_kick_latency(payload, samples)) for _ in range(runs)]
    handoffs = [statistics.median(_handoff(samples * 10)) for _ in range(runs)]
    return {"kick_latency_us": statistics.median(kicks), "handoff_round_trip_us": statistics.median(handoffs),
            "samples": samples}


# -- msi ---------------------------------------------------------------------------------------------


def bench_msi(runs: int, count: int) -> dict[str, Any]:
    def per_call(mode: str) -> float:
        with KvmMachine(ram_size=4 << 20, msi=mode) as vmm:  # type: ignore[arg-type]
            deliver = vmm.interrupts.msi
            from devmodels import MsiMessage

            message = MsiMessage(0xFEE0_0000, 0x40)
            deliver(message)  # the irqfd route is made by the first message
            start = time.perf_counter()
            for _ in range(count):
                deliver(message)
            return (time.perf_counter() - start) / count * 1e6

    signal_us = statistics.median(per_call("signal") for _ in range(runs))
    irqfd_us = statistics.median(per_call("irqfd") for _ in range(runs))
    return {"signal_msi_us": signal_us, "irqfd_us": irqfd_us, "count": count}


# -- ops: in-process against vfio-user ------------------------------------------------------------------


def _guest_ops(vmm: KvmMachine, payload: Path, count: int) -> list[float]:
    marks = _Marks()
    vmm.machine.pio.register(PORT_MARK, 4, marks, "mark")
    vmm.machine.enumerate()
    vmm.load(payload)
    vmm.write_symbol("ops_config", struct.pack("<2Q", count, 4096))
    _passed(vmm.run(timeout=600), "testdev_ops")
    return [(marks.at[phase + 1] - marks.at[phase]) / count / 1e3 for phase in (1, 2, 3)]


def _host_ops(machine: Machine, count: int) -> list[float]:
    """The same operations issued by host code on the machine's bus (no guest, no exits)."""
    info = next(i for i in machine.enumerate() if i.vendor_id == 0x1234)
    bar0 = next(b.address for b in info.bars if b.index == 0)
    assert bar0 is not None
    bus = machine.mmio
    times = []
    start = time.perf_counter_ns()
    for _ in range(count):
        bus.read(bar0, 4)
    times.append(time.perf_counter_ns() - start)
    start = time.perf_counter_ns()
    for i in range(count):
        bus.write(bar0 + 4, 4, i)
    times.append(time.perf_counter_ns() - start)
    start = time.perf_counter_ns()
    for _ in range(count):
        bus.write(bar0 + 0x20, 4, 0x10_0000)
        bus.write(bar0 + 0x28, 4, 0x20_0000)
        bus.write(bar0 + 0x30, 4, 4096)
        bus.write(bar0 + 0x34, 4, 1)
        bus.read(bar0 + 0x38, 4)
    times.append(time.perf_counter_ns() - start)
    return [t / count / 1e3 for t in times]


class _VfioUserServer:
    """``devmodels vfio-user --device=testdev`` in its own process."""

    def __init__(self, work: Path) -> None:
        self.path = work / "testdev.sock"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "devmodels", "vfio-user", f"--socket-path={self.path}",
                                      "--device=testdev"], env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "serving testdev" not in line:
            self.close()
            raise BenchFailure(f"devmodels vfio-user did not start: {line.strip()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _attach_vfio_user(machine: Machine, server: _VfioUserServer) -> Any:
    from passthrough import VfioPciDevice
    from passthrough.user import VfioUserClient

    device = VfioPciDevice(VfioUserClient.connect(str(server.path), timeout=30))
    device.map_memory(machine.memory)
    return device


def bench_ops(work: Path, runs: int, count: int) -> dict[str, Any]:
    from harness.serve.registry import add_to_machine

    payload = build("testdev_ops", work)
    sides: dict[str, list[list[float]]] = {"inprocess": [], "vfio_user": [], "host_inprocess": [],
                                           "host_vfio_user": []}
    server = _VfioUserServer(work)
    try:
        for _ in range(runs):
            with KvmMachine(ram_size=32 << 20) as vmm:
                built = add_to_machine(vmm.machine, "testdev")
                vmm.serve(built.served, built.function)
                sides["inprocess"].append(_guest_ops(vmm, payload, count))
            with KvmMachine(ram_size=32 << 20) as vmm:
                device = _attach_vfio_user(vmm.machine, server)
                vmm.add_pci(device)
                sides["vfio_user"].append(_guest_ops(vmm, payload, count))
                device.close()
            with Machine(ram_size=32 << 20, ram_backing="memfd") as machine:
                built = add_to_machine(machine, "testdev")
                sides["host_inprocess"].append(_host_ops(machine, count))
            with Machine(ram_size=32 << 20, ram_backing="memfd") as machine:
                device = _attach_vfio_user(machine, server)
                machine.add_pci(device)
                sides["host_vfio_user"].append(_host_ops(machine, count))
                device.close()
    finally:
        server.close()
    out: dict[str, Any] = {"count": count, "runs": runs}
    for side, samples in sides.items():
        for index, op in enumerate(("read", "write", "dma4k")):
            out[f"{side}_{op}_us"] = statistics.median(s[index] for s in samples)
    for op in ("read", "write", "dma4k"):  # bench.common rule 3: the run count beside every ratio
        out[f"ratio_{op}"] = out[f"vfio_user_{op}_us"] / out[f"inprocess_{op}_us"]
        out[f"host_ratio_{op}"] = out[f"host_vfio_user_{op}_us"] / out[f"host_inprocess_{op}_us"]
        out[f"ratio_{op}_runs"] = out[f"host_ratio_{op}_runs"] = runs
    return out


# -- output --------------------------------------------------------------------------------------------


def _table(results: dict[str, dict[str, Any]], runs: int) -> list[str]:
    lines = [f"devmodels in KVM, in process (median of {runs} run{'s' if runs != 1 else ''})"]
    if "exits" in results:
        e = results["exits"]
        lines.append(f"exits per second through our bus ({e['count']} accesses a run):")
        lines.append(f"  {'':<28}{'ring 3 (native)':>18}{'ring 0 (emulated)':>20}")
        for name in (*KINDS, "bare_mmio_read", "ioeventfd_write"):
            key = name if name in KINDS else name
            lines.append(f"  {key:<28}{e[f'ring3_{key}_per_s']:>18,.0f}{e[f'ring0_{key}_per_s']:>20,.0f}")
        lines.append(f"  {'our dispatch per exit (us)':<28}{e['ring3_dispatch_us']:>18.1f}{e['ring0_dispatch_us']:>20.1f}")
    if "threads" in results:
        t = results["threads"]
        lines.append(f"kick latency (loop descriptor -> callback on the vCPU thread): {t['kick_latency_us']:.1f} us")
        lines.append(f"hand-off round trip to another thread (paid per exit otherwise): {t['handoff_round_trip_us']:.1f} us")
    if "msi" in results:
        m = results["msi"]
        lines.append(f"one MSI: KVM_SIGNAL_MSI {m['signal_msi_us']:.2f} us, irqfd write {m['irqfd_us']:.2f} us")
    if "ops" in results:
        o = results["ops"]
        lines.append(f"testdev operations, us each ({o['count']} a run):")
        lines.append(f"  {'':<10}{'in-process':>12}{'vfio-user':>12}{'ratio':>8}   {'host bus':>10}{'host vfio-user':>16}{'ratio':>8}")
        for op in ("read", "write", "dma4k"):
            lines.append(f"  {op:<10}{o[f'inprocess_{op}_us']:>12.1f}{o[f'vfio_user_{op}_us']:>12.1f}"
                         f"{o[f'ratio_{op}']:>8.2f}   {o[f'host_inprocess_{op}_us']:>10.1f}"
                         f"{o[f'host_vfio_user_{op}_us']:>16.1f}{o[f'host_ratio_{op}']:>8.2f}")
    return lines


PARTS: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {
    "exits": lambda work, a: bench_exits(work, a.runs, a.count),
    "threads": lambda work, a: bench_threads(work, a.runs, a.samples),
    "msi": lambda work, a: bench_msi(a.runs, a.count),
    "ops": lambda work, a: bench_ops(work, a.runs, a.ops),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts; print a table or JSON (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench kvm", description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--count", type=int, default=20000, help="accesses per exit-rate run, MSIs per msi run")
    parser.add_argument("--ops", type=int, default=2000, help="operations per testdev phase")
    parser.add_argument("--samples", type=int, default=200, help="kick latency samples per run")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.count < 1 or args.ops < 1 or args.samples < 1:
        parser.error("--runs, --count, --ops and --samples must be positive")
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    def body() -> tuple[dict[str, Any], list[str]]:
        reason = unavailable() or compiler_missing()
        if reason is not None:
            raise BenchFailure(reason)
        results: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="bench-kvm-") as tmp:
            for part in args.parts or list(PARTS):
                results[part] = PARTS[part](Path(tmp), args)
        return {"runs": args.runs, **results}, _table(results, args.runs)

    return run_main("kvm", args.json, body)


if __name__ == "__main__":
    sys.exit(main())
