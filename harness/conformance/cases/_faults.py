"""What the fault rows share: a fault plan for the device server, a channel from the guest
to the fault control socket, and the row's expected and observed behaviour.

A fault row is one Linux driver against one fault (``devmodels.faults``), served by
``devmodels vfio-user`` on QEMU 11.1 (real interrupts, ``_served`` rule 1).

Rules:

1. The server runs with ``--faults PLAN`` (the case's ``FaultPlan``, written to the work
   directory) and ``--fault-socket``. Faults the guest must start at a moment of its
   choosing are in the plan with ``armed: false``.
2. The guest reaches the control socket through its second serial port: QEMU connects
   ``ttyS1`` to a socket this process listens on (``GuestFaultChannel``), and the guest's
   ``fault arm ID`` / ``fault remove ID`` (``FAULT_HELPERS``) become ``FaultClient`` calls;
   the guest waits for the answer, so the fault is in effect when ``fault`` returns 0.
   Every script ends with ``fault list``, which keeps the server's fault counters here:
   ``devmodels vfio-user`` serves its sockets only while a VMM is connected.
3. Every row also checks, on the host: the guest did not panic or oops
   (``host.no_panic``), and the server's fault counters show the fault acted
   (``host.fault``: fired, or for a state fault, started).
4. A row says what a correct Linux driver does (``expected``) and, after the run, what
   this one did (``observe``: the details of the checks and observations named in
   ``observed_checks``), for ``devmodels conformance --faults``. The row's verdict on the
   driver (``verdict``) is "as expected" when every one of them held, else "DEVIATES".
5. Checks are what the row needs to pass: the fault was applied and reported the way the
   real part reports it, the guest kept running, and the driver did what this kernel is
   known to do. Where the kernel's driver does not do what a correct one would, the guest
   reports it as an *observation* (``observe NAME yes|no TEXT``: a ``FAULT-OBSERVE`` line),
   which feeds the verdict and the matrix but does not fail the row; the row's docstring
   says why.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from devmodels.faults import FaultClient, FaultPlan

from .._case import Attachment, Row
from ._served import VFIO_USER, ServedCase

if TYPE_CHECKING:
    from ...qemu.launcher import BootResult

__all__ = ["FaultCase", "GuestFaultChannel", "FAULT_HELPERS", "PANIC_PATTERN", "dmesg_section", "kmsg", "observations"]

PANIC_PATTERN = re.compile(r"Kernel panic|\bOops\b|BUG: |general protection fault|Call Trace:.*panic")

FAULT_HELPERS = r"""
fault() {  # fault arm|remove ID: the host applies it to the device server (rule 2)
    if [ -z "$_f_open" ]; then
        stty -F /dev/ttyS1 raw -echo 2>/dev/null
        exec 7<>/dev/ttyS1 || return 1
        _f_open=1
    fi
    echo "$*" >&7
    if ! read -t 20 _f_reply <&7; then echo "fault $*: no answer"; return 1; fi
    case "$_f_reply" in
        ok*) return 0 ;;
        *) echo "fault $*: $_f_reply"; return 1 ;;
    esac
}
observe() {  # NAME yes|no TEXT: what the driver did, for the matrix (rule 5)
    _o_name=$1; _o_seen=$2; shift 2
    echo "FAULT-OBSERVE $_o_name $_o_seen $*"
}
dmesg_dump() {  # the kernel log lines matching $1, between markers the host parses
    echo "FAULT-DMESG-BEGIN"
    dmesg | grep -E "$1" | cut -c 1-200 | tail -n 60
    echo "FAULT-DMESG-END"
}
"""


_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")


def kmsg(line: str, width: int = 100) -> str:
    """A kernel log line without its timestamp, at most ``width`` characters."""
    return _TIMESTAMP.sub("", line)[:width]


_OBSERVE = re.compile(r"^FAULT-OBSERVE (\S+) (yes|no) ?(.*)$", re.MULTILINE)


def observations(log: str) -> dict[str, tuple[bool, str]]:
    """The guest's ``observe`` lines: name -> (seen, text)."""
    return {m.group(1): (m.group(2) == "yes", m.group(3).strip()) for m in _OBSERVE.finditer(log)}


