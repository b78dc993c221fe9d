"""``KvmMachine``: a ``devmodels.Machine`` run by KVM in this process, its exits dispatched to
the machine's buses and its devices served by the one device runtime.

Rules:

1. Guest RAM is the machine's ``GuestMemory`` (memfd by default), mapped into the VM as is:
   the guest and our devices' DMA see the same pages. Accesses KVM cannot complete itself
   exit to us: port I/O goes to ``machine.pio``, MMIO to ``machine.mmio`` — the buses every
   other attachment of our devices uses, with their splitting, unmapped-access and
   re-entrancy rules. The in-kernel irqchip handles the I/O APIC and local APIC windows.
2. Threads: the vCPU runs on the thread that calls ``run`` — the device loop's thread — so
   an exit is dispatched with no hand-over, and every call into a device happens on one
   thread (``ServedDevice`` rule 2). ``DeviceRunner.before_access``/``after_access``
   bracket each access that reaches a served device. While the guest runs or halts, a
   ``Kicker`` thread watches the loop's descriptors and next deadline and interrupts
   ``KVM_RUN`` when they are due; the vCPU thread then runs the loop once.
   (``bench/kvm.py`` measures this against handing every exit to another thread.)
3. Interrupts go to KVM's irqchip as ``KvmInterrupts`` says: INTx by ``KVM_IRQ_LINE``,
   MSI/MSI-X by irqfds (default) or ``KVM_SIGNAL_MSI``.
4. ``add_ioeventfd`` turns guest writes of one value at one address into an eventfd KVM
   signals without an exit; the loop replays them as one bus write when it runs
   (coalesced: right for doorbells such as virtio notifications, whose repetition means
   nothing more). Where KVM refuses, it returns ``False`` and the write keeps exiting.
5. The payload talks to the host through two ports on ``machine.pio``: ``PORT_CONSOLE``
   (text, bounded) and ``PORT_EXIT`` (a 32-bit status that ends the run). ``run`` also
   ends on a timeout, on ``request_stop`` (from a loop callback or any thread), a shutdown
   (triple fault) or a KVM error; the ``RunResult`` names the reason and where the vCPU
   stopped (``ElfImage.name_of`` its RIP).
6. A guest access the buses cannot take (a port access past 0xFFFF) is an unmapped access
   (reads all-ones, writes dropped) with a ``kvm.bad_access`` event, never an exception.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from devmodels import Bus, BusDevice, BusMapping, Machine, UsageError
from devmodels.trace import tracepoint
from devmodels.pci import PciFunction
from devmodels.runtime import DeviceRunner, ServedDevice

from . import abi as abi
from ._boot import BOOT_AREA, enter
from ._elf import ElfImage, Window
from ._ioctl import KvmError, run_ioctl
from ._irqs import KvmInterrupts, MsiMode
from ._kick import Kicker, VmmLoop
from ._system import DEV_KVM, Kvm
from ._vcpu import IO_EXIT, MMIO_EXIT
from ._vm import IDENTITY_MAP_ADDRESS, TSS_ADDRESS, Vm

__all__ = ["KvmMachine", "RunResult", "Results", "PORT_CONSOLE", "PORT_EXIT", "CONSOLE_LIMIT"]

PORT_CONSOLE = 0xE9
PORT_EXIT = 0xF4
CONSOLE_LIMIT = 1 << 20
IOAPIC_WINDOW = (0xFEC0_0000, 0x1000)
LAPIC_WINDOW = (0xFEE0_0000, 0x1000)
RESULTS_MAGIC = 0x5352_4D44  # "DMRS", rt.h
_RESULTS = struct.Struct("<IIII64Q")

_REASON = struct.Struct("<I")
_EXIT_IO, _EXIT_MMIO, _EXIT_INTR = 2, 6, 10
_MMIO_DATA = abi.KVM_RUN_UNION + 8

_tp_bad = tracepoint("kvm.bad_access")
_tp_stop = tracepoint("kvm.stop")


@dataclass(frozen=True)
class RunResult:
    """How a run ended (rule 5)."""

    reason: str  # "exit", "timeout", "stopped", "shutdown", "internal-error", "fail-entry", "unexpected-exit"
    status: int | None  # the value written to PORT_EXIT
    where: str  # where the vCPU stopped: function+offset, or the address
    detail: str
    console: str
    exits: int  # returns from KVM_RUN, those a kick caused included
    kicks: int  # how often the kicker interrupted KVM_RUN for the loop
    seconds: float

    @property
    def passed(self) -> bool:
        """The payload exited with status 0."""
        return self.reason == "exit" and self.status == 0

    def describe(self) -> str:
        """One paragraph for a failing test."""
        status = "" if self.status is None else f" status {self.status:#x}"
        return (f"run ended by {self.reason}{status} at {self.where} after {self.seconds:.3f} s, {self.exits} exits"
                f"{'; ' + self.detail if self.detail else ''}\nconsole:\n{self.console}")


@dataclass(frozen=True)
class Results:
    """The payload's ``results`` area (``rt.h``)."""

    magic: int
    checks: int
    failures: int
    first_failure_line: int
    values: tuple[int, ...]

    @property
    def valid(self) -> bool:
        """The payload wrote it."""
        return self.magic == RESULTS_MAGIC


