"""The host's side of one boot: outcomes, GO/STOP replies and restarts, driven over a real
handshake socket by a scripted guest, with a real server process that lives or dies."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from harness.hostile._handshake import HandshakePort
from harness.hostile._protocol import Outcome
from harness.hostile._runner import RAM_END, Cell, _Boot, _Session, kernel_append
from harness.hostile._targets import Started


@pytest.fixture
def server() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


class Guest:
    """Plays QEMU's side of the handshake port: writes lines, collects the host's words."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.words: list[str] = []

    def say(self, *lines: str) -> None:
        for line in lines:
            self.sock.sendall(line.encode() + b"\n")

    def hear(self) -> str:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.sock.recv(64)
            if not chunk:
                break
            data += chunk
        word = data.decode().strip()
        self.words.append(word)
        return word


def run_session(tmp_path: Path, server: subprocess.Popen[bytes] | None, script, indices: Sequence[int] = (1, 2, 3),
                bound: float = 30.0) -> tuple[_Boot, list[tuple[int, Cell]], Guest]:
    port = HandshakePort(tmp_path / "hs.sock")
    guest = Guest(port.path)
    port.accept(5)
    seen: list[tuple[int, Cell]] = []
    thread = threading.Thread(target=script, args=(guest,), daemon=True)
    thread.start()
    try:
        boot = _Session(port, Started([], server=server), indices, bound, lambda i, c: seen.append((i, c))).run(
            lambda: "QEMU exited with -6: assertion")
    finally:
        port.close()
        thread.join(5)
        guest.sock.close()
    return boot, seen, guest


def test_every_scenario_passes_and_the_guest_is_told_to_go_on(tmp_path: Path, server) -> None:
    def script(g: Guest) -> None:
        for i, name in enumerate(("baseline", "a", "b", "c")):
            g.say(f"HOSTILE-BEGIN {i} {name}", f"HOSTILE-END {i} {name} PASS ")
            assert g.hear() == "GO"
        g.say("HOSTILE-FINISHED 4")

    boot, seen, guest = run_session(tmp_path, server, script)
    assert [(i, c.outcome) for i, c in seen] == [(i, Outcome.PASS) for i in range(4)]
    assert boot.next_start is None and not boot.error and guest.words == ["GO"] * 4


def test_a_dead_device_stops_the_boot_and_the_next_one_starts_after_it(tmp_path: Path, server) -> None:
    def script(g: Guest) -> None:
        g.say("HOSTILE-BEGIN 0 baseline", "HOSTILE-END 0 baseline PASS")
        g.hear()
        g.say("HOSTILE-BEGIN 1 a", "HOSTILE-END 1 a MISBEHAVED TDH 99 outside a ring of 16")
        g.hear()
        g.say("HOSTILE-BEGIN 2 b", "HOSTILE-END 2 b DEVICE-DEAD no ARP reply")
        g.hear()

    boot, seen, guest = run_session(tmp_path, server, script)
    assert [c.outcome for _, c in seen] == [Outcome.PASS, Outcome.MISBEHAVED, Outcome.DEVICE_DEAD]
    assert guest.words == ["GO", "GO", "STOP"] and boot.next_start == 3


def test_a_server_that_died_makes_the_scenario_server_died(tmp_path: Path, server) -> None:
    def script(g: Guest) -> None:
        g.say("HOSTILE-BEGIN 0 baseline", "HOSTILE-END 0 baseline PASS")
        g.hear()
        server.kill()
        server.wait()
        g.say("HOSTILE-BEGIN 1 a", "HOSTILE-END 1 a PASS")  # the guest saw nothing wrong
        g.hear()

    boot, seen, guest = run_session(tmp_path, server, script)
    assert seen[1][0] == 1 and seen[1][1].outcome is Outcome.SERVER_DIED and "status -9" in seen[1][1].detail
    assert guest.words == ["GO", "STOP"] and boot.next_start == 2


def test_qemu_going_away_is_vmm_died_for_the_scenario_it_was_running(tmp_path: Path, server) -> None:
    def script(g: Guest) -> None:
        g.say("HOSTILE-BEGIN 0 baseline", "HOSTILE-END 0 baseline PASS")
        g.hear()
        g.say("HOSTILE-BEGIN 1 a")
        g.sock.shutdown(socket.SHUT_RDWR)

    boot, seen, _ = run_session(tmp_path, server, script)
    assert seen[-1] == (1, Cell(Outcome.VMM_DIED, "QEMU exited with -6: assertion")) and boot.next_start == 2


def test_no_end_within_the_bound_is_a_hang(tmp_path: Path) -> None:
    def script(g: Guest) -> None:
        g.say("HOSTILE-BEGIN 0 baseline", "HOSTILE-END 0 baseline PASS")
        g.hear()
        g.say("HOSTILE-BEGIN 1 a")

    boot, seen, _ = run_session(tmp_path, None, script, bound=1.0)
    assert seen[-1][0] == 1 and seen[-1][1].outcome is Outcome.HANG and boot.next_start == 2


def test_a_failed_baseline_leaves_nothing_to_run(tmp_path: Path) -> None:
    def script(g: Guest) -> None:
        g.say("HOSTILE-BEGIN 0 baseline", "HOSTILE-END 0 baseline DEVICE-DEAD no link")
        g.hear()

    boot, seen, guest = run_session(tmp_path, None, script)
    assert seen == [(0, Cell(Outcome.DEVICE_DEAD, "no link"))] and boot.next_start is None and guest.words == ["STOP"]


def test_a_selection_of_scenarios_restarts_at_the_next_selected_one(tmp_path: Path) -> None:
    def script(g: Guest) -> None:
        g.say("HOSTILE-BEGIN 0 baseline", "HOSTILE-END 0 baseline PASS")
        g.hear()
        g.say("HOSTILE-BEGIN 4 d", "HOSTILE-END 4 d HANG no progress in 40 s during abuse")
        g.hear()

    boot, seen, _ = run_session(tmp_path, None, script, indices=(4, 9))
    assert seen[-1][1].outcome is Outcome.HANG and boot.next_start == 9


def test_a_guest_error_ends_the_boot(tmp_path: Path) -> None:
    def script(g: Guest) -> None:
        g.say("HOSTILE-ERROR no PCI function 8086:(2922...)")

    boot, seen, _ = run_session(tmp_path, None, script)
    assert boot.error == "guest program: no PCI function 8086:(2922...)" and not seen


def test_the_dma_range_is_the_end_of_ram_and_hidden_from_the_kernel() -> None:
    words = kernel_append("e1000", 5, [5, 7])
    assert RAM_END == 0x1_1000_0000
    assert "memmap=16M$0x10f000000" in words and "hostile.ram_end=0x110000000" in words
    assert "hostile.from=5" in words and "hostile.run=5,7" in words and "hostile.handshake=1" in words