def dmesg_section(log: str) -> list[str]:
    """The kernel's lines: what the guest's last ``dmesg_dump`` printed, and the console's
    own (messages of error level and above reach the console as they happen)."""
    parts = log.split("FAULT-DMESG-BEGIN")
    dump = parts[-1].split("FAULT-DMESG-END")[0].splitlines() if len(parts) > 1 else []
    outside = [parts[0], *(part.split("FAULT-DMESG-END", 1)[-1] for part in parts[1:])]
    console = [line for text in outside for line in text.splitlines() if line.startswith("[")]
    return list(dict.fromkeys(line.strip() for line in [*dump, *console] if line.strip()))  # once each


class GuestFaultChannel:
    """The guest's ttyS1, served here, forwarding ``arm``/``remove`` to the server (rule 2).

    Args:
        path: the UNIX socket QEMU connects its chardev to.
        control: the device server's fault control socket.
    """

    def __init__(self, path: Path, control: Path) -> None:
        self.path = path
        self.control = control
        self.requests: list[tuple[str, str]] = []  # (request, answer)
        self.listing: list[dict[str, object]] | None = None  # the server's faults at the last ``list``
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._conn: socket.socket | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="guest-faults", daemon=True)
        self._thread.start()

    def qemu_args(self) -> list[str]:
        """The second serial port (the launcher's ``-serial stdio`` is the first)."""
        return ["-chardev", f"socket,id=faultctl,path={self.path}", "-serial", "chardev:faultctl"]

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        self._conn = conn
        buffer = b""
        while not self._closing:
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                raw, _, buffer = buffer.partition(b"\n")
                line = raw.decode(errors="replace").strip()
                if line:
                    answer = self._handle(line)
                    self.requests.append((line, answer))
                    try:
                        conn.sendall(answer.encode() + b"\n")
                    except OSError:
                        return

    def _handle(self, line: str) -> str:
        op, _, fault_id = line.partition(" ")
        if op not in ("arm", "remove", "list") or (op != "list" and not fault_id):
            return f"err unknown request {line[:60]!r}"
        try:
            with FaultClient(self.control, timeout=15) as client:
                if op == "arm":
                    client.arm(fault_id)
                elif op == "remove":
                    client.remove(fault_id)
                else:
                    self.listing = client.list()
        except Exception as exc:  # noqa: BLE001 - the answer carries it to the guest
            return f"err {exc}"
        return "ok"

    def close(self) -> None:
        """Stop serving and close the sockets."""
        self._closing = True
        for sock in (self._conn, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._thread.join(5)


class FaultCase(ServedCase):
    """A fault row over vfio-user (rules 1–4).

    Args:
        driver, device, server_device, guest_script, name, required_checks, irq: as
            ``ServedCase`` (the attachment is vfio-user).
        fault: the fault's name in the matrix (a ``devmodels.faults`` kind, and how).
        fault_id: the id of the plan's fault ``host.fault`` looks at.
        expected: what a correct Linux driver does.
        plan: the plan the server runs with.
        observed_checks: the checks whose details make the observed column.
    """

    def __init__(self, driver: str, device: str, server_device: str, guest_script: str, *, name: str, fault: str,
                 fault_id: str, expected: str, plan: FaultPlan, required_checks: Iterable[str],
                 observed_checks: Iterable[str], irq: tuple[str, str] | None = None,
                 append: tuple[str, ...] = ()) -> None:
        script = FAULT_HELPERS + guest_script + "\nfault list || echo 'fault list failed'\n"
        # no_timer_check: a loaded host slows TCG enough that the kernel's IO-APIC timer
        # check fails and panics at boot ("IO-APIC + timer doesn't work").
        super().__init__(driver, device, server_device, script, attachment=VFIO_USER,
                         name=name, append=("no_timer_check", *append),
                         required_checks={*required_checks, "host.no_panic", "host.fault"}, irq=irq)
        self.fault = fault
        self.fault_id = fault_id
        self.expected = expected
        self.plan = plan
        self.observed_checks = tuple(observed_checks)
        self.control: Path | None = None
        self.channel: GuestFaultChannel | None = None
        self.observations: dict[str, tuple[bool, str]] = {}

    def backend_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """The device's backend arguments (subclasses)."""
        return [], []

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """The backends, the plan and the control socket (rule 1)."""
        args, fds = self.backend_setup(stack, workdir)
        plan = workdir / "faults.json"
        plan.write_text(self.plan.dumps())
        self.control = workdir / "faults.sock"
        return [*args, "--faults", str(plan), "--fault-socket", str(self.control)], fds

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """The server, then the guest's channel to it (rule 2)."""
        attachment = super().start(stack, workdir)
        assert self.control is not None
        self.channel = GuestFaultChannel(workdir / "guest-faults.sock", self.control)
        stack.callback(self.channel.close)
        attachment.qemu_args += self.channel.qemu_args()
        return attachment

    def fault_listing(self) -> list[dict[str, object]]:
        """The server's faults and counters at the guest's last ``fault list``, else now
        (empty if it cannot be asked)."""
        if self.channel is not None and self.channel.listing is not None:
            return self.channel.listing
        if self.control is None:
            return []
        try:
            with FaultClient(self.control, timeout=10) as client:
                return client.list()
        except Exception:  # noqa: BLE001 - a dead server shows in host.server
            return []

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The server check, ``host.no_panic`` and ``host.fault`` (rule 3)."""
        checks = super().host_checks(result)
        self.observations = observations(result.log)
        panic = PANIC_PATTERN.search(result.log)
        checks["host.no_panic"] = (panic is None, "no panic or oops" if panic is None else
                                   result.log[max(0, panic.start() - 80): panic.end() + 120].replace("\n", " | "))
        listing = {str(f["id"]): f for f in self.fault_listing()}
        fault = listing.get(self.fault_id)
        if fault is None:
            checks["host.fault"] = (False, f"the server does not list {self.fault_id!r}: {sorted(listing)}")
        else:
            acted = int(fault["fired"]) > 0 or int(fault["starts"]) > 0  # type: ignore[call-overload]
            detail = (f"fired={fault['fired']} starts={fault['starts']} on={fault['on']} ended={fault['ended']} "
                      f"seen={fault['seen']}")
            checks["host.fault"] = (acted, detail)
        return checks

    def _outcomes(self, row: Row) -> list[tuple[str, bool | None, str]]:
        """``(name, held, detail)`` of each observed check or observation; None: not reported."""
        out: list[tuple[str, bool | None, str]] = []
        for name in self.observed_checks:
            if name in self.observations:
                seen, text = self.observations[name]
                out.append((name, seen, text))
            elif name in row.checks and row.details.get(name) != "required check not reported":
                out.append((name, row.checks[name], row.details.get(name, "")))
            else:
                out.append((name, None, "not reported"))
        return out

    def observe(self, row: Row) -> str:
        """What this driver did (rule 4)."""
        parts = []
        for name, held, detail in self._outcomes(row):
            mark = "" if held else ("NOT " if held is False else "? ")
            parts.append(f"{mark}{name.split('.', 1)[-1]}" + (f": {detail}" if detail else ""))
        if row.error:
            parts.append(f"error: {row.error}")
        return "; ".join(parts)

    def verdict(self, row: Row) -> str:
        """"as expected", or "DEVIATES" naming what did not hold (rule 4)."""
        missing = [name.split(".", 1)[-1] for name, held, _ in self._outcomes(row) if not held]
        return "as expected" if not missing and not row.error else "DEVIATES: " + ", ".join(missing or ["error"])

    def describe(self) -> dict[str, object]:
        """The row's fault, plan and expectation, for ``--json``."""
        return {"fault": self.fault, "expected": self.expected, "plan": json.loads(self.plan.dumps())}