class _Console:
    """PORT_CONSOLE: collects text, at most ``CONSOLE_LIMIT`` bytes (rule 5)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = 0

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if len(self.data) < CONSOLE_LIMIT:
            self.data.append(value & 0xFF)
        else:
            self.dropped += 1


class _ExitPort:
    """PORT_EXIT: a write ends the run with its value (rule 5)."""

    def __init__(self) -> None:
        self.status: int | None = None

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if self.status is None:
            self.status = value


class KvmMachine:
    """``machine`` (or a new one with ``ram_size`` bytes of memfd RAM) on a KVM VM with one vCPU.

    Args:
        machine: the machine to run; its RAM must be mmap-backed (memfd or anonymous).
        ram_size: RAM of the machine made when none is given.
        msi: how MSI/MSI-X reach KVM (``KvmInterrupts``): irqfd routes, falling back to
            ``KVM_SIGNAL_MSI`` (measured cheaper per message; kvm/README.md).
        kvm_path: the KVM device node.

    Raises:
        KvmError: KVM is missing or refuses the VM (names the ioctl and errno).
        UsageError: the machine's RAM cannot be mapped into a VM.
    """

    def __init__(self, machine: Machine | None = None, *, ram_size: int = 64 << 20, msi: MsiMode = "irqfd",
                 kvm_path: str = DEV_KVM) -> None:
        self._own_machine = machine is None
        self.machine = machine if machine is not None else Machine(ram_size, ram_backing="memfd")
        self.kvm: Kvm | None = None
        self.vm: Vm | None = None
        self.loop = VmmLoop()
        self._runners: dict[int, DeviceRunner] = {}
        self._owners: list[object] = []  # keeps owners alive, so their ids stay theirs
        self._eventfds: list[int] = []
        self.image: ElfImage | None = None
        self.exits = 0
        self._kicker: Kicker | None = None
        self._run_deadline = 0
        self._stop_requested = False
        self._loop_closed = False
        try:
            self.kvm = Kvm(kvm_path)
            self.vm = Vm(self.kvm)
            for region in self.machine.memory.regions:
                self.vm.add_memory(region)
            self.vcpu = self.vm.create_vcpu()
            self.interrupts = KvmInterrupts(self.vm, msi)
            for gsi, level in self.machine.irq.levels.items():
                if level:
                    self.interrupts.level(gsi, True)
            self.machine.irq.on_level.append(self.interrupts.level)
            self.machine.irq.on_msi.append(self.interrupts.msi)
            self.console = _Console()
            self._exit = _ExitPort()
            self._ports = [self.machine.pio.register(PORT_CONSOLE, 1, self.console, "kvm-console"),
                           self.machine.pio.register(PORT_EXIT, 4, self._exit, "kvm-exit")]
        except BaseException:
            self.close()
            raise

    # -- devices ------------------------------------------------------------------------------

    def serve(self, device: ServedDevice, owner: object | None = None) -> DeviceRunner:
        """Serve ``device`` on this machine's loop; exits that reach ``owner`` (the bus-side
        object: a ``PciFunction`` or a ``BusDevice``; default ``device``) are bracketed by its
        runner (rule 2). Call on the thread that will call ``run``."""
        runner = DeviceRunner(device, self.loop)
        runner.attach()
        key = owner if owner is not None else device
        self._runners[id(key)] = runner
        self._owners.append(key)
        return runner

    def add_pci(self, function: PciFunction, *, served: ServedDevice | None = None, slot: int | None = None) -> int:
        """Plug ``function`` and serve ``served`` (default: the function) for it; return the slot."""
        slot = self.machine.add_pci(function, slot)
        self.serve(served if served is not None else function, function)
        return slot

    def add_mmio(self, base: int, length: int, device: BusDevice, *, served: ServedDevice | None = None,
                 name: str = "") -> BusMapping:
        """Map ``device`` on the MMIO bus at ``base`` and serve ``served`` for it (if given)."""
        mapping = self.machine.mmio.register(base, length, device, name)
        if served is not None:
            self.serve(served, device)
        return mapping

    def add_ioeventfd(self, address: int, length: int, value: int, *, pio: bool = False) -> bool:
        """Let guest writes of ``value`` (``length`` bytes) at ``address`` signal an eventfd
        instead of exiting; each loop turn replays them as one bus write (rule 4).

        Returns whether KVM took it; ``False`` leaves the write on the exit path.
        """
        assert self.vm is not None
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self.vm.ioeventfd(fd, address, length, pio=pio, datamatch=value)
        except KvmError:
            os.close(fd)
            return False
        self._eventfds.append(fd)
        bus = self.machine.pio if pio else self.machine.mmio

        def replay() -> None:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                return
            self._access(bus, address, length, value)

        self.loop.add_reader(fd, replay)
        return True

    # -- payloads -----------------------------------------------------------------------------

    def reserved_windows(self) -> list[Window]:
        """What a payload may not be loaded over: the boot structures, every device window
        of the MMIO bus, the APICs and KVM's own pages (``ElfImage.check``)."""
        windows = [Window(*BOOT_AREA, "the boot page tables and GDT"),
                   Window(*IOAPIC_WINDOW, "the I/O APIC"), Window(*LAPIC_WINDOW, "the local APIC"),
                   Window(IDENTITY_MAP_ADDRESS, TSS_ADDRESS + 0x3000 - IDENTITY_MAP_ADDRESS, "KVM's TSS pages")]
        windows += [Window(m.base, m.length, f"device window {m.name}") for m in self.machine.mmio.mappings
                    if m.name != "ram"]
        return windows

    def load(self, payload: ElfImage | str | Path) -> ElfImage:
        """Load an ELF payload and point the vCPU at its entry in long mode (``kvm._boot``).

        Raises:
            ElfError: a bad file, or a segment outside RAM or over a reserved window.
        """
        image = payload if isinstance(payload, ElfImage) else ElfImage.from_file(payload)
        image.load(self.machine.memory, self.reserved_windows())
        enter(self.vcpu, self.machine.memory, image.entry)
        self.image = image
        self._exit.status = None  # a new payload: a new run (the devices keep their state)
        self.console.data.clear()
        return image

    def symbol_address(self, name: str) -> int:
        """The address of symbol ``name`` of the loaded payload."""
        if self.image is None:
            raise UsageError("no payload is loaded")
        return self.image.symbol(name).address

    def read_symbol(self, name: str, length: int | None = None) -> bytes:
        """The bytes of symbol ``name`` (its size, or ``length``) in guest RAM."""
        if self.image is None:
            raise UsageError("no payload is loaded")
        symbol = self.image.symbol(name)
        return self.machine.memory.read(symbol.address, symbol.size if length is None else length)

    def write_symbol(self, name: str, data: bytes) -> None:
        """Write ``data`` at symbol ``name`` (a payload's configuration), within its size."""
        if self.image is None:
            raise UsageError("no payload is loaded")
        symbol = self.image.symbol(name)
        if len(data) > symbol.size:
            raise UsageError(f"{len(data)} bytes do not fit symbol {name} ({symbol.size} bytes)")
        self.machine.memory.write(symbol.address, data)

    def results(self) -> Results:
        """The payload's ``results`` area."""
        magic, checks, failures, line, *values = _RESULTS.unpack(self.read_symbol("results", _RESULTS.size))
        return Results(magic, checks, failures, line, tuple(values))

    # -- running ------------------------------------------------------------------------------

    def run(self, timeout: float = 10.0) -> RunResult:
        """Run the payload until it writes ``PORT_EXIT`` or ``timeout`` seconds pass (rule 5).

        Raises:
            UsageError: no payload is loaded.
            KvmError: ``KVM_RUN`` failed.
        """
        if self.image is None:
            raise UsageError("load a payload before running")
        vcpu, page, loop = self.vcpu, self.vcpu.run_page, self.loop
        fd = vcpu.fd
        start = time.monotonic_ns()
        run_deadline = start + int(timeout * 1e9)
        kicker = Kicker(loop, vcpu, threading.get_ident())
        self._kicker, self._run_deadline = kicker, run_deadline
        kicker.retarget(self._next_deadline())
        stop: tuple[str, str] | None = None
        exits = 0
        try:
            while self._exit.status is None:
                reason = _REASON.unpack_from(page, abi.KVM_RUN_EXIT_REASON)[0] if run_ioctl(fd) else _EXIT_INTR
                exits += 1
                if reason == _EXIT_MMIO:
                    self._mmio(page)
                elif reason == _EXIT_IO:
                    self._pio(page)
                elif reason == _EXIT_INTR:
                    vcpu.clear_exit_request()
                    loop.run_once(0)
                    if self._stop_requested:
                        stop = ("stopped", "request_stop()")
                        break
                    if time.monotonic_ns() >= run_deadline:
                        stop = ("timeout", f"no exit within {timeout} s")
                        break
                    kicker.retarget(self._next_deadline())
                    kicker.serviced()
                else:
                    stop = self._stop_reason(reason, page)
                    break
        finally:
            kicker.close()
            self._kicker = None
            self._stop_requested = False
        self.exits += exits
        reason, detail = stop if stop is not None else ("exit", "")
        rip = vcpu.get_regs().rip
        if _tp_stop.on:
            _tp_stop.emit(reason=reason, rip=rip, exits=exits)
        return RunResult(
            reason=reason,
            status=self._exit.status,
            where=self.image.name_of(rip),
            detail=detail,
            console=self.console.data.decode("utf-8", "replace"),
            exits=exits,
            kicks=kicker.kicks,
            seconds=(time.monotonic_ns() - start) / 1e9,
        )

    def request_stop(self) -> None:
        """End the current (or next) ``run`` soon with reason ``"stopped"``; any thread (rule 5)."""
        self._stop_requested = True
        self.vcpu.request_exit()
        kicker = self._kicker
        if kicker is not None:
            kicker.retarget(0)  # wakes the kicker, whose due deadline interrupts KVM_RUN

    def _next_deadline(self) -> int:
        timer = self.loop.next_deadline_ns()
        return self._run_deadline if timer is None else min(timer, self._run_deadline)

    def _runner_for(self, bus: Bus, address: int) -> DeviceRunner | None:
        mapping = bus.find(address)
        if mapping is None:
            return None
        owner = mapping.device
        runner = self._runners.get(id(getattr(owner, "function", owner)))  # a BAR window's function
        return runner

    def _access(self, bus: Bus, address: int, size: int, value: int | None) -> int:
        """One guest access through ``bus``, bracketed by its device's runner (rule 2)."""
        if address + size > bus.limit:  # rule 6
            if _tp_bad.on:
                _tp_bad.emit(bus=bus.name, address=address, size=size)
            return (1 << (8 * size)) - 1
        runner = self._runner_for(bus, address) if self._runners else None
        if runner is None:
            if value is None:
                return bus.read(address, size)
            bus.write(address, size, value)
            return 0
        runner.before_access()
        if value is None:
            result = bus.read(address, size)
        else:
            bus.write(address, size, value)
            result = 0
        runner.after_access()
        kicker = self._kicker
        if kicker is not None:
            deadline = self._next_deadline()
            if deadline != kicker.deadline_ns:
                kicker.retarget(deadline)
        return result

    def _mmio(self, page: mmap.mmap) -> None:
        address, data, length, is_write = MMIO_EXIT.unpack_from(page, abi.KVM_RUN_UNION)
        if is_write:
            self._access(self.machine.mmio, address, length, int.from_bytes(data[:length], "little"))
        else:
            value = self._access(self.machine.mmio, address, length, None)
            page[_MMIO_DATA : _MMIO_DATA + length] = value.to_bytes(length, "little")

    def _pio(self, page: mmap.mmap) -> None:
        direction, size, port, count, offset = IO_EXIT.unpack_from(page, abi.KVM_RUN_UNION)
        bus = self.machine.pio
        for at in range(offset, offset + count * size, size):  # string I/O: count items
            if direction == abi.KVM_EXIT_IO_OUT:
                self._access(bus, port, size, int.from_bytes(page[at : at + size], "little"))
            else:
                page[at : at + size] = self._access(bus, port, size, None).to_bytes(size, "little")

    def _stop_reason(self, reason: int, page: mmap.mmap) -> tuple[str, str]:
        name = abi.EXIT_REASONS.get(reason, str(reason))
        if reason == 8:
            return "shutdown", "KVM_EXIT_SHUTDOWN (a triple fault)"
        if reason == 17:
            suberror, ndata, flags = struct.unpack_from("<IIQ", page, abi.KVM_RUN_UNION)
            detail = f"KVM_EXIT_INTERNAL_ERROR suberror {suberror}"
            if suberror == abi.KVM_INTERNAL_ERROR_EMULATION and flags & 1:
                size = page[abi.KVM_RUN_UNION + 16]
                insn = bytes(page[abi.KVM_RUN_UNION + 17 : abi.KVM_RUN_UNION + 17 + min(size, 15)])
                detail += f" (emulation failed; instruction bytes {insn.hex(' ')})"
            return "internal-error", detail
        if reason == 9:
            (hw,) = struct.unpack_from("<Q", page, abi.KVM_RUN_UNION)
            return "fail-entry", f"KVM_EXIT_FAIL_ENTRY hardware reason {hw:#x}"
        return "unexpected-exit", f"exit reason {name}"

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving, release the VM and KVM (and the machine, if this object made it)."""
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        self._owners.clear()
        for fd in self._eventfds:
            self.loop.remove_reader(fd)
            os.close(fd)
        self._eventfds.clear()
        if hasattr(self, "interrupts"):
            self.interrupts.close()
            if self.interrupts.level in self.machine.irq.on_level:
                self.machine.irq.on_level.remove(self.interrupts.level)
            if self.interrupts.msi in self.machine.irq.on_msi:
                self.machine.irq.on_msi.remove(self.interrupts.msi)
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None
        for mapping in getattr(self, "_ports", ()):
            self.machine.pio.unregister(mapping)
        self._ports = []
        if not self._loop_closed:
            self.loop.close()
            self._loop_closed = True
        if self._own_machine:
            self.machine.close()

    def __enter__(self) -> KvmMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
